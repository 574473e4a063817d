"""The decode job, its output texts and manifest, and the Python API (load -> TextGenerator)."""

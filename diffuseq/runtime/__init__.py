"""Process-level runtime: the only reader of torchrun's environment, logging, progress display, performance helpers, environment records."""

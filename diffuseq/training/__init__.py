"""The training loop and what it writes (loss plots)."""

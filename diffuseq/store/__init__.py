"""The run store: run folders, checkpoints (full states and the original's EMA files), model folders and cards, safe file writes."""

"""Training data: the one JSON-lines reader, merge + mask layout, compact datasets and loaders, the tokenization cache."""

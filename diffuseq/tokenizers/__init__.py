"""Tokenizers behind one interface: word-level vocab files, BERT WordPiece, trained WordPiece; the fast word-memo build."""

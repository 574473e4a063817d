"""Custom CPU kernels, kept apart from the paper's math. Each gives the same numbers as the
plain PyTorch composition it replaces, with less memory or time; the module docstrings say why
each exists, where it is tested and where it is measured.

- :mod:`~diffuseq.ops.linear_cross_entropy`: token cross-entropy of the tied read-out without
  ``[N, V]`` logits (the loss's decoder NLL term);
- :mod:`~diffuseq.ops.lean_bert`: a memory-lean training forward of a BERT encoder layer.
"""

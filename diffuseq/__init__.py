"""diffuseq: sequence-to-sequence text generation with diffusion models.

A faithful reimplementation of DiffuSeq (Gong et al., ICLR 2023) and DiffuSeq-v2
(Gong et al., 2023) on a modern PyTorch stack. See README.md and docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"

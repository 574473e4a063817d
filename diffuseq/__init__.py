"""diffuseq: sequence-to-sequence text generation with diffusion models.

A faithful reimplementation of DiffuSeq (Gong et al., ICLR 2023) and DiffuSeq-v2
(Gong et al., 2023) on a modern PyTorch stack. See README.md and docs/ARCHITECTURE.md.

The public API, importable from here (each name is imported on first use, so that
``import diffuseq`` stays cheap and command-line ``--help`` does not load torch):

- training from Python: :func:`train` (a :class:`RunConfig` -> a run folder; what
  ``run_train.py`` calls, see :mod:`diffuseq.training.api`);
- decoding from Python: :func:`load` -> :class:`TextGenerator` (``generate``);
- configs: :class:`ModelConfig`, :class:`DiffusionConfig`, :class:`DataConfig`,
  :class:`TrainConfig`, :class:`RunConfig`;
- building blocks: :func:`build_model`, :func:`build_diffusion`, :func:`load_tokenizer`,
  :class:`TransformerNetModel`, :class:`GaussianDiffusion`, :func:`training_losses`,
  :data:`SAMPLERS` / :func:`get_sampler` / :class:`SamplerInputs` (a sampler applies the
  model's self-conditioning, the process's noise floor and autocast itself, as the CLI does);
- errors: :class:`UserError` and its subclasses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "diffuseq.training.api",
    "load": "diffuseq.decoding.api",
    "TextGenerator": "diffuseq.decoding.api",
    "ModelConfig": "diffuseq.config",
    "DiffusionConfig": "diffuseq.config",
    "DataConfig": "diffuseq.config",
    "TrainConfig": "diffuseq.config",
    "RunConfig": "diffuseq.config",
    "build_model": "diffuseq.models.factory",
    "build_diffusion": "diffuseq.models.factory",
    "load_tokenizer": "diffuseq.tokenizers.tokenizer",
    "TransformerNetModel": "diffuseq.models.denoiser",
    "GaussianDiffusion": "diffuseq.diffusion.gaussian",
    "training_losses": "diffuseq.diffusion.losses",
    "SAMPLERS": "diffuseq.sampling",
    "get_sampler": "diffuseq.sampling",
    "SamplerInputs": "diffuseq.sampling.inputs",
    "UserError": "diffuseq.errors",
    "ConfigError": "diffuseq.errors",
    "DataError": "diffuseq.errors",
    "CheckpointError": "diffuseq.errors",
    "OfflineAssetError": "diffuseq.errors",
}

__all__ = [
    "__version__",
    "train",
    "load",
    "TextGenerator",
    "ModelConfig",
    "DiffusionConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "build_model",
    "build_diffusion",
    "load_tokenizer",
    "TransformerNetModel",
    "GaussianDiffusion",
    "training_losses",
    "SAMPLERS",
    "get_sampler",
    "SamplerInputs",
    "UserError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "OfflineAssetError",
]

if TYPE_CHECKING:
    from diffuseq.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
    from diffuseq.decoding.api import TextGenerator, load
    from diffuseq.diffusion.gaussian import GaussianDiffusion
    from diffuseq.diffusion.losses import training_losses
    from diffuseq.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        OfflineAssetError,
        UserError,
    )
    from diffuseq.models.denoiser import TransformerNetModel
    from diffuseq.models.factory import build_diffusion, build_model
    from diffuseq.sampling import SAMPLERS, get_sampler
    from diffuseq.sampling.inputs import SamplerInputs
    from diffuseq.tokenizers.tokenizer import load_tokenizer
    from diffuseq.training.api import train


#: Modules reachable as attributes (``from diffuseq import api``: the decoding API module).
_MODULES = {"api": "diffuseq.decoding.api"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffuseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""Training: the Python API (:func:`train`, :func:`prepare`, :func:`check`), the run's set-up, the
training loop and what it writes (loss plots).

* :mod:`~diffuseq.training.api`: :func:`train` a :class:`~diffuseq.config.RunConfig` ->
  :class:`TrainResult`; what ``run_train.py`` and the benchmarks call.
* :mod:`~diffuseq.training.setup`: resume source, data, the family's model/process/objective,
  the run folder -> a ready :class:`~diffuseq.training.trainer.Trainer`.
* :mod:`~diffuseq.training.trainer`: the loop (micro-batches, EMA, checkpoints, exact resume).
* :mod:`~diffuseq.training.plots`: loss curves from ``metrics.jsonl``.

The API names are imported on first use (``diffuseq.training.plots`` does not load torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["RuntimeOptions", "TrainResult", "check", "prepare", "train"]

_EXPORTS = {
    "train": "diffuseq.training.api",
    "prepare": "diffuseq.training.api",
    "check": "diffuseq.training.api",
    "TrainResult": "diffuseq.training.api",
    "RuntimeOptions": "diffuseq.config.runtime",
}

if TYPE_CHECKING:
    from diffuseq.config.runtime import RuntimeOptions
    from diffuseq.training.api import TrainResult, check, prepare, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diffuseq.training' has no attribute {name!r}")

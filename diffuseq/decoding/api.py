"""Python API for generation with a trained DiffuSeq model.

Example::

    from diffuseq.decoding import api

    gen = api.load("diffusion_models/<run>")            # run folder (newest EMA file), a .pt file
                                                        # or a model folder (diffuseq.store.hf_folder)
    texts = gen.generate(["how old are you ?"], steps=10, sampler="dpm-solver++", num_samples=3, seed=101)
    # texts[i][k]: candidate k for source i, special tokens removed and cut at [SEP]
    raw = gen.generate_raw(["how old are you ?"])        # the decode files' records, special tokens kept

Results are the same as ``run_decode.py`` with the same seed and settings for the same
example index (noise is drawn per example, see :mod:`diffuseq.sampling.noise`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from diffuseq.config import DTYPES, DecodeConfig, sampler_choices
from diffuseq.config.fields import is_bool
from diffuseq.decoding.job import Decoder, cut_at_sep
from diffuseq.errors import CheckpointError, ConfigError
from diffuseq.runtime.logger import get_logger
from diffuseq.store.hf_folder import MODEL_FILE, is_model_folder, read_model_folder
from diffuseq.store.run_folder import open_run

__all__ = ["TextGenerator", "load"]


class TextGenerator:
    """A loaded checkpoint. Build it with :func:`load`.

    Attributes:
        run: the :class:`~diffuseq.store.run_folder.RunFolder` (a
        :class:`~diffuseq.store.hf_folder.ModelFolder` for a model folder); checkpoint: the ``.pt``
        file (``model.safetensors``);
        decoder: the underlying :class:`~diffuseq.decoding.job.Decoder` (model, diffusion, tokenizer).
    """

    def __init__(self, *, run, checkpoint: Path, decoder: Decoder, dtype: str = "fp32") -> None:
        self.run, self.checkpoint, self.decoder, self.dtype = run, checkpoint, decoder, dtype

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str = "fp32",
    ) -> TextGenerator:
        """Load a model folder (:mod:`diffuseq.store.hf_folder`): a local folder, or a Hub repository
        id that is already in the local Hugging Face cache (nothing is downloaded).

        Raises:
            CheckpointError: the folder is no model folder (a run folder: use :func:`load`, or
                write one with ``diffuseq-export``) or its files are corrupt.
            OfflineAssetError: a repository id that is not in the local cache.
        """
        from diffuseq.store.hf_folder import snapshot_from_cache

        if not isinstance(name_or_path, (str, os.PathLike)):
            raise TypeError(
                f"name_or_path must be a str or a path, got {type(name_or_path).__name__}"
            )
        path = Path(name_or_path)
        if not path.exists():
            path = snapshot_from_cache(str(name_or_path))
        if not is_model_folder(path):
            raise CheckpointError(
                f"{path} is not a model folder (model.safetensors + config.json); api.load reads "
                "run folders and checkpoints, diffuseq-export writes model folders"
            )
        return load(path, device=device, dtype=dtype)

    def generate_raw(
        self,
        sources: Sequence[str],
        config: DecodeConfig | None = None,
        *,
        references: Sequence[str] | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> list[list[dict[str, str]]]:
        """``result[i][k]`` = ``{"recover", "reference", "source"}`` as in the decode files.

        Args:
            sources: source texts; references: optional gold targets (default empty).
            config: what to sample (default: :class:`~diffuseq.config.DecodeConfig` with this
                generator's dtype, i.e. the ``run_decode.py`` defaults); candidate ``k`` uses
                seed ``seed + k``.
            overrides: :class:`~diffuseq.config.DecodeConfig` fields replacing the config's
                (``steps=10, sampler="dpm-solver++", num_samples=3, seed=101, top_p, clamp_step,
                batch_size``, ``length_beam`` for a ``--length_predict`` model; the first
                releases' ``ddim_adjacent``, ``dpm_v2_variant``).

        Raises:
            TypeError: ``sources`` is a single string or holds a non-string; an unknown option
                or one of the wrong type (``steps=2.5``, ``top_p="x"``). ValueError: a value
                out of range.
        """
        sources = _texts("sources", sources)
        references = [""] * len(sources) if references is None else _texts("references", references)
        if len(references) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(references)} references")
        unknown = sorted(set(overrides) - {f.name for f in fields(DecodeConfig)})
        if unknown:
            raise TypeError(f"unknown decode option(s): {', '.join(unknown)}")
        config = _check_values((config or DecodeConfig(dtype=self.dtype)).replace(**overrides))
        inputs = self.decoder.encode(list(zip(sources, references)))
        inputs.unknown.report(get_logger("api"), "sources")
        return self.decoder.generate(inputs, config, progress=progress)

    def generate(
        self,
        sources: Sequence[str],
        *,
        steps: int | None = None,
        sampler: str = "auto",
        num_samples: int = 1,
        seed: int = 101,
        **options: Any,
    ) -> list[list[str]]:
        """Cleaned candidates ``result[i][k]``: cut at the first [SEP]/eos, special tokens removed.

        Args:
            steps: sampling steps (default T); sampler: ``auto`` or a name of
                :data:`diffuseq.sampling.table.SAMPLER_TABLE`; num_samples: candidates per source;
                seed: seed of candidate 0.
            options: as :meth:`generate_raw` (``config``, ``references``, ``progress`` and the
                other :class:`~diffuseq.config.DecodeConfig` fields).
        """
        specials = self.decoder.tokenizer.special_tokens
        raw = self.generate_raw(
            sources, steps=steps, sampler=sampler, num_samples=num_samples, seed=seed, **options
        )
        return [[cut_at_sep(r["recover"], specials) for r in per_source] for per_source in raw]


def _check_values(config: DecodeConfig) -> DecodeConfig:
    """Python-level checks of a config built from keywords (TypeError/ValueError naming the
    keyword, where the command line's ``validate()`` names the flag); returns it with numpy
    integers and booleans as Python ones. Booleans must be booleans (``"false"`` is truthy)."""
    changes = {}
    for f in fields(DecodeConfig):
        value = getattr(config, f.name)
        if f.type in ("bool", bool):
            if not is_bool(value):
                raise TypeError(
                    f"{f.name} must be True or False, got {type(value).__name__} {value!r:.60}"
                )
            changes[f.name] = bool(value)
        elif isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
            changes[f.name] = int(value)  # numpy integers
        elif isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
            changes[f.name] = float(value)  # numpy floats
    config = config.replace(**changes)
    for name, minimum in (
        ("steps", 1),
        ("num_samples", 1),
        ("seed", None),
        ("clamp_step", 0),
        ("batch_size", 1),
    ):
        value = getattr(config, name)
        if name != "steps" or value is not None:
            _integer(name, value, minimum)
    top_p = config.top_p
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))):
        raise TypeError(f"top_p must be a number or None, got {type(top_p).__name__} {top_p!r}")
    if top_p is not None and not math.isfinite(top_p):
        raise ValueError(f"top_p must be a finite number (<= 0: off), got {top_p!r}")
    choices = sampler_choices()
    if not isinstance(config.sampler, str) or config.sampler not in choices:
        raise ValueError(f"sampler must be one of {', '.join(choices)}, got {config.sampler!r}")
    config.validate()
    return config


def _texts(name: str, values: Any) -> list[str]:
    """``values`` as a list of strings; TypeError naming the argument otherwise."""
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of strings, got a single {type(values).__name__}: "
            f"pass [{name[:-1]}] for one text"
        )
    if not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
    values = list(values)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(value).__name__} {value!r:.60}")
    return values


def _integer(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.60}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {device!r} is not a device name such as 'cpu' or 'cuda' ({err})"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={str(device)!r}: no CUDA GPU is visible to this process; "
                "pass device='cpu' (or leave device out to use a GPU only when there is one)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={str(device)!r}: this process sees only "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise ValueError(f"device {str(device)!r}: only 'cpu' and 'cuda' are supported")
    return device


def load(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    pattern: str = "ema",
) -> TextGenerator:
    """Load a run folder (its newest ``{pattern}*.pt``), one checkpoint file or a model folder.

    Args:
        path: ``diffusion_models/<run>`` (ours or the original's), ``…/<run>/ema_0.9999_050000.pt``,
            or a model folder (``…/<run>/hf/ema_0.9999_050000``, :mod:`diffuseq.store.hf_folder`; read
            offline, same outputs as its EMA file) or its ``model.safetensors``.
        device: default ``cuda`` if available, else ``cpu``.
        dtype: ``fp32``, ``bf16`` or ``fp16`` autocast for the network.

    Raises:
        TypeError, ValueError: an argument of the wrong type or value (the message names it).
        ConfigError: ``device="cuda"`` where no CUDA GPU is visible.
        CheckpointError: ``path`` is no run folder or checkpoint, or does not load.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device = _device(device)
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if is_model_folder(path):
        folder = read_model_folder(path)
        return TextGenerator(
            run=folder,
            checkpoint=folder.path / MODEL_FILE,
            decoder=folder.decoder(device=device),
            dtype=dtype,
        )
    if path.is_file():
        run, checkpoint = open_run(path.parent), path
    elif path.is_dir():
        run = open_run(path)
        checkpoint = run.select_checkpoints(pattern, "latest")[0]
    else:
        raise CheckpointError(f"{path} is neither a run folder nor a checkpoint file")
    decoder = Decoder.from_checkpoint(run, checkpoint, device=device)
    return TextGenerator(run=run, checkpoint=checkpoint, decoder=decoder, dtype=dtype)

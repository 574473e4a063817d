"""Hugging Face model folders: a trained model in the layout the ecosystem reads.

A model folder (what ``huggingface_hub.upload_folder`` / ``hf upload`` push as a model
repository) holds:

* ``model.safetensors``: the weights exactly as decoding uses them after loading the EMA file
  (the tied matrix once, as ``word_embedding.weight``: the value the original's rule gives it,
  the file's ``lm_head.weight``; no ``position_ids`` buffer);
* ``config.json``: everything needed to rebuild model, diffusion and tokenizer offline: the
  run's config (``run_config``, the sections of ``config.yaml``), the BERT encoder's resolved
  config (``encoder``, so that no ``--config_name`` folder or hub name is needed), where the
  weights came from (``checkpoint``: file, EMA rate, step) and, if known, evaluation numbers;
* the tokenizer files the run saved (``vocab.json`` or ``tokenizer.json`` +
  ``tokenizer_config.json``), read back as the run folder's are;
* ``README.md``: a model card (:mod:`diffuseq.store.model_card`);
* ``environment.json`` of the run, when it has one (:mod:`diffuseq.runtime.environment`).

Training writes one for the newest EMA checkpoint into ``<run>/hf/<checkpoint name>/`` when it
finishes; ``diffuseq-export`` writes one for any checkpoint, the original's runs included.
Folders are written as ``<name>.<pid>.tmp`` and renamed into place when complete, so a crash
never leaves a half-written model folder under its final name; checkpoints are only read.
:func:`diffuseq.decoding.api.load` and ``TextGenerator.from_pretrained`` read model folders offline.

Why not ``huggingface_hub.PyTorchModelHubMixin`` (huggingface_hub 2.x, read for this): its
``save_pretrained`` would change every file and lose guarantees tests/test_hf_folder.py checks.

* ``model.safetensors``: the mixin writes ``safetensors.torch.save_model(model)``: the
  ``position_ids`` buffer included, the tied pair de-duplicated by safetensors' own choice of
  name, metadata ``{"format": "pt"}`` only; here the weights are :func:`model_weights` (the
  original's tied rule, no buffer) with the diffuseq version in the metadata.
* ``config.json``: the mixin dumps one dict with sorted keys (or the model's ``__init__``
  arguments); the folder needs the run config, the resolved encoder, the tokenizer and the
  checkpoint's origin, in this order, and the model is rebuilt through its family from them,
  not by ``cls(**config)``.
* The mixin writes into the final folder file by file (a crash leaves half a folder under the
  final name) and keeps an existing ``README.md``; here the folder appears complete or not at
  all (:func:`write_model_folder`).
* Its ``from_pretrained`` downloads what is missing; reading here is offline only
  (:func:`snapshot_from_cache` asks the hub cache with ``local_files_only=True``).

The hub library is used where it fits: the cache lookup (``snapshot_download``), the card's
metadata (``ModelCardData``, :mod:`diffuseq.store.model_card`) and pushing
(``upload_folder`` / ``hf upload``, which the card documents).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

import diffuseq
from diffuseq.config import RunConfig
from diffuseq.errors import CheckpointError, ConfigError, OfflineAssetError, first_sentence
from diffuseq.store.folder_swap import remove_stale_temp_dirs, swap_into_place
from diffuseq.store.hf_files import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    HF_DIR,
    MODEL_FILE,
    check_out,
    check_tokenizer_files,
    is_model_folder,
    partial_model_folder,
)
from diffuseq.store.safe_io import fsync_dir, temp_name

__all__ = [
    "CONFIG_FILE",
    "HF_DIR",
    "MODEL_FILE",
    "ModelFolder",
    "export_checkpoint",
    "is_model_folder",
    "load_safetensors",
    "read_model_folder",
    "snapshot_from_cache",
]

_TIED_COPY = "lm_head.weight"  # equal to word_embedding.weight after loading
_EMA_RE = re.compile(r"^ema_(.+)_(\d+)\.pt$")


# ---------------------------------------------------------------------------------- reading


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (CPU).

    Raises:
        CheckpointError: missing, truncated or corrupt file (the message names it).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (or is not a file)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError, OSError, ...
        raise CheckpointError(
            f"{path} cannot be read: it is truncated, corrupt or not a safetensors file "
            f"({type(err).__name__}: {first_sentence(str(err)) or 'no details'}); export the "
            "checkpoint again (diffuseq-export)"
        ) from None


@dataclass(frozen=True)
class ModelFolder:
    """A model folder read back: quacks like :class:`~diffuseq.store.run_folder.RunFolder` for
    decoding (``path``, ``name``, ``config``, ``tokenizer``).

    Attributes:
        path: the folder; info: the ``config.json`` content; config: the run's config, set
            up for loading (``use_plm_init`` off: the weights come from the folder).
    """

    path: Path
    info: Mapping[str, Any]
    config: RunConfig

    @property
    def name(self) -> str:
        """The folder's own name after resolving ``..`` and links (as ``RunFolder.name``)."""
        return self.path.resolve().name

    @cached_property
    def tokenizer(self):
        """The tokenizer saved in the folder (never a file outside it: see
        :func:`~diffuseq.store.hf_files.check_tokenizer_files`)."""
        from diffuseq.tokenizers.tokenizer import load_tokenizer_from_run

        check_tokenizer_files(self.path, self.config.data.vocab, self.config.model.config_name)

        return load_tokenizer_from_run(
            self.path, self.config.data.vocab, config_name=self.config.model.config_name
        )

    def bert_config(self):
        """The encoder's ``BertConfig`` as saved (no ``--config_name`` lookup)."""
        from transformers import BertConfig

        encoder = dict(self.info["encoder"])
        where = f"{self.path / CONFIG_FILE}: encoder"
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size"):
            value = encoder.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{key} is {value!r}; it must be a whole number >= 1")
        hidden, heads = encoder.get("hidden_size", 768), encoder.get("num_attention_heads", 12)
        if hidden % heads:
            raise ConfigError(
                f"{where}.num_attention_heads ({heads}) does not divide hidden_size ({hidden})"
            )
        try:
            config = BertConfig(**encoder)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: unusable ({err})") from None
        config._attn_implementation = self.config.model.attention
        return config

    def select_checkpoints(self, pattern: str = "", which: str = "latest") -> list[Path]:
        """``[model.safetensors]``: a model folder holds one checkpoint (as
        :meth:`RunFolder.select_checkpoints <diffuseq.store.run_folder.RunFolder.select_checkpoints>`)."""
        return [self.path / MODEL_FILE]

    def split_path(self, split: str) -> Path:
        """The training run's ``{data_dir}/{split}.jsonl``, where it still exists."""
        from diffuseq.store.run_folder import RunFolder

        return RunFolder(path=self.path, config=self.config).split_path(split)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_safetensors(self.path / MODEL_FILE)

    def decoder(self, *, device: torch.device | str = "cpu"):
        """A :class:`~diffuseq.decoding.job.Decoder` with the folder's model, diffusion, tokenizer."""
        from diffuseq.decoding.job import Decoder

        return Decoder.from_state_dict(
            self.config,
            self.tokenizer,
            self.state_dict(),
            where=self.path,
            device=device,
            bert_config=self.bert_config(),
        )


def read_model_folder(path: str | os.PathLike) -> ModelFolder:
    """Open a model folder (reads ``config.json`` only; weights are read by the decoder).

    Raises:
        CheckpointError: not a folder, no ``config.json``, no ``model.safetensors``.
        ConfigError: ``config.json`` is not JSON or not a diffuseq model folder's.
    """
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointError(f"model folder {path} does not exist")
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} is not a diffuseq model folder: it has no {CONFIG_FILE} (the run config "
            f"that rebuilds the model); write the folder with diffuseq-export"
        )
    try:
        info = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{config_file}: cannot read it as JSON ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ConfigError(
            f'{config_file} is not a diffuseq model folder\'s config (no "format": '
            f'"{FORMAT}"); it may be another library\'s model'
        )
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"{config_file}: format_version {version!r} is newer than this diffuseq reads "
            f"({FORMAT_VERSION}); upgrade diffuseq"
        )
    for key in ("run_config", "encoder"):
        if not isinstance(info.get(key), dict):
            raise ConfigError(f"{config_file}: '{key}' is missing or not an object")
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"{path} has no {MODEL_FILE} (the model's weights)")
    config = RunConfig.from_dict(info["run_config"], source=f"{config_file}: run_config")
    return ModelFolder(path=path, info=info, config=config.replace("model", use_plm_init="no"))


def snapshot_from_cache(repo_id: str) -> Path:
    """The local folder of Hub model ``repo_id`` in the Hugging Face cache (never downloads).

    Raises:
        OfflineAssetError: it is not in the cache (the message says how to fetch it).
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as err:  # LocalEntryNotFoundError, HFValidationError, ...
        raise OfflineAssetError(
            f"{repo_id!r} is neither a local model folder nor a Hub model in the local cache "
            f"({type(err).__name__}), and nothing is downloaded at run time; fetch it first "
            f"(`hf download {repo_id} --local-dir DIR`) and pass DIR"
        ) from None


# ---------------------------------------------------------------------------------- writing


def _encoder_dict(bert_config) -> dict[str, Any]:
    data = bert_config.to_dict()
    data.pop("_name_or_path", None)  # may be a local path of the training machine
    return data


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as a model folder stores it: contiguous CPU copies, without the
    ``position_ids`` buffer and the second tied key."""
    return {
        key: value.detach().cpu().contiguous().clone()
        for key, value in model.state_dict().items()
        if key not in ("position_ids", _TIED_COPY)
    }


def write_model_folder(
    out: str | os.PathLike,
    *,
    model: torch.nn.Module,
    config: RunConfig,
    tokenizer,
    checkpoint: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
    environment: Path | None = None,
    replace: bool = False,
) -> Path:
    """Write a model folder for ``model`` at ``out``, atomically (temp folder, then rename).

    Args:
        model: the loaded :class:`~diffuseq.models.denoiser.TransformerNetModel`.
        config: the run's config (``vocab_size`` filled in).
        tokenizer: the run's tokenizer (its files are saved into the folder).
        checkpoint: ``{"file", "run", "ema_rate", "step"}`` recorded in ``config.json``.
        evaluation: evaluation numbers (:func:`diffuseq.store.model_card.summarize_evaluation`).
        environment: the run's ``environment.json``, copied when given and present.
        replace: replace an existing folder ``out`` (else CheckpointError).
    """
    from safetensors.torch import save_file

    from diffuseq.runtime.environment import read_launches
    from diffuseq.store.model_card import model_card

    out = Path(out)
    check_out(out, replace=replace)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(out, partial_model_folder)
    tmp = temp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_name": "diffuseq",
            "diffuseq_version": diffuseq.__version__,
            "architectures": [type(model).__name__],
            "checkpoint": dict(checkpoint),
            "run_config": config.to_dict(),
            "encoder": _encoder_dict(model.config),
            "tokenizer": tokenizer.describe(),
            "evaluation": dict(evaluation) if evaluation else None,
        }
        metadata = {"format": "pt", "diffuseq_version": diffuseq.__version__}
        save_file(model_weights(model), str(tmp / MODEL_FILE), metadata=metadata)
        tokenizer.save(tmp)
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if environment is not None and environment.is_file():
            shutil.copyfile(environment, tmp / environment.name)
        launches = read_launches(environment) if environment is not None else []
        (tmp / CARD_FILE).write_text(model_card(info, launches=launches), encoding="utf-8")
        for child in tmp.iterdir():
            _fsync_file(child)
        fsync_dir(tmp)
        swap_into_place(tmp, out)
    except OSError as err:  # a full disk, a quota: one message, nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror or str(err) or type(err).__name__
        raise CheckpointError(
            f"cannot write the model folder {out}: {reason}; {out} is left as it was and the "
            f"checkpoint ({checkpoint.get('file', 'its file')}) is unchanged: free space, then "
            "export it again (diffuseq-export)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------- export


def default_out(run_path: Path, checkpoint: Path) -> Path:
    """``<run>/hf/<checkpoint name without .pt>``."""
    return run_path / HF_DIR / checkpoint.stem


def export_checkpoint(
    source: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    pattern: str = "ema",
    evaluation: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Write the model folder of a checkpoint: ``source`` is a run folder (ours or the
    original's; its newest ``{pattern}*.pt``, as decoding picks it) or one ``.pt`` file.

    Returns:
        The folder written (default ``<run>/hf/<checkpoint name>``).

    Raises:
        CheckpointError: no run folder or checkpoint, a training state, a corrupt file, a
            checkpoint that does not fit the run's config, ``out`` exists (without ``replace``)
            or is not a model folder diffuseq wrote (:func:`~diffuseq.store.hf_files.check_out`).
    """
    from diffuseq.decoding.job import Decoder
    from diffuseq.store.run_folder import open_run

    path = Path(source)
    if path.is_file():
        run, checkpoint = open_run(path.parent), path
    elif path.is_dir():
        if is_model_folder(path):
            raise CheckpointError(f"{path} is already a model folder")
        run = open_run(path)
        checkpoint = run.select_checkpoints(pattern, "latest")[0]
    else:
        raise CheckpointError(f"{path} is neither a run folder nor a checkpoint file")
    out = default_out(run.path, checkpoint) if out is None else Path(out)
    check_out(out, replace=replace)  # before the checkpoint is read: a fast first error
    decoder = Decoder.from_checkpoint(run, checkpoint, device="cpu")
    rate, step = _rate_and_step(checkpoint.name)
    config = run.config.replace("model", vocab_size=decoder.tokenizer.vocab_size)
    return write_model_folder(
        out,
        model=decoder.model,
        config=config,
        tokenizer=decoder.tokenizer,
        checkpoint={
            "file": checkpoint.name,
            "run": run.name,
            "ema_rate": rate,
            "step": step,
        },
        evaluation=evaluation,
        environment=run.path / "environment.json",
        replace=replace,
    )


def _rate_and_step(name: str) -> tuple[float | None, int | None]:
    """``(rate, step)`` of an original EMA file name (``ema_0.9999_050000.pt``), else ``None``s."""
    match = _EMA_RE.match(name)
    if match is None:
        return None, None
    try:
        rate = float(match.group(1))
    except ValueError:
        rate = None
    return rate, int(match.group(2))

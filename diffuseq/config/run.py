"""The training run's configuration: one frozen dataclass per concern, grouped in :class:`RunConfig`.

Replaces the original's `diffuseq/config.json` + `scripts/run_train.py` flags +
`training_args.json` + `args.__dict__.update` (docs/original.md §2.2, §2.3, §10.1 item 16).

* Each field carries its help text and, where the original used another name on the
  command line, the original flag (``--bsz`` for ``batch_size``, ``--diff_steps`` for
  ``diffusion_steps``). Flags are generated from the fields (:mod:`diffuseq.cli.flags`).
* Defaults are those of the original `run_train.py` wrapper, which is what users launch.
* A run saves its config as ``config.yaml`` (sectioned, our format) and as
  ``training_args.json`` with the original's key set (docs/original.md §2.3), so that tools written for
  the original keep working. :func:`RunConfig.from_training_args` reads either back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from diffuseq.config.fields import (
    choice_checks,
    opt,
    raise_first,
    read_layer,
    read_yaml,
    values_from_dict,
)
from diffuseq.errors import ConfigError
from diffuseq.store.safe_io import path_component


def schedule_names() -> tuple[str, ...]:
    """``--noise_schedule`` choices: the beta schedules of :mod:`diffuseq.diffusion.schedules`."""
    from diffuseq.diffusion.schedules import SCHEDULE_NAMES

    return SCHEDULE_NAMES


def timestep_distribution_names() -> tuple[str, ...]:
    """``--schedule_sampler`` choices (:mod:`diffuseq.diffusion.timesteps`, torch-free)."""
    from diffuseq.diffusion.timesteps import TIMESTEP_DISTRIBUTION_NAMES

    return TIMESTEP_DISTRIBUTION_NAMES


def family_choices() -> tuple[str, ...]:
    """``--family`` choices (:data:`diffuseq.families.FAMILIES`, torch-free)."""
    from diffuseq.families import family_names

    return family_names()


@dataclass(frozen=True)
class ModelConfig:
    """The transformer denoiser (docs/original.md §4)."""

    family: str = opt(
        "gaussian",
        "model family (diffuseq.families): gaussian = DiffuSeq / DiffuSeq-v2, the original",
        choices=family_choices,
    )

    hidden_dim: int = opt(128, "word-embedding size h (model input/output size)")
    hidden_t_dim: int = opt(128, "size of the sinusoidal timestep embedding")
    dropout: float = opt(0.1, "dropout of the embedding LayerNorm output and BERT hidden layers")
    config_name: str = opt(
        "bert-base-uncased",
        "BERT architecture: bert-base-uncased (built in, offline), a local folder with "
        "config.json, or a hub name already in the local cache",
    )
    use_plm_init: str = opt("no", "initialise from pretrained BERT weights", choices=("no", "bert"))
    num_layers: int = opt(0, "override the encoder's number of layers (0 = from config_name)")
    num_heads: int = opt(0, "override the number of attention heads (0 = from config_name)")
    bert_hidden_size: int = opt(0, "override the encoder width H (0 = from config_name)")
    intermediate_size: int = opt(0, "override the feed-forward size (0 = from config_name)")
    attention: str = opt("sdpa", "attention kernel of the encoder", choices=("sdpa", "eager"))
    learned_mean_embed: bool = opt(
        False, "DiffuSeq-v2 soft absorbing state: learn a mean embedding"
    )
    self_cond: bool = opt(
        False,
        "self-conditioning (beyond the original): the denoiser also sees its previous estimate "
        "of x_0 (trained with a 50% two-pass forward; every sampler feeds the last step's)",
    )
    vocab_size: int = opt(0, "vocabulary size (filled in from the tokenizer)")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process, the loss and the timestep sampler (docs/original.md §5)."""

    diffusion_steps: int = opt(4000, "number of diffusion steps T", flag="diff_steps")
    noise_schedule: str = opt("cosine", "beta schedule", choices=schedule_names)
    schedule_sampler: str = opt(
        "uniform", "timestep distribution for training", choices=timestep_distribution_names
    )
    timestep_respacing: str = opt("", "respacing of the training process ('' = none)")
    rescale_timesteps: bool = opt(True, "feed the network t*1000/T instead of t")
    denoise: bool = opt(
        False, "DiffuSeq-v2 discrete noise: replace positions by the mean embedding"
    )
    denoise_rate: float = opt(
        0.2, "DiffuSeq-v2 discrete-noise rate (code default 0.2; v2 recipe 0.5)"
    )
    reg_rate: float = opt(
        0.01,
        "weight of the ||mean_embed|| regulariser (the original always used 0.01, ignoring its flag)",
    )
    noise_floor: float = opt(
        0.0,
        "noise floor F in [0, 1) (beyond the original; DINOISER, Ye et al. 2023): train only on "
        "t >= round(F*T) and tell the network max(t, round(F*T)) when sampling (0 = off)",
    )


@dataclass(frozen=True)
class DataConfig:
    """Dataset and tokenizer (docs/original.md §3)."""

    dataset: str = opt("", "dataset name (used in the run folder name)")
    data_dir: str = opt("", "folder with train.jsonl, valid.jsonl, test.jsonl")
    seq_len: int = opt(128, "total length of [CLS] x [SEP] [SEP] [CLS] y [SEP] [PAD]...")
    vocab: str = opt(
        "bert",
        "tokenizer: 'bert' (from --config_name), 'hf:NAME_OR_FOLDER', a vocab file in the "
        "original word-level format, or 'wordpiece' (trained on the training data)",
    )
    wordpiece_vocab_size: int = opt(8000, "vocabulary size for --vocab wordpiece")
    num_workers: int = opt(0, "DataLoader worker processes")
    data_cache: str = opt(
        "auto",
        "tokenization cache: 'auto' ($XDG_CACHE_HOME/diffuseq/data, else "
        "~/.cache/diffuseq/data), 'off' (tokenize on every launch) or a folder; rank 0 "
        "tokenizes each split once, every rank memory-maps it, a changed file or tokenizer "
        "is tokenized again",
        metavar="auto|off|DIR",
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and logging (docs/original.md §6)."""

    lr: float = opt(1e-4, "peak learning rate (linear decay to 0, no warm-up)")
    batch_size: int = opt(64, "examples per step and per process", flag="bsz")
    microbatch: int = opt(64, "micro-batch size for gradient accumulation (<=0: = --bsz)")
    learning_steps: int = opt(40000, "total optimizer steps (including resumed ones)")
    save_interval: int = opt(10000, "save checkpoints every N steps")
    log_interval: int = opt(20, "log averaged metrics every N steps")
    eval_interval: int = opt(1000, "compute the loss of one validation batch every N steps")
    ema_rate: str = opt("0.9999", "comma-separated EMA rates")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    gradient_clipping: float = opt(-1.0, "clip the gradient norm to this value (<=0: off)")
    use_fp16: bool = opt(False, "mixed precision fp16 with a GradScaler (torch.amp)")
    bf16: bool = opt(False, "mixed precision bf16 autocast (no scaler)")
    seed: int = opt(101, "random seed")
    resume_checkpoint: str = opt(
        "none",
        "resume from a training state, an original ema_*.pt file, or 'auto' (newest in the run folder)",
    )
    checkpoint_path: str = opt(
        "", "run folder (default: diffusion_models/<name built from the flags>)"
    )
    notes: str = opt("-", "free text appended to the run folder name with a timestamp")
    run_name_format: str = opt(
        "portable",
        "run folder name: portable (no ':', notes '-' left out: ..._seed102_qqp_20250101-120000) "
        "or original (the original's ..._seed102_qqp20250101-12:00:00, for tools that parse it)",
        choices=("portable", "original"),
    )
    log_wandb: bool = opt(False, "also log to Weights & Biases (never required)", flag="wandb")
    tensorboard: bool = opt(
        False,
        "also write the metrics as TensorBoard events in RUN/tensorboard/ (needs the "
        "tensorboard package: pip install .[tensorboard])",
    )
    ema_tied_quirk: bool = opt(
        False,
        "reproduce the original's EMA file, whose lm_head.weight holds the raw (non-EMA) tied weight",
    )
    same_seed_all_ranks: bool = opt(
        False, "reproduce the original: every rank uses the same seed (identical noise on all GPUs)"
    )
    fixed_data_order: bool = opt(
        False, "reproduce the original: never call set_epoch (same shuffle every epoch)"
    )

    @property
    def ema_rates(self) -> tuple[float, ...]:
        return tuple(float(r) for r in self.ema_rate.split(",") if r.strip())

    @property
    def effective_microbatch(self) -> int:
        return self.microbatch if self.microbatch > 0 else self.batch_size


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild a run: saved with it and embedded in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ------------------------------------------------------------------ validation
    def validate(self) -> RunConfig:
        """Reject bad values and incompatible combinations once, at start-up."""
        m, d, da, tr = self.model, self.diffusion, self.data, self.train
        path_component(da.dataset, "--dataset")  # both become part of the run folder's name
        path_component(tr.notes, "--notes")
        _check_respacing(d.timestep_respacing, d.diffusion_steps)
        checks = [
            *(check for section in (m, d, da, tr) for check in choice_checks(section)),
            (d.diffusion_steps >= 2, f"--diff_steps must be at least 2, got {d.diffusion_steps}"),
            (
                m.hidden_dim > 0 and m.hidden_t_dim > 0,
                "--hidden_dim and --hidden_t_dim must be positive",
            ),
            (0.0 <= m.dropout < 1.0, f"--dropout must be in [0, 1), got {m.dropout}"),
            (
                da.seq_len >= 5,
                f"--seq_len {da.seq_len} is too small: the layout "
                "[CLS] x [SEP] [SEP] [CLS] y [SEP] needs at least 5 positions",
            ),
            (tr.batch_size > 0, f"--bsz must be positive, got {tr.batch_size}"),
            (
                tr.batch_size % tr.effective_microbatch == 0,
                f"--bsz {tr.batch_size} is not divisible by --microbatch {tr.microbatch}",
            ),
            (tr.learning_steps > 0, f"--learning_steps must be positive, got {tr.learning_steps}"),
            (tr.save_interval > 0, f"--save_interval must be positive, got {tr.save_interval}"),
            (
                tr.log_interval > 0 and tr.eval_interval > 0,
                "--log_interval and --eval_interval must be positive",
            ),
            (tr.lr > 0, f"--lr must be positive, got {tr.lr}"),
            (tr.weight_decay >= 0, f"--weight_decay must be ≥ 0, got {tr.weight_decay}"),
            (d.reg_rate >= 0, f"--reg_rate must be ≥ 0, got {d.reg_rate}"),
            (da.num_workers >= 0, f"--num_workers must be ≥ 0, got {da.num_workers}"),
            (
                da.vocab != "wordpiece" or da.wordpiece_vocab_size > 0,
                f"--wordpiece_vocab_size must be positive, got {da.wordpiece_vocab_size}",
            ),
            (
                min(m.num_layers, m.num_heads, m.bert_hidden_size, m.intermediate_size) >= 0,
                "--num_layers, --num_heads, --bert_hidden_size and --intermediate_size must be "
                "positive (or 0: the value of --config_name)",
            ),
            (not (tr.use_fp16 and tr.bf16), "--use_fp16 and --bf16 are mutually exclusive"),
            (
                not d.denoise or m.learned_mean_embed,
                "--denoise True needs --learned_mean_embed True (the noise replaces positions by the "
                "learned mean embedding; the original crashes here)",
            ),
            (
                0.0 <= d.denoise_rate <= 1.0,
                f"--denoise_rate must be in [0, 1], got {d.denoise_rate}",
            ),
            (
                0.0 <= d.noise_floor < 1.0
                and round(d.noise_floor * d.diffusion_steps) < d.diffusion_steps,
                f"--noise_floor must be in [0, 1) and leave at least one of the --diff_steps "
                f"{d.diffusion_steps} steps, got {d.noise_floor}",
            ),
            (
                m.use_plm_init == "no" or m.hidden_dim == 768,
                "--use_plm_init bert needs --hidden_dim 768 (the pretrained embedding is 768-wide)",
            ),
        ]
        try:
            rates = tr.ema_rates
            checks.append(
                (
                    len(rates) > 0 and all(0.0 < r < 1.0 for r in rates),
                    f"--ema_rate {tr.ema_rate!r}: give rates in (0, 1), comma-separated",
                )
            )
        except ValueError:
            checks.append(
                (False, f"--ema_rate {tr.ema_rate!r} is not a comma-separated list of numbers")
            )
        raise_first(checks)
        return self

    def replace(self, section: str, **changes: Any) -> RunConfig:
        """A copy with fields of one section changed."""
        return dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **changes)}
        )

    # ------------------------------------------------------------------ dict / yaml
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """Build from a sectioned dict (``{"model": {...}, ...}``) or a flat one (field or flag names)."""
        return cls.from_layers((data, source))

    @classmethod
    def from_layers(cls, *layers: tuple[Mapping[str, Any], str]) -> RunConfig:
        """Defaults overridden by each ``(mapping, source)`` in turn, later ones winning.

        The one merging path of the training CLI: ``(preset, --config), (flags, command line)``
        for a new run, ``(saved config, state file), (preset, ...), (flags, ...)`` when a run
        continues. Mappings are sectioned or flat, with field or flag names; an unknown key or
        a value of the wrong type raises :class:`ConfigError` naming its source.
        """
        merged: dict[str, Any] = {}
        for data, source in layers:
            merged.update(read_layer(_flatten(data), SECTIONS.values(), source=source))
        return cls(
            **{
                name: kind(**{f.name: merged[f.name] for f in fields(kind) if f.name in merged})
                for name, kind in SECTIONS.items()
            }
        )

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load_yaml(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(read_yaml(path), source=str(path))

    # ------------------------------------------------------------------ original format
    def to_training_args(self) -> dict[str, Any]:
        """The original's ``training_args.json`` content (v1 key set plus the v2 keys)."""
        m, d, da, tr = self.model, self.diffusion, self.data, self.train
        return {
            "lr": tr.lr,
            "batch_size": tr.batch_size,
            "microbatch": tr.microbatch,
            "learning_steps": tr.learning_steps,
            "log_interval": tr.log_interval,
            "save_interval": tr.save_interval,
            "eval_interval": tr.eval_interval,
            "ema_rate": tr.ema_rate,
            "resume_checkpoint": tr.resume_checkpoint,
            "schedule_sampler": d.schedule_sampler,
            "diffusion_steps": d.diffusion_steps,
            "noise_schedule": d.noise_schedule,
            "timestep_respacing": d.timestep_respacing,
            "vocab": da.vocab,
            "use_plm_init": m.use_plm_init,
            "vocab_size": m.vocab_size,
            "config_name": m.config_name,
            "notes": tr.notes,
            "data_dir": da.data_dir,
            "dataset": da.dataset,
            "checkpoint_path": tr.checkpoint_path,
            "seq_len": da.seq_len,
            "hidden_t_dim": m.hidden_t_dim,
            "hidden_dim": m.hidden_dim,
            "dropout": m.dropout,
            "use_fp16": tr.use_fp16,
            "fp16_scale_growth": 0.001,
            "seed": tr.seed,
            "gradient_clipping": tr.gradient_clipping,
            "weight_decay": tr.weight_decay,
            "learn_sigma": False,
            "use_kl": False,
            "predict_xstart": True,
            "rescale_timesteps": d.rescale_timesteps,
            "rescale_learned_sigmas": False,
            "sigma_small": False,
            "emb_scale_factor": 1.0,
            "learned_mean_embed": m.learned_mean_embed,
            "denoise": d.denoise,
            "denoise_rate": d.denoise_rate,
            "rejection_rate": 0.0,
            "reg_rate": d.reg_rate,
            "device": "",
            "data_split_num": 0,
        }

    @classmethod
    def from_training_args(
        cls, args: dict[str, Any], *, source: str = "training_args.json"
    ) -> RunConfig:
        """Rebuild from an original (or our) ``training_args.json``; unknown keys are ignored."""
        unsupported = [
            (k, v)
            for k, v in (("learn_sigma", True), ("predict_xstart", False))
            if args.get(k) == v
        ]
        if unsupported:
            raise ConfigError(
                f"{source}: {unsupported[0][0]}={unsupported[0][1]} is not supported "
                "(it is broken in the original too)"
            )
        flat = {k: v for k, v in args.items() if k in _FIELD_NAMES}
        return cls(
            **{
                name: kind(**values_from_dict(kind, flat, source=source))
                for name, kind in SECTIONS.items()
            }
        )


_FIELD_NAMES: set[str] = {f.name for kind in SECTIONS.values() for f in fields(kind)}


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _check_respacing(respacing: str, steps: int) -> None:
    from diffuseq.diffusion.respace import space_timesteps

    try:
        space_timesteps(steps, respacing)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"--timestep_respacing {respacing!r} does not fit --diff_steps {steps} ({err}); give "
            "'' (every step), ddimN or comma-separated counts per section such as 10,15,20"
        ) from None


#: The timestamp of a run folder name per ``--run_name_format``.
STAMP_FORMATS = {"portable": "%Y%m%d-%H%M%S", "original": "%Y%m%d-%H:%M:%S"}


def run_notes(train: TrainConfig, *, timestamp: str | None = None) -> str:
    """The notes part of a run folder name (also ``notes`` of training_args.json); ``""`` when
    ``--notes`` is empty. ``original``: ``notes + timestamp``, as the original; ``portable``:
    ``notes_timestamp`` without ':' (just the timestamp for the default notes ``-``)."""
    if not train.notes:
        return ""
    stamp = (
        timestamp if timestamp is not None else time.strftime(STAMP_FORMATS[train.run_name_format])
    )
    if train.run_name_format == "original":
        return train.notes + stamp
    return stamp if train.notes == "-" else f"{train.notes}_{stamp}"


def run_folder_name(config: RunConfig, *, timestamp: str | None = None) -> str:
    """The run folder name (docs/original.md §2.2 step 3), timestamp computed once by the caller.

    ``diffuseq_{dataset}_h{hidden}_lr{lr}_t{T}_{schedule}_{sampler}_seed{seed}_{notes part}``
    (:func:`run_notes`), with ``lr`` formatted by ``str(float)`` (``0.0001``, ``1e-05``).
    """
    m, d, da, tr = config.model, config.diffusion, config.data, config.train
    name = (
        f"diffuseq_{da.dataset}_h{m.hidden_dim}_lr{float(tr.lr)}_t{d.diffusion_steps}_"
        f"{d.noise_schedule}_{d.schedule_sampler}_seed{tr.seed}"
    )
    notes = run_notes(tr, timestamp=timestamp)
    return f"{name}_{notes}" if notes else name

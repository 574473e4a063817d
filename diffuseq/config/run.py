"""The training run's configuration: the sections of :mod:`diffuseq.config.sections`, grouped in
:class:`RunConfig`, validated once; the run folder's name.

Replaces the original's `diffuseq/config.json` + `scripts/run_train.py` flags +
`training_args.json` + `args.__dict__.update` (docs/original.md §2.2, §2.3, §10.1 item 16).

* :meth:`RunConfig.from_layers` is the one merging path (defaults < saved config < preset <
  flags); :meth:`RunConfig.validate` rejects bad values and combinations, naming the flag.
* A run saves its config as ``config.yaml`` (sectioned, our format) and as
  ``training_args.json`` with the original's key set (docs/original.md §2.3), so that tools written for
  the original keep working. :func:`RunConfig.from_training_args` reads either back.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from diffuseq.config.discrete import DiscreteConfig, discrete_checks
from diffuseq.config.fields import (
    choice_checks,
    key_map,
    plain_values,
    raise_first,
    read_layer,
    read_yaml,
    type_checks,
    values_from_dict,
)
from diffuseq.config.sections import (
    SECTIONS,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    TrainConfig,
)
from diffuseq.errors import ConfigError
from diffuseq.sampling.table import SAMPLER_TABLE, family_samplers
from diffuseq.store.safe_io import path_component

#: The largest --lr accepted: AdamW moves each weight by about lr per step, so a larger one
#: can only diverge (a smaller one may still: the trainer stops on a non-finite loss).
MAX_LR = 1.0
#: Upper bound of --diff_steps: the tables are float64 arrays of this length (the paper: 2000).
MAX_DIFFUSION_STEPS = 100_000

# The sections are re-exported: ``from diffuseq.config.run import TrainConfig`` keeps working.
__all__ = [
    "SECTIONS",
    "STAMP_FORMATS",
    "DataConfig",
    "DiffusionConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "run_folder_name",
    "run_notes",
]


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild a run: saved with it and embedded in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    discrete: DiscreteConfig = field(default_factory=DiscreteConfig)

    def __post_init__(self) -> None:
        for name in SECTIONS:  # numpy scalars (from Python callers) as Python numbers
            object.__setattr__(self, name, plain_values(getattr(self, name)))

    # ------------------------------------------------------------------ validation
    def validate(self) -> RunConfig:
        """Reject bad values and incompatible combinations once, at start-up."""
        m, d, da, tr = self.model, self.diffusion, self.data, self.train
        raise_first(c for name in SECTIONS for c in type_checks(getattr(self, name)))
        path_component(da.dataset, "--dataset")  # both become part of the run folder's name
        path_component(tr.notes, "--notes")
        raise_first(  # before the respacing is computed: a step list of this length
            [
                (
                    2 <= d.diffusion_steps <= MAX_DIFFUSION_STEPS,
                    f"--diff_steps must be in [2, {MAX_DIFFUSION_STEPS}] (the paper uses 2000), "
                    f"got {d.diffusion_steps}",
                )
            ]
        )
        _check_respacing(d.timestep_respacing, d.diffusion_steps)
        checks = [
            *(check for section in (m, d, da, tr) for check in choice_checks(section)),
            *choice_checks(self.discrete),
            *discrete_checks(self),
            (
                m.hidden_dim > 0 and m.hidden_t_dim > 1,
                "--hidden_dim must be positive and --hidden_t_dim at least 2 (the sinusoidal "
                f"time embedding has hidden_t_dim // 2 frequencies), got {m.hidden_dim} and "
                f"{m.hidden_t_dim}",
            ),
            (0.0 <= m.dropout < 1.0, f"--dropout must be in [0, 1), got {m.dropout}"),
            (
                da.seq_len >= 5,
                f"--seq_len {da.seq_len} is too small: the layout "
                "[CLS] x [SEP] [SEP] [CLS] y [SEP] needs at least 5 positions",
            ),
            (tr.batch_size > 0, f"--bsz must be positive, got {tr.batch_size}"),
            (0 <= tr.seed < 2**31, f"--seed must be in [0, 2**31), got {tr.seed}"),
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
            (
                0 < tr.lr <= MAX_LR,
                f"--lr must be positive and at most {MAX_LR:g} (AdamW moves every weight by "
                f"about lr per step; the presets use 1e-4 to 1e-3), got {tr.lr}",
            ),
            (
                tr.eval_decode_interval >= 0 and tr.eval_decode_samples >= 1,
                "--eval_decode_interval must be ≥ 0 (0: off) and --eval_decode_samples ≥ 1",
            ),
            _eval_sampler_check(tr.eval_decode_sampler, m.family),
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
                re.fullmatch(r"auto|[1-9]\d*\+[1-9]\d*", m.ar_layers) is not None,
                f"--ar_layers {m.ar_layers!r}: give auto or encoder+decoder layers, e.g. 6+6",
            ),
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
                d.noise_rescale == 0.0 or d.noise_rescale >= 1.0,
                f"--noise_rescale must be 0 (off) or a factor >= 1, got {d.noise_rescale}",
            ),
            (
                d.length_loss_weight >= 0.0,
                f"--length_loss_weight must be >= 0, got {d.length_loss_weight}",
            ),
            (
                d.adaptive_schedule >= 0,
                f"--adaptive_schedule must be 0 (off) or a refit interval N >= 1, got "
                f"{d.adaptive_schedule}",
            ),
            (
                d.adaptive_schedule == 0 or d.noise_floor == 0.0,
                "--adaptive_schedule cannot be combined with --noise_floor (the steps below the "
                "floor are never drawn, so their loss is never measured)",
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
            checks.append(
                (
                    len(set(rates)) == len(rates),
                    f"--ema_rate {tr.ema_rate!r} names a rate twice (both would write one file)",
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
            merged.update(read_layer(_flatten(data, source), SECTIONS.values(), source=source))
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
        args = {
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
        if m.family != "gaussian":  # beyond the original's keys only when it is not its model
            args["family"] = m.family
        return args

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


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One flat mapping of a sectioned one; a key under a section it does not belong to (or a
    section that is not a mapping) is an error naming ``source``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SECTIONS:
            flat[key] = value
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{source}: section '{key}' must be a mapping of its options, got {_kind(value)}"
            )
        own = key_map([SECTIONS[key]])
        for name in value:
            if name not in own:
                home = [s for s, kind in SECTIONS.items() if name in key_map([kind])]
                where = f" (it belongs to '{home[0]}')" if home else ""
                raise ConfigError(f"{source}: '{name}' is not an option of section '{key}'{where}")
        flat.update(value)
    return flat


def _kind(value: Any) -> str:
    return "an empty value" if value is None else f"a {type(value).__name__}"


def _check_respacing(respacing: str, steps: int) -> None:
    from diffuseq.diffusion.respace import space_timesteps

    try:
        kept = space_timesteps(steps, respacing)
        if len(kept) < 2:
            raise ValueError(f"it keeps {len(kept)} step(s), and sampling needs at least 2")
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


def _eval_sampler_check(sampler: str, family: str) -> tuple[bool, str]:
    """``--eval_decode_sampler`` decodes this run's family (checked before a folder exists)."""
    row = SAMPLER_TABLE.get(sampler) if isinstance(sampler, str) else None
    return (
        row is None or row.family == family,
        f"--eval_decode_sampler {sampler} decodes --family {row and row.family} models, this run "
        f"is --family {family}: choose auto or one of {', '.join(family_samplers(family))}",
    )

"""What ``run_decode.py`` and the Python API sample (:class:`DecodeConfig`, resolved once per
model into a :class:`ResolvedDecode`) and what the decode command reads and writes
(:class:`DecodeJob`); docs/original.md §2.4–2.6.

Flag names and defaults are the original ``scripts/run_decode.py``'s (``--step``, ``--bsz``,
``--seed``, ``--top_p``, ``--clamp_step``, ``--pattern``, ``--out_dir``, ``--note``), then this
toolkit's additions. Importing this module does not load torch: the ``--sampler`` choices and
help come from the torch-free sampler table (:mod:`diffuseq.sampling.table`).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffuseq.config.fields import FlagConfig, choice_checks, opt, raise_first
from diffuseq.errors import ConfigError
from diffuseq.sampling.table import SAMPLER_TABLE, SamplerRow, sampler_help, sampler_names
from diffuseq.store.safe_io import check_pattern, check_writable_folder, path_component

__all__ = ["DTYPES", "DecodeConfig", "DecodeJob", "ResolvedDecode", "sampler_choices"]

#: ``--dtype`` name -> the ``torch`` dtype attribute it autocasts the network to.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def sampler_choices() -> tuple[str, ...]:
    """``--sampler`` choices: ``auto`` plus every row of :data:`~diffuseq.sampling.table.SAMPLER_TABLE`."""
    return ("auto", *sampler_names())


def _legacy_rows() -> list[tuple[str, str, SamplerRow]]:
    """``(flag, --sampler value, row)`` of the first releases' spellings (``--ddim_adjacent``)."""
    return [(row.legacy[1], row.legacy[0], row) for row in SAMPLER_TABLE.values() if row.legacy]


def _noisy_names() -> str:
    return ", ".join(row.name for row in SAMPLER_TABLE.values() if row.draws_noise)


@dataclass(frozen=True)
class DecodeConfig(FlagConfig):
    """What to sample. :meth:`resolve` turns it into the :class:`ResolvedDecode` for a model."""

    sampler: str = opt("auto", sampler_help(), choices=sampler_choices)
    steps: int | None = opt(
        None,
        "sampling steps (default: the model's T, i.e. the original's 2000 = full ancestral "
        "sampling)",
        flag="step",
    )
    clamp_step: int = opt(
        0, "round to the nearest word embedding only at levels t >= clamp_step (0: every step)"
    )
    top_p: float = opt(
        -1.0,
        "the original's noise truncation: redraw noise entries with |x| > top_p (<= 0: off; "
        f"only the samplers that draw noise: {_noisy_names()})",
    )
    seed: int = opt(101, "decoding seed (candidate k of --num_samples uses seed+k)")
    num_samples: int = opt(
        1, "candidates per source in one pass, written to seed{seed+k} files (for MBR)"
    )
    batch_size: int = opt(50, "sequences per model call (each candidate counts)", flag="bsz")
    dtype: str = opt(
        "fp32",
        "autocast dtype of the network (rounding and logits stay fp32)",
        choices=tuple(DTYPES),
    )
    length_beam: int = opt(
        1,
        "lengths decoded per candidate by a model trained with --length_predict: the K most "
        "likely target lengths are sampled in one batch (K times the model calls) and the copy "
        "whose tokens have the highest mean log-probability is kept (1: the most likely length)",
    )
    ddim_adjacent: bool = opt(
        False, "the first releases' spelling of --sampler ddim-adjacent (with --sampler ddim)"
    )
    dpm_v2_variant: bool = opt(
        False,
        "the first releases' spelling of --sampler dpm-solver++-v2 (with --sampler dpm-solver++)",
    )

    def validate(self) -> DecodeConfig:
        """Checks that need no model (run at start-up)."""
        legacy = [(flag, base, row) for flag, base, row in _legacy_rows() if getattr(self, flag)]
        raise_first(
            [
                *choice_checks(self),
                (
                    self.num_samples >= 1,
                    f"--num_samples must be at least 1, got {self.num_samples}",
                ),
                (self.batch_size >= 1, f"--bsz must be at least 1, got {self.batch_size}"),
                (
                    self.length_beam >= 1,
                    f"--length_beam must be at least 1, got {self.length_beam}",
                ),
                (
                    self.steps is None or self.steps >= 1,
                    f"--step must be at least 1, got {self.steps}",
                ),
                (self.clamp_step >= 0, f"--clamp_step must be ≥ 0, got {self.clamp_step}"),
                *(
                    (
                        self.sampler in ("auto", base, row.name),
                        f"--{flag} selects {row.name} ({row.help}): use it with --sampler "
                        f"{base}, or pass --sampler {row.name} alone",
                    )
                    for flag, base, row in legacy
                ),
                (
                    len(legacy) <= 1,
                    " and ".join(f"--{flag}" for flag, _, _ in legacy)
                    + " select different samplers: pass one --sampler",
                ),
            ]
        )
        return self

    def resolve(self, num_timesteps: int, *, family: str = "gaussian") -> ResolvedDecode:
        """The sampler row and step count for a ``family`` model with T = ``num_timesteps``.

        ``steps`` defaults to T; ``auto`` is ancestral at T steps, else ddim; a legacy flag
        (``--ddim_adjacent``, ``--dpm_v2_variant``) selects its row. Raises
        :class:`~diffuseq.errors.ConfigError` for a combination the model cannot decode.
        """
        self.validate()
        T = num_timesteps
        steps = T if self.steps is None else self.steps
        if steps > T:
            raise ConfigError(
                f"--step {steps} is larger than the model's diffusion steps T={T}; pass --step ≤ {T}"
            )
        flagged = [row.name for flag, _, row in _legacy_rows() if getattr(self, flag)]
        name = flagged[0] if flagged else self.sampler
        if name == "auto":
            name = "ancestral" if steps == T else "ddim"
        row = SAMPLER_TABLE[name]
        if row.family != family:
            raise ConfigError(
                f"--sampler {name} decodes {row.family} models; this model's family is {family}"
            )
        if not row.takes_steps and steps != T:
            others = ", ".join(
                f"--sampler {r.name}" for r in SAMPLER_TABLE.values() if r.takes_steps
            )
            raise ConfigError(
                f"--sampler {name} always runs all T={T} steps (got --step {steps}); for fewer "
                f"steps use one of {others}"
            )
        return self.resolved(name, steps)

    def resolved(self, sampler: str, steps: int) -> ResolvedDecode:
        """This config with its sampler row and step count chosen (a family's
        ``resolve_decode`` decides them; :meth:`resolve` is the Gaussian family's choice)."""
        return ResolvedDecode(
            sampler=sampler,
            steps=steps,
            clamp_step=self.clamp_step,
            top_p=self.top_p,
            seed=self.seed,
            num_samples=self.num_samples,
            batch_size=self.batch_size,
            dtype=self.dtype,
            length_beam=self.length_beam,
        )


@dataclass(frozen=True)
class ResolvedDecode:
    """A :class:`DecodeConfig` resolved for one model (:meth:`DecodeConfig.resolve`): what the
    decode job and the samplers run, nothing left to choose. Saved in the decode manifest."""

    sampler: str  # a row of diffuseq.sampling.table.SAMPLER_TABLE (never auto)
    steps: int  # model calls of a sampler that takes a step count; T for ancestral
    clamp_step: int  # round only at levels t >= clamp_step
    top_p: float  # noise truncation as given (see noise_top_p)
    seed: int  # seed of candidate 0
    num_samples: int  # candidates per source
    batch_size: int  # rows per model call
    dtype: str  # autocast dtype (DTYPES)
    length_beam: int = 1  # lengths per candidate (a --length_predict model; x model calls)

    @property
    def row(self) -> SamplerRow:
        """The sampler's row (:data:`~diffuseq.sampling.table.SAMPLER_TABLE`)."""
        return SAMPLER_TABLE[self.sampler]

    @property
    def noise_top_p(self) -> float | None:
        """``top_p`` for the samplers: ``None`` when truncation is off (``top_p ≤ 0``)."""
        return self.top_p if self.top_p is not None and self.top_p > 0 else None


@dataclass(frozen=True)
class DecodeJob(FlagConfig):
    """Which checkpoints to decode, on what input, where the files go, on which device."""

    model_dir: str = opt(
        "",
        "run folder (a glob: every match is decoded), one .pt file, or a model folder "
        "(RUN/hf/<checkpoint>, written by training or diffuseq-export)",
        group="checkpoints",
    )
    pattern: str = opt(
        "ema", "checkpoint file prefix: <model_dir>/<pattern>*.pt", group="checkpoints"
    )
    checkpoint: str = opt(
        "latest",
        "decode only the newest matching checkpoint (default) or all of them, newest first "
        "(the original)",
        choices=("latest", "all"),
        group="checkpoints",
    )
    split: str = opt(
        "test",
        "data split of the run's data_dir to decode (file order)",
        choices=("train", "valid", "test"),
        group="inputs",
    )
    input: str = opt(
        "",
        'decode these {"src": ..., "trg": ...} lines (trg optional) instead of --split',
        metavar="FILE.jsonl",
        group="inputs",
    )
    text: tuple[str, ...] = opt(
        (),
        "decode this source text instead of --split (repeatable); the candidates are also "
        "printed on stdout",
        metavar="SOURCE",
        group="inputs",
    )
    out_dir: str = opt("generation_outputs", "output root folder", group="outputs")
    note: str | None = opt(
        None,
        "suffix of the output file name: seed{S}_step{clamp}_{note}.json (v2)",
        group="outputs",
    )
    append: bool = opt(
        False,
        "append to existing output files (the original) instead of overwriting them",
        group="outputs",
    )
    cut_at_sep: bool = opt(
        False,
        "cut texts at the first [SEP]/eos and drop special tokens (off: the original's text)",
        group="outputs",
    )
    device: str = opt(
        "auto",
        "auto: cuda:LOCAL_RANK if CUDA is available, else cpu",
        choices=("auto", "cpu", "cuda"),
        group="runtime",
    )
    compile: bool = opt(
        False,
        "torch.compile the network (compiled once per run, a minute or more; worth it for "
        "long decodes); falls back to eager with a warning where compiling is not available",
        group="runtime",
    )

    def validate(self) -> DecodeJob:
        """Reject bad values before any work: a ``--note`` that cannot be part of a file name,
        an ``--out_dir`` that cannot become a writable folder (nothing is created here)."""
        if self.note:
            path_component(self.note, "--note", purpose="the output file name")
        check_pattern(self.pattern)
        check_writable_folder(self.out_dir, "--out_dir")
        raise_first(
            [
                *choice_checks(self),
                (
                    not (self.input and self.text),
                    "give either --input FILE.jsonl or --text, not both",
                ),
            ]
        )
        return self

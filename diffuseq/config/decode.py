"""What ``run_decode.py`` and the Python API sample (:class:`DecodeConfig`) and what the decode
command reads and writes (:class:`DecodeJob`); docs/original.md §2.4–2.6.

Flag names and defaults are the original ``scripts/run_decode.py``'s (``--step``, ``--bsz``,
``--seed``, ``--top_p``, ``--clamp_step``, ``--pattern``, ``--out_dir``, ``--note``), then this
toolkit's additions. Importing this module does not load torch: the sampler names come from
the registry :data:`diffuseq.sampling.SAMPLERS` only when a parser is built or a value checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from diffuseq.config.fields import FlagConfig, choice_checks, opt, raise_first
from diffuseq.errors import ConfigError
from diffuseq.store.safe_io import check_writable_folder, path_component

__all__ = ["DTYPES", "DecodeConfig", "DecodeJob", "SAMPLER_VARIANTS", "sampler_choices"]

#: ``--dtype`` name -> the ``torch`` dtype attribute it autocasts the network to.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: Registered sampler -> (base sampler, the flag that selects it with the base), for the flags
#: the first releases had (``--sampler ddim --ddim_adjacent``).
SAMPLER_VARIANTS = {
    "ddim-adjacent": ("ddim", "ddim_adjacent"),
    "dpm-solver++-v2": ("dpm-solver++", "dpm_v2_variant"),
}


def sampler_choices() -> tuple[str, ...]:
    """``--sampler`` choices: ``auto`` plus every sampler name (:data:`diffuseq.names.SAMPLER_NAMES`,
    the keys of :data:`diffuseq.sampling.SAMPLERS`, then the discrete family's,
    :data:`diffuseq.discrete.SAMPLER_NAMES`)."""
    from diffuseq.discrete import SAMPLER_NAMES as DISCRETE_SAMPLER_NAMES
    from diffuseq.names import SAMPLER_NAMES

    return ("auto", *SAMPLER_NAMES, *DISCRETE_SAMPLER_NAMES)


@dataclass(frozen=True)
class DecodeConfig(FlagConfig):
    """What to sample. ``resolve(T)`` fills ``steps``/``sampler`` for a model with T steps."""

    sampler: str = opt(
        "auto",
        "auto: ancestral at --step T, else ddim. ancestral: the original's DDPM loop with "
        "rounding; ddim: DDIM eta=0 over --step respaced levels; dpm-solver++: DPM-Solver++(2M); "
        "sde-dpm-solver++: its SDE form (fresh noise every step; closer to ancestral in few steps). "
        "--family discrete models: auto = rdm (RDM's adaptive decoding, --step default 10) or "
        "absorbing (ancestral absorbing-state sampling)",
        choices=sampler_choices,
    )
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
        "ancestral and sde-dpm-solver++ only)",
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
    ddim_adjacent: bool = opt(
        False,
        "with ddim: the original's pseudo-DDIM (steps to the adjacent level, never reaches t=0)",
    )
    dpm_v2_variant: bool = opt(
        False, "with dpm-solver++: DiffuSeq-v2's modified solver loop (reproduces v2 numbers)"
    )

    def validate(self) -> DecodeConfig:
        """Checks that need no model (run at start-up); a variant name becomes base + flag."""
        if self.sampler in SAMPLER_VARIANTS:
            base, flag = SAMPLER_VARIANTS[self.sampler]
            return replace(self, sampler=base, **{flag: True}).validate()
        raise_first(
            [
                *choice_checks(self),
                (
                    self.num_samples >= 1,
                    f"--num_samples must be at least 1, got {self.num_samples}",
                ),
                (self.batch_size >= 1, f"--bsz must be at least 1, got {self.batch_size}"),
                (
                    self.steps is None or self.steps >= 1,
                    f"--step must be at least 1, got {self.steps}",
                ),
                (self.clamp_step >= 0, f"--clamp_step must be ≥ 0, got {self.clamp_step}"),
                (
                    not (self.ddim_adjacent and self.sampler not in ("ddim", "auto")),
                    "--ddim_adjacent selects the original's pseudo-DDIM: use it with --sampler ddim",
                ),
                (
                    not (self.dpm_v2_variant and self.sampler != "dpm-solver++"),
                    "--dpm_v2_variant selects DiffuSeq-v2's solver loop: use it with --sampler "
                    "dpm-solver++",
                ),
            ]
        )
        return self

    def resolve(self, num_timesteps: int) -> DecodeConfig:
        """Fill ``steps`` (default T) and ``sampler`` (``auto``) for a model with T steps."""
        self = self.validate()
        T = num_timesteps
        steps = T if self.steps is None else self.steps
        if steps > T:
            raise ConfigError(
                f"--step {steps} is larger than the model's diffusion steps T={T}; pass --step ≤ {T}"
            )
        sampler = self.sampler
        if sampler == "auto":
            sampler = "ancestral" if steps == T and not self.ddim_adjacent else "ddim"
        if sampler == "ancestral" and steps != T:
            raise ConfigError(
                f"--sampler ancestral always runs all T={T} steps (got --step {steps}); for fewer "
                "steps use --sampler ddim, --sampler ddim --ddim_adjacent (the original's "
                "pseudo-DDIM), --sampler dpm-solver++ or --sampler sde-dpm-solver++"
            )
        return replace(self, steps=steps, sampler=sampler)

    @property
    def label(self) -> str:
        """The registered sampler name (also used in output folder names)."""
        if self.sampler == "ddim" and self.ddim_adjacent:
            return "ddim-adjacent"
        if self.sampler == "dpm-solver++" and self.dpm_v2_variant:
            return "dpm-solver++-v2"
        return self.sampler

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

    def validate(self) -> DecodeJob:
        """Reject bad values before any work: a ``--note`` that cannot be part of a file name,
        an ``--out_dir`` that cannot become a writable folder (nothing is created here)."""
        if self.note:
            path_component(self.note, "--note", purpose="the output file name")
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

"""The decoding algorithms, one row each: the only place a sampler is declared.

A row names the sampler (``--sampler``, output folder names), where its function lives
(``"module:function"``, imported on first use: this module does not load torch, so the
command lines build ``--sampler`` choices and help from it), the model family it decodes,
whether it draws fresh noise at every step (then ``--top_p`` truncates that noise) and whether
it takes a step count (ancestral sampling always runs all T steps).

Every sampler of one family has that family's signature: the Gaussian family's is
``sampler(inputs: SamplerInputs) -> x_0`` (:class:`~diffuseq.sampling.inputs.SamplerInputs`),
the discrete family's :mod:`diffuseq.discrete.samplers`, the AR family's
:func:`diffuseq.families.ar.generate_targets`. Adding a sampler = its function + its row; the
family's ``resolve_decode`` chooses among its rows (``auto``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SAMPLERS",
    "SAMPLER_TABLE",
    "SamplerRow",
    "family_samplers",
    "get_sampler",
    "sampler_help",
    "sampler_names",
    "sampler_row",
]


@dataclass(frozen=True)
class SamplerRow:
    """One registered decoding algorithm.

    Attributes:
        name: the ``--sampler`` value, also used in output folder names.
        function: ``"module:function"`` of ``sampler(inputs: SamplerInputs) -> x_0``.
        family: the model family it decodes (:data:`diffuseq.families.FAMILIES`).
        draws_noise: draws fresh Gaussian noise at every step (``--top_p`` truncates it).
        takes_steps: runs ``--step`` model calls (``False``: always all T steps).
        help: one line for ``--help``.
        legacy: ``(--sampler value, boolean flag)`` of the first releases' spelling of this
            row (``--sampler ddim --ddim_adjacent``), still accepted; ``None`` if none.
    """

    name: str
    function: str
    family: str
    draws_noise: bool
    takes_steps: bool
    help: str
    legacy: tuple[str, str] | None = None

    def load(self) -> Callable[..., Any]:
        """The sampler function (its module is imported now)."""
        module, _, attribute = self.function.partition(":")
        return getattr(importlib.import_module(module), attribute)


def _by_name(*rows: SamplerRow) -> dict[str, SamplerRow]:
    """``name -> row``; ``ValueError`` on a repeated name."""
    table: dict[str, SamplerRow] = {}
    for row in rows:
        if row.name in table:
            raise ValueError(f"sampler {row.name!r} is registered twice")
        table[row.name] = row
    return table


#: ``--sampler`` name -> row, in ``--help`` order; one line per sampler:
#: name, function, family, draws noise, takes steps, help[, legacy spelling].
# fmt: off
SAMPLER_TABLE: dict[str, SamplerRow] = _by_name(
    SamplerRow("ancestral", "diffuseq.sampling.ancestral:ancestral_sample", "gaussian", True, False, "the original's DDPM loop with rounding (all T steps)"),
    SamplerRow("ddim", "diffuseq.sampling.ddim:ddim_sample", "gaussian", False, True, "DDIM eta=0 over --step respaced levels"),
    SamplerRow("ddim-adjacent", "diffuseq.sampling.ddim:ddim_adjacent_sample", "gaussian", False, True, "the original v1 pseudo-DDIM (steps to the adjacent level, never reaches t=0)", ("ddim", "ddim_adjacent")),
    SamplerRow("dpm-solver++", "diffuseq.sampling.dpm_solver:dpm_solver_sample", "gaussian", False, True, "DPM-Solver++(2M)"),
    SamplerRow("dpm-solver++-v2", "diffuseq.sampling.dpm_v2:dpm_solver_v2_sample", "gaussian", False, True, "DiffuSeq-v2's modified solver loop (reproduces v2 numbers)", ("dpm-solver++", "dpm_v2_variant")),
    SamplerRow("sde-dpm-solver++", "diffuseq.sampling.dpm_solver:sde_dpm_solver_sample", "gaussian", True, True, "the SDE form of DPM-Solver++(2M) (fresh noise every step; closer to ancestral in few steps)"),
    SamplerRow("rdm", "diffuseq.discrete.samplers:rdm_sample", "discrete", False, True, "--family discrete: RDM's adaptive decoding (keep the most confident target tokens, re-mask the rest; --step default 10)"),
    SamplerRow("absorbing", "diffuseq.discrete.samplers:absorbing_sample", "discrete", False, True, "--family discrete: ancestral absorbing-state sampling (unmask with the schedule's probability)"),
    SamplerRow("greedy", "diffuseq.families.ar:generate_targets", "ar", False, False, "--family ar: greedy search (transformers' generate)"),
    SamplerRow("beam", "diffuseq.families.ar:generate_targets", "ar", False, True, "--family ar: beam search, --step = beam width (default max(K, 4)); candidate k = the k-th best beam"),
    SamplerRow("sample", "diffuseq.families.ar:generate_targets", "ar", False, False, "--family ar: ancestral sampling at temperature 1, per-row seeded"),
)
# fmt: on


def sampler_names() -> tuple[str, ...]:
    """Every registered sampler name, in table order."""
    return tuple(SAMPLER_TABLE)


def family_samplers(family: str) -> tuple[str, ...]:
    """The sampler names of one model family, in table order."""
    return tuple(name for name, row in SAMPLER_TABLE.items() if row.family == family)


def sampler_row(name: str) -> SamplerRow:
    """The row of sampler ``name``; ``ValueError`` listing the choices otherwise."""
    try:
        return SAMPLER_TABLE[name]
    except (KeyError, TypeError):
        choices = ", ".join(SAMPLER_TABLE)
        raise ValueError(f"unknown sampler {name!r}; choose one of {choices}") from None


def get_sampler(name: str) -> Callable[..., Any]:
    """The sampler function registered as ``name``: ``sampler(inputs: SamplerInputs) -> x_0``.

    It applies the model's decode-time wrappers itself (self-conditioning, the process's
    noise floor, autocast: :func:`diffuseq.sampling.inputs.wrap_model`), so a raw model in
    :class:`~diffuseq.sampling.inputs.SamplerInputs` decodes as ``run_decode.py`` does.
    ``ValueError`` listing the choices for an unknown name.
    """
    return sampler_row(name).load()


def sampler_help() -> str:
    """The ``--sampler`` help text: ``auto`` then one clause per row."""
    rows = "; ".join(f"{row.name}: {row.help}" for row in SAMPLER_TABLE.values())
    return (
        "auto: ancestral at --step T, else ddim (--family discrete: rdm; --family ar: greedy, "
        f"beam for several candidates); {rows}"
    )


class _SamplerFunctions(Mapping):
    """``name -> sampler function``, each imported on first access (so this stays torch-free)."""

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in SAMPLER_TABLE:
            raise KeyError(name)
        return SAMPLER_TABLE[name].load()

    def __iter__(self) -> Iterator[str]:
        return iter(SAMPLER_TABLE)

    def __len__(self) -> int:
        return len(SAMPLER_TABLE)

    def __repr__(self) -> str:
        return f"SAMPLERS({', '.join(SAMPLER_TABLE)})"


#: Sampler name -> function (read-only view of :data:`SAMPLER_TABLE`; functions load lazily).
SAMPLERS: Mapping[str, Callable[..., Any]] = _SamplerFunctions()

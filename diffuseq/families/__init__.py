"""Model families: the seam between the generic machinery and one kind of model.

A *family* is one way of modelling ``p(y | x)``: the Gaussian embedding diffusion of
DiffuSeq / DiffuSeq-v2 (``gaussian``, the default and the original), and the families added
next to it (a discrete absorbing-state diffusion, an autoregressive encoder-decoder baseline).
The trainer, the decode job, the run store and the evaluator work through the
:class:`~diffuseq.families.base.Family` interface; a family is one row of :data:`FAMILIES` plus
one module that defines ``FAMILY``.

This table is torch-free (the command lines read the names for ``--family`` choices and
``--help``); :func:`get_family` imports the family's module on first use.

Registering a new family::

    # diffuseq/families/my_family.py
    class MyFamily(Family):
        name = "my_family"
        ...                       # build_model, build_process, build_objective, sample_tokens
    FAMILY = MyFamily()

    # here
    FAMILIES["my_family"] = FamilyRow("my_family", "diffuseq.families.my_family", "one line")
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffuseq.families.base import Family

__all__ = ["FAMILIES", "FamilyRow", "family_names", "get_family"]


@dataclass(frozen=True)
class FamilyRow:
    """One registered family: its name (``--family``), the module defining ``FAMILY``, help."""

    name: str
    module: str
    help: str


#: ``--family`` name -> row. The first is the default (the original's model).
FAMILIES: dict[str, FamilyRow] = {
    row.name: row
    for row in (
        FamilyRow(
            "gaussian",
            "diffuseq.families.gaussian",
            "DiffuSeq / DiffuSeq-v2: Gaussian diffusion over word embeddings (the original)",
        ),
        FamilyRow(
            "ar",
            "diffuseq.families.ar",
            "autoregressive encoder-decoder Transformer (BART layers from scratch): the baseline",
        ),
        FamilyRow(
            "discrete",
            "diffuseq.families.discrete",
            "RDM: reparameterized absorbing-state ([MASK]) diffusion over the target tokens",
        ),
    )
}


def family_names() -> tuple[str, ...]:
    """The ``--family`` choices, default first."""
    return tuple(FAMILIES)


def get_family(name: str) -> Family:
    """The family registered as ``name`` (its module is imported now).

    Raises:
        ValueError: no such family (the message lists the choices).
    """
    try:
        row = FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}"
        ) from None
    return importlib.import_module(row.module).FAMILY

"""Which decode outputs may be evaluated together: the files of one decode setting.

A samples folder can receive files from several decodes: ``run_decode.sh`` once per seed (the
original's workflow: one setting, several seeds), ``--num_samples 10`` after it (more seeds of
the same setting), ``--append``, ``--note``, another ``--clamp_step``/``--top_p``/``--dtype``,
a re-trained checkpoint of the same name, other inputs, or files copied in. MBR and the
summary across seeds only mean something over candidates of *one* setting: same weights,
sampler, steps and inputs, differing in the seed alone.

Every file's manifest entry (:mod:`diffuseq.decoding.manifest`) records the settings that
wrote it (and, after ``--append``, those of the lines above, ``appended_to``), with the decode
job's id, a fingerprint of the model weights and of the inputs
(:func:`diffuseq.decoding.job.provenance`). :func:`group_files` sorts the files into
:class:`DecodeSet`\\ s by :data:`SETTING_KEYS`; :func:`check_one_set` refuses more than one (the
evaluator's ``--allow_mixed`` overrides), and :func:`describe` says what is combined. Torch-free.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffuseq.decoding.manifest import read_manifest
from diffuseq.errors import DataError

__all__ = ["SETTING_KEYS", "DecodeSet", "check_one_set", "describe", "group_files"]

#: Manifest settings that must agree between files evaluated together, with their names in
#: messages (the seed, ``num_samples``, ``batch_size`` and the job id may differ).
SETTING_KEYS = {
    "checkpoint": "checkpoint",
    "weights": "checkpoint weights",
    "sampler": "sampler",
    "steps": "steps",
    "clamp_step": "clamp_step",
    "top_p": "top_p",
    "dtype": "dtype",
    "inputs": "inputs",
    "note": "note",
    "cut_at_sep": "cut_at_sep",
}
_SEED = re.compile(r"seed(-?\d+)")


@dataclass
class DecodeSet:
    """Files of one setting: their names, seeds (from the name), decode jobs and settings."""

    settings: dict[str, Any]
    files: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "seeds": self.seeds, "jobs": self.jobs, **self.settings}


def _key(settings: Mapping[str, Any]) -> str:
    return repr([(k, settings.get(k)) for k in SETTING_KEYS])


def group_files(folder: str | Path, names: Sequence[str]) -> list[DecodeSet] | None:
    """The decode sets of ``names`` (files of ``folder``), in the order of their first file;
    ``None`` when the folder has no decode manifest (the original's outputs). A file whose
    lines come from several settings (``--append``) is placed in each of them."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    sets: dict[str, DecodeSet] = {}
    for name in (os.path.basename(n) for n in names):
        entry = manifest["files"].get(name) or {}
        history = [*entry.get("appended_to", []), entry.get("settings") or {}]
        for settings in history:
            chosen = {k: settings.get(k) for k in SETTING_KEYS}
            group = sets.setdefault(_key(settings), DecodeSet(chosen))
            if name not in group.files:
                group.files.append(name)
                if match := _SEED.search(name):
                    group.seeds.append(int(match.group(1)))
            job = settings.get("job")
            if job and job not in group.jobs:
                group.jobs.append(job)
    return list(sets.values())


def _seeds(seeds: Sequence[int]) -> str:
    """``101-105, 123`` (consecutive runs joined)."""
    runs: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _value(key: str, value: Any) -> str:
    if key == "checkpoint" and value:
        return Path(str(value)).name
    if key == "inputs" and isinstance(value, Mapping):
        return f"{value.get('count')} ({value.get('fingerprint')})"
    return str(value)


def _settings(settings: Mapping[str, Any]) -> str:
    s = settings
    parts = [f"{s.get('sampler')}, {s.get('steps')} steps"]
    if s.get("checkpoint"):
        parts.append(f"checkpoint {Path(str(s['checkpoint'])).name}")
    if s.get("weights"):
        parts.append(f"weights {s['weights']}")
    inputs = s.get("inputs")
    if isinstance(inputs, Mapping):
        parts.append(f"{inputs.get('count')} inputs ({inputs.get('fingerprint')})")
    for key in ("clamp_step", "top_p", "dtype"):
        parts.append(f"{key} {s.get(key)}")
    if s.get("note"):
        parts.append(f"note {s['note']}")
    if s.get("cut_at_sep"):
        parts.append("cut_at_sep")
    return ", ".join(parts)


def describe(group: DecodeSet) -> str:
    """``5 file(s), seeds 101-105, from 2 decode run(s): dpm-solver++, 10 steps, ...``."""
    seeds = f", seeds {_seeds(group.seeds)}" if group.seeds else ""
    jobs = f", from {len(group.jobs)} decode run(s)" if group.jobs else ""
    return f"{len(group.files)} file(s){seeds}{jobs}: {_settings(group.settings)}"


def check_one_set(folder: str | Path, sets: Sequence[DecodeSet], *, flag: str) -> None:
    """Raise :class:`DataError` when ``sets`` holds more than one setting, naming the files of
    each, the settings that differ, and ``flag`` (the override)."""
    if len(sets) <= 1:
        return
    differ = [key for key in SETTING_KEYS if len({repr(s.settings.get(key)) for s in sets}) > 1]
    listing = "; ".join(
        f"({i}) {', '.join(s.files[:4])}{' ...' if len(s.files) > 4 else ''}"
        + (f" (seeds {_seeds(s.seeds)})" if s.seeds else "")
        + ": "
        + ", ".join(f"{SETTING_KEYS[k]} {_value(k, s.settings.get(k))}" for k in differ)
        for i, s in enumerate(sets, 1)
    )
    raise DataError(
        str(folder),
        None,
        None,
        f"holds the outputs of {len(sets)} different decode settings, which MBR and the "
        "scores across seeds must not mix (they differ in "
        f"{', '.join(SETTING_KEYS[k] for k in differ)}): {listing}. "
        "Decode each setting into its own folder (run_decode.py --out_dir), evaluate one file "
        f"with --file, or pass {flag} to evaluate them together anyway",
    )

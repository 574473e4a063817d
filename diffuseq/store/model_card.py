"""The model card (``README.md``) of a Hugging Face model folder (:mod:`diffuseq.store.hf_folder`).

Written from the folder's ``config.json`` content: task and data, the recipe's flags, the
training steps, evaluation numbers when known (an ``eval_seq2seq.py --json`` report given to
``diffuseq-export --eval``; "unknown" otherwise), the environment of the run's first launch,
how to load the folder with diffuseq and how to push it to the Hub. The YAML header is the
Hub's model-card metadata (``huggingface_hub.ModelCardData``). The body is plain text built
here rather than a ``ModelCard.from_template`` Jinja template: its tables come from
``config.json`` and an evaluation report, so a template would receive the same Python values
and move the same logic into Jinja syntax without changing a character of the text.
The recipe table lists the run config's fields declared ``recipe=True``
(:mod:`diffuseq.config.sections`): a new recipe flag appears here by its declaration alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from diffuseq.config.fields import recipe_fields
from diffuseq.config.sections import SECTIONS
from diffuseq.errors import ConfigError

__all__ = ["model_card", "read_evaluation", "summarize_evaluation"]

# (section, field, --flag) of the recipe table, in this order: the fields declared
# ``recipe=True`` (config/sections.py).
_RECIPE = recipe_fields(SECTIONS)
# The Hub's model-card metadata (the YAML header).
_CARD_DATA = ModelCardData(
    library_name="diffuseq",
    pipeline_tag="text2text-generation",
    tags=["diffuseq", "diffusion", "text-generation", "seq2seq"],
)
_METRICS = (
    ("avg_bleu", "BLEU"),
    ("avg_rouge_l", "ROUGE-L"),
    ("bertscore", "BERTScore"),
    ("avg_dist1", "dist-1"),
    ("avg_len", "avg length"),
)


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """:func:`summarize_evaluation` of an ``eval_seq2seq.py --json`` report file.

    Raises:
        ConfigError: the file cannot be read or is not such a report.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--eval {path}: cannot read it as JSON ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("files"), list):
        raise ConfigError(f"--eval {path}: not a report of eval_seq2seq.py --json (no 'files')")
    return {"source": path.name, **summarize_evaluation(report)}


def _scores(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"label": block.get("label", "")} | {k: block.get(k) for k, _ in _METRICS}


def summarize_evaluation(report: Mapping[str, Any]) -> dict[str, Any]:
    """The averages of an evaluation report (``EvalReport.to_json()``): per file, MBR, diversity."""
    mbr, diversity = report.get("mbr"), report.get("diversity")
    return {
        "files": [_scores(block) for block in report.get("files") or []],
        "mbr": _scores(mbr["scores"]) if isinstance(mbr, dict) and "scores" in mbr else None,
        "diversity": (
            {k: diversity.get(k) for k in ("avg_self_bleu", "avg_div4")}
            if isinstance(diversity, dict)
            else None
        ),
    }


def _value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _evaluation_section(evaluation: Mapping[str, Any] | None) -> list[str]:
    if not evaluation:
        return [
            "Unknown: no evaluation was recorded when this folder was written. Decode the test "
            "split and score it with `eval_seq2seq.py --json EVAL.json`, then "
            "`diffuseq-export RUN --eval EVAL.json --force` records the numbers here.",
        ]
    rows = list(evaluation.get("files") or [])
    if evaluation.get("mbr"):
        rows.append({**evaluation["mbr"], "label": "MBR"})
    lines = [f"From `{evaluation.get('source', 'an evaluation report')}`:", ""]
    lines.append("| outputs | " + " | ".join(name for _, name in _METRICS) + " |")
    lines.append("|---" * (len(_METRICS) + 1) + "|")
    for row in rows:
        label = Path(str(row.get("label", ""))).name or "–"
        lines.append(f"| {label} | " + " | ".join(_value(row.get(k)) for k, _ in _METRICS) + " |")
    diversity = evaluation.get("diversity")
    if diversity:
        lines += [
            "",
            f"Diversity over the candidates: self-BLEU {_value(diversity.get('avg_self_bleu'))}, "
            f"div-4 {_value(diversity.get('avg_div4'))}.",
        ]
    return lines


def _environment_line(launches: list[Mapping[str, Any]]) -> list[str]:
    if not launches:
        return []
    first = launches[0]
    packages = first.get("packages") or {}
    code = first.get("diffuseq") or {}
    host = first.get("host") or {}
    commit = code.get("git_commit")
    revision = f", git commit `{commit}`{' (with local changes)' if code.get('git_dirty') else ''}"
    return [
        "",
        f"Trained with diffuseq {code.get('version')}{revision if commit else ''}, Python "
        f"{(first.get('python') or {}).get('version')}, torch {packages.get('torch')}, "
        f"transformers {packages.get('transformers')} on {first.get('world_size')} process(es) "
        f"({host.get('gpu') or host.get('cpu') or first.get('device')}); see `environment.json`.",
    ]


def model_card(info: Mapping[str, Any], *, launches: list[Mapping[str, Any]] | None = None) -> str:
    """The ``README.md`` text for a model folder whose ``config.json`` content is ``info``
    (``launches``: the run's ``environment.json`` launches, if known)."""
    run = info["run_config"]
    model, diffusion, data, train = (run[k] for k in ("model", "diffusion", "data", "train"))
    checkpoint = info.get("checkpoint") or {}
    tokenizer = info.get("tokenizer") or {}
    v2 = model.get("learned_mean_embed") or diffusion.get("denoise")
    dataset = data.get("dataset") or "unknown"
    step = checkpoint.get("step")
    lines = [
        "---",
        _CARD_DATA.to_yaml(),
        "---",
        "",
        f"# DiffuSeq{'-v2' if v2 else ''} model: {dataset}",
        "",
        f"A sequence-to-sequence text diffusion model (DiffuSeq{'-v2' if v2 else ''}"
        f"{', self-conditioned' if model.get('self_cond') else ''}) trained with the diffuseq "
        "toolkit. Given a source text it generates a target text by denoising word embeddings.",
        "",
        "## Task and data",
        "",
        f"- dataset: `{dataset}` (data folder `{Path(str(data.get('data_dir') or '')).name or '?'}`)",
        f"- sequence layout: `[CLS] source [SEP] [SEP] [CLS] target [SEP] [PAD]…`, "
        f"{data.get('seq_len')} tokens in all",
        f"- tokenizer: {tokenizer.get('kind', '?')}, {tokenizer.get('vocab_size', '?')} tokens "
        "(its files are in this folder)",
        "",
        "## Recipe",
        "",
        "| flag | value |",
        "|---|---|",
        *(f"| `{flag}` | {_value(run[s].get(f))} |" for s, f, flag in _RECIPE if f in run[s]),
        "",
        "The whole run configuration is `run_config` in `config.json`.",
        "",
        "## Training",
        "",
        (
            f"{step} of {train.get('learning_steps')} optimizer steps"
            if step is not None
            else "Training steps: unknown (the checkpoint's name gives none)"
        )
        + f"; weights: `{checkpoint.get('file', '?')}`"
        + (f" (EMA rate {checkpoint['ema_rate']})" if checkpoint.get("ema_rate") else "")
        + f" of run `{checkpoint.get('run', '?')}`.",
        *_environment_line(launches or []),
        "",
        "## Evaluation",
        "",
        *_evaluation_section(info.get("evaluation")),
        "",
        "## Use",
        "",
        "Offline, with diffuseq installed (its `[decode]` extra for DPM-Solver++):",
        "",
        "```python",
        "from diffuseq import api",
        "",
        'gen = api.load("path/to/this/folder")  # or api.TextGenerator.from_pretrained(...)',
        'gen.generate(["how old are you ?"], steps=10, sampler="dpm-solver++", num_samples=3)',
        "```",
        "",
        "`TextGenerator.from_pretrained` also takes a Hub repository id once the repository is "
        "in the local Hugging Face cache (`hf download USER/REPO`); nothing is downloaded at "
        "run time. The outputs equal those of decoding the EMA file above with the same "
        "settings and seed.",
        "",
        "## Share on the Hugging Face Hub",
        "",
        "```bash",
        "hf auth login",
        "hf upload USER/REPO path/to/this/folder .",
        "```",
        "",
        'or from Python: `huggingface_hub.upload_folder(repo_id="USER/REPO", '
        'folder_path="path/to/this/folder", repo_type="model")`.',
        "",
    ]
    return "\n".join(lines)

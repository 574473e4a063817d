"""Tables, target checks and the plot of the time-to-quality benchmark (:mod:`bench.bench_quality`).

Reads ``OUT/results/*.json`` (one per task × recipe × seed) and writes a markdown report and a
PNG of BLEU against training steps. "BLEU" below is the average sentence BLEU (the evaluator's
definition) of the seed-101 candidate of 10-step DPM-Solver++ unless a column says otherwise
(``dpmN``: N-step DPM-Solver++, ``sdeN``: N-step SDE-DPM-Solver++, ``--sampler
sde-dpm-solver++``; MBR-5: the MBR choice among 5 candidates); each cell shows the mean over
seeds and, in brackets, the seeds' values ("-": not decoded).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

RECIPE_ORDER = ("v1", "v1+sc", "v2", "v2+sc", "v1+nf", "v2+sc+nf")
MAIN = ("dpm10", "first", "bleu")  # decode, pick, metric of the headline BLEU


def load_results(out: Path) -> dict[tuple[str, str], list[dict]]:
    """(task, recipe) → that recipe's per-seed results, seeds in order."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in sorted((out / "results").glob("*.json")):
        result = json.loads(path.read_text())
        groups[result["task"], result["recipe"]].append(result)
    for results in groups.values():
        results.sort(key=lambda r: r["seed"])
    return dict(groups)


def values(results: list[dict], step: int, decode: str, pick: str, metric: str) -> list[float]:
    """The metric of every seed at ``step`` (seeds lacking that decode are left out)."""
    found = []
    for result in results:
        for point in result["checkpoints"]:
            if point["step"] == step and decode in point:
                found.append(point[decode][pick][metric])
    return found


def steps_of(results: list[dict]) -> list[int]:
    return sorted({p["step"] for r in results for p in r["checkpoints"]})


def cell(found: list[float]) -> str:
    if not found:
        return "-"
    return f"{statistics.fmean(found):.3f} ({' / '.join(f'{v:.3f}' for v in found)})"


def mean(found: list[float]) -> float:
    return statistics.fmean(found) if found else float("nan")


def spread(found: list[float]) -> float:
    return max(found) - min(found) if len(found) > 1 else 0.0


def task_table(task: str, groups: dict) -> list[str]:
    recipes = [r for r in RECIPE_ORDER if (task, r) in groups]
    lines = [
        "| recipe | step | train s | BLEU dpm10 | MBR-5 dpm10 | ROUGE-L | exact | BLEU dpm4 "
        "| MBR-5 dpm4 | BLEU sde10 | BLEU sde4 | MBR-5 sde4 | BLEU ancestral T |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe in recipes:
        results = groups[task, recipe]
        for step in steps_of(results):
            seconds = [
                p["train_seconds"] for r in results for p in r["checkpoints"] if p["step"] == step
            ]
            row = [
                recipe, str(step), f"{mean(seconds):.0f}",
                cell(values(results, step, "dpm10", "first", "bleu")),
                cell(values(results, step, "dpm10", "mbr", "bleu")),
                cell(values(results, step, "dpm10", "first", "rouge_l")),
                cell(values(results, step, "dpm10", "first", "exact")),
                cell(values(results, step, "dpm4", "first", "bleu")),
                cell(values(results, step, "dpm4", "mbr", "bleu")),
                cell(values(results, step, "sde10", "first", "bleu")),
                cell(values(results, step, "sde4", "first", "bleu")),
                cell(values(results, step, "sde4", "mbr", "bleu")),
                cell(values(results, step, "ancestral", "first", "bleu")),
            ]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    return lines


def best_recipe(task: str, groups: dict) -> str | None:
    """The recipe with the highest mean headline BLEU at the last step (v1 excluded)."""
    scored = []
    for recipe in RECIPE_ORDER[1:]:
        if (task, recipe) in groups:
            results = groups[task, recipe]
            scored.append((mean(values(results, steps_of(results)[-1], *MAIN)), recipe))
    return max(scored)[1] if scored else None


def target_lines(groups: dict) -> list[str]:
    """The issue's targets, checked on the results (met or missed, by how much)."""
    lines = []
    for task in sorted({t for t, _ in groups}):
        if (task, "v1") not in groups:
            continue
        best = best_recipe(task, groups)
        if best is None:
            continue
        base, top = groups[task, "v1"], groups[task, best]
        steps = [s for s in steps_of(base) if s in steps_of(top)]
        final = steps[-1]
        v1_final = mean(values(base, final, *MAIN))
        lines.append(f"**{task}** (best recipe by final BLEU: `{best}`)")
        lines.append("")
        reach = next((s for s in steps if mean(values(top, s, *MAIN)) >= v1_final), None)
        lines.append(
            f"- v1's final BLEU ({v1_final:.3f} at step {final}) is reached by `{best}` "
            + (
                f"at step {reach} = {reach / final:.2f} of v1's steps (target ≤ 0.33: "
                f"{'met' if reach / final <= 1 / 3 + 1e-9 else 'missed'})."
                if reach is not None
                else "at no measured step (target ≤ 1/3 of the steps: missed)."
            )
        )
        for step in steps:
            a, b = values(base, step, *MAIN), values(top, step, *MAIN)
            gap, noise = mean(b) - mean(a), max(spread(a), spread(b))
            verdict = "met" if gap >= 0.05 and gap > noise else "missed"
            lines.append(
                f"- step {step}: `{best}` − v1 = {gap:+.3f} BLEU (seed spread {noise:.3f}; "
                f"target ≥ +0.05 and beyond the spread: {verdict})."
            )
        anc = values(top, final, "ancestral", "first", "bleu")
        for decode, name in (("dpm4", "DPM-Solver++"), ("sde4", "SDE-DPM-Solver++")):
            few = values(top, final, decode, "first", "bleu")
            if not anc or not few:
                continue
            diff = mean(few) - mean(anc)
            lines.append(
                f"- `{best}` at step {final}: 4-step {name} {mean(few):.3f} vs "
                f"{top[0]['checkpoints'][-1]['ancestral']['steps']}-step ancestral {mean(anc):.3f}: "
                f"{diff:+.3f} (target within 0.02: {'met' if diff >= -0.02 else 'missed'})."
            )
        copy = top[0]["checkpoints"][-1]["dpm10"]["copy_bleu"]
        lines.append(f"- copying the source scores {copy:.3f} BLEU on this test split.")
        lines.append("")
    return lines


def plot(groups: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for t, _ in groups})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for recipe in RECIPE_ORDER:
            if (task, recipe) not in groups:
                continue
            results = groups[task, recipe]
            steps = steps_of(results)
            line = ax.plot(steps, [mean(values(results, s, *MAIN)) for s in steps], marker="o",
                           label=recipe)[0]  # fmt: skip
            for s in steps:
                found = values(results, s, *MAIN)
                ax.scatter([s] * len(found), found, color=line.get_color(), s=10, alpha=0.5)
        any_result = next(v for (t, _), v in groups.items() if t == task)[0]
        copy = any_result["checkpoints"][-1]["dpm10"]["copy_bleu"]
        ax.axhline(copy, color="grey", linestyle=":", label="copy source")
        ax.set(title=f"{task}: BLEU (DPM-Solver++ 10 steps)", xlabel="training steps",
               ylabel="sentence BLEU")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(
    out: Path, md: Path, png: Path, report_command: str = "python -m bench.bench_quality report"
) -> int:
    groups = load_results(out)
    if not groups:
        print(f"no results in {out / 'results'}")
        return 1
    history = out / "command.txt"
    commands = history.read_text().split("\n") if history.exists() else []
    command = "`, `".join(c for c in commands if c.strip()) or "?"
    lines = [
        "# Time-to-quality benchmark: the original's recipes, self-conditioning, the noise floor",
        "",
        f"Commands: `{command}`, then `{report_command}`.",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        "## Targets",
        "",
        *target_lines(groups),
    ]
    for task in sorted({t for t, _ in groups}):
        example = next(iter(v for (t, _), v in groups.items() if t == task))[0]
        lines += ["", f"## {task} ({example['test_examples']} test examples)", ""]
        lines += task_table(task, groups)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {md}")
    plot(groups, png)
    print(f"wrote {png}")
    return 0

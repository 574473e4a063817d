"""Tables, target checks and the plot of the time-to-quality benchmark (:mod:`bench.bench_quality`).

Reads ``OUT/results/*.json`` (one per task × recipe × seed) and writes a markdown report and a
PNG of BLEU against training steps. "BLEU" is the average sentence BLEU (the evaluator's
definition) of candidate 0 (seed 101) of each recipe's default decode: 10-step DPM-Solver++ for
the Gaussian recipes (``dpmN``: N-step DPM-Solver++, ``sdeN``: N-step SDE-DPM-Solver++), greedy
search for the AR baseline (``beam5``: 5-beam search, its 5 candidates), 10-step RDM decoding for
RDM (``rdmN``: N steps); MBR-5 is the MBR choice among 5 candidates, self-BLEU and div-4 the
diversity of those 5 (the evaluator's definitions). Each cell shows the mean over seeds and, in
brackets, the seeds' values ("-": not decoded). Training seconds are wall-clock on a shared
machine: compare them only within one run (all units ran side by side), not across runs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from bench.bench_quality import RECIPE_FAMILY, RECIPES

#: Report order: the Gaussian recipes in ``RECIPES`` order, then the other families.
RECIPE_ORDER = (
    *[r for r in RECIPES if r not in RECIPE_FAMILY],
    *[r for r in RECIPES if r in RECIPE_FAMILY],
)
MAIN = ("dpm10", "first", "bleu")  # decode, pick, metric of the headline BLEU
#: The headline decode of each recipe (its family's default: 10-step DPM-Solver++ for the
#: Gaussian recipes, greedy search for the AR baseline, 10-step RDM decoding for RDM) and the
#: decode whose 5 candidates give MBR-5 and the candidate set's diversity.
HEADLINE = {"ar": ("greedy", "beam5"), "rdm": ("rdm10", "rdm10")}
DEFAULT_HEADLINE = ("dpm10", "dpm10")
GAUSSIAN = tuple(r for r in RECIPES if r not in RECIPE_FAMILY)  # v1 first


def headline(recipe: str) -> tuple[str, str]:
    return HEADLINE.get(recipe, DEFAULT_HEADLINE)


def main_values(results: list[dict], step: int, recipe: str) -> list[float]:
    """The headline BLEU of every seed of ``recipe`` at ``step``."""
    return values(results, step, headline(recipe)[0], "first", "bleu")


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


def seconds_at(results: list[dict], step: int) -> list[float]:
    return [p["train_seconds"] for r in results for p in r["checkpoints"] if p["step"] == step]


def extra(results: list[dict], step: int, decode: str, key: str) -> list[float]:
    """A per-decode number (``self_bleu``, ``div4``, ``model_calls_per_sentence``) per seed."""
    return [
        p[decode][key]
        for r in results
        for p in r["checkpoints"]
        if p["step"] == step and decode in p and key in p[decode]
    ]


def family_table(task: str, groups: dict) -> list[str]:
    """Every recipe side by side on its family's default decode (BLEU of candidate 0, MBR-5,
    exact match, the 5 candidates' self-BLEU and div-4, model calls per sentence)."""
    lines = [
        "| recipe | decode | step | train s | BLEU | MBR-5 | ROUGE-L | exact | self-BLEU (5 cand.) "
        "| div-4 (5 cand.) | model calls / sentence |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe in [r for r in RECIPE_ORDER if (task, r) in groups]:
        results = groups[task, recipe]
        first, many = headline(recipe)
        for step in steps_of(results):
            calls = extra(results, step, first, "model_calls_per_sentence")
            row = [
                recipe, f"{first} / {many}", str(step), f"{mean(seconds_at(results, step)):.0f}",
                cell(values(results, step, first, "first", "bleu")),
                cell(values(results, step, many, "mbr", "bleu")),
                cell(values(results, step, first, "first", "rouge_l")),
                cell(values(results, step, first, "first", "exact")),
                cell(extra(results, step, many, "self_bleu")),
                cell(extra(results, step, many, "div4")),
                f"{mean(calls):.1f}" if calls else "-",
            ]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    return lines


def rdm_steps_table(task: str, groups: dict) -> list[str]:
    """RDM's BLEU against its decoding steps (1/2/4/10/25) at every checkpoint."""
    if (task, "rdm") not in groups:
        return []
    results = groups[task, "rdm"]
    names = sorted(
        {k for r in results for p in r["checkpoints"] for k in p if k.startswith("rdm")},
        key=lambda k: int(k[3:]),
    )
    lines = [
        "| step | " + " | ".join(f"BLEU {n} (MBR-5)" for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for step in steps_of(results):
        cells = [
            f"{mean(values(results, step, n, 'first', 'bleu')):.3f} "
            f"({mean(values(results, step, n, 'mbr', 'bleu')):.3f})"
            for n in names
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def family_targets(groups: dict) -> list[str]:
    """Issue 22/23 targets against the AR baseline: steps and seconds to reach the AR
    baseline's 1000-step BLEU (or 0.9) and the ratio; diversity; RDM's few-step decodes."""
    lines = []
    for task in sorted({t for t, _ in groups}):
        if (task, "ar") not in groups:
            continue
        ar = groups[task, "ar"]
        ar_steps = steps_of(ar)
        ref_step = 1000 if 1000 in ar_steps else ar_steps[0]
        bar = min(0.9, mean(main_values(ar, ref_step, "ar")))
        lines += [f"**{task}**: the AR baseline's BLEU at step {ref_step} is "
                  f"{mean(main_values(ar, ref_step, 'ar')):.3f}; bar = min(0.9, that) = {bar:.3f}.", ""]  # fmt: skip

        def reach(recipe: str) -> tuple[int | None, float | None]:
            results = groups[task, recipe]
            for step in steps_of(results):
                if mean(main_values(results, step, recipe)) >= bar:
                    return step, mean(seconds_at(results, step))
            return None, None

        ar_step, ar_seconds = reach("ar")
        for recipe in [r for r in RECIPE_ORDER if (task, r) in groups]:
            step, seconds = reach(recipe)
            if step is None:
                last = steps_of(groups[task, recipe])[-1]
                best = mean(main_values(groups[task, recipe], last, recipe))
                lines.append(f"- `{recipe}`: not reached by step {last} (BLEU {best:.3f} there).")
            else:
                ratio = (
                    f" = {step / ar_step:.1f}× the AR baseline's steps, "
                    f"{seconds / ar_seconds:.1f}× its seconds"
                    if ar_step
                    else ""
                )
                lines.append(f"- `{recipe}`: reached at step {step} ({seconds:.0f} s){ratio}.")
        last = ar_steps[-1]
        ar_div = mean(extra(ar, last, headline("ar")[1], "div4"))
        for recipe in [r for r in RECIPE_ORDER if (task, r) in groups and r != "ar"]:
            results = groups[task, recipe]
            final = steps_of(results)[-1]
            div = mean(extra(results, final, headline(recipe)[1], "div4"))
            if math.isnan(div):  # units from before diversity was measured
                lines.append(f"- diversity at the last step: `{recipe}` not measured.")
                continue
            lines.append(
                f"- diversity at the last step: `{recipe}` div-4 {div:.3f} vs the AR baseline's "
                f"5 beams {ar_div:.3f} ({'higher' if div > ar_div else 'not higher'})."
            )
        if (task, "rdm") in groups:
            rdm = groups[task, "rdm"]
            final = steps_of(rdm)[-1]
            b = {n: mean(values(rdm, final, f"rdm{n}", "first", "bleu")) for n in (4, 10, 25)}
            lines.append(
                f"- RDM at step {final}: 10-step decode {b[10]:.3f} vs 25-step {b[25]:.3f} "
                f"({b[10] - b[25]:+.3f}; target within 0.01 of the many-step decode: "
                f"{'met' if abs(b[10] - b[25]) <= 0.01 else 'missed'}), 4-step {b[4]:.3f} "
                f"({b[4] - b[25]:+.3f}; target within 0.03: "
                f"{'met' if abs(b[4] - b[25]) <= 0.03 else 'missed'})."
            )
        lines.append("")
    return lines


def task_table(task: str, groups: dict) -> list[str]:
    recipes = [r for r in GAUSSIAN if (task, r) in groups]
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
    for recipe in GAUSSIAN[1:]:
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
            line = ax.plot(steps, [mean(main_values(results, s, recipe)) for s in steps],
                           marker="o", label=f"{recipe} ({headline(recipe)[0]})")[0]  # fmt: skip
            for s in steps:
                found = main_values(results, s, recipe)
                ax.scatter([s] * len(found), found, color=line.get_color(), s=10, alpha=0.5)
        any_result = next(v for (t, _), v in groups.items() if t == task)[0]
        last = any_result["checkpoints"][-1]
        copy = next(d["copy_bleu"] for d in last.values() if isinstance(d, dict))
        ax.axhline(copy, color="grey", linestyle=":", label="copy source")
        ax.set(title=f"{task}: BLEU (each family's default decode)", xlabel="training steps",
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
        "# Time-to-quality benchmark: DiffuSeq's recipes, RDM and the autoregressive baseline",
        "",
        f"Commands: `{command}`, then `{report_command}`.",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        "## Targets: the families against the AR baseline of the same size",
        "",
        *family_targets(groups),
        "## Targets: the Gaussian recipes against v1",
        "",
        *target_lines(groups),
    ]
    for task in sorted({t for t, _ in groups}):
        example = next(iter(v for (t, _), v in groups.items() if t == task))[0]
        lines += ["", f"## {task} ({example['test_examples']} test examples)", ""]
        lines += ["### Every recipe on its family's default decode", ""]
        lines += family_table(task, groups)
        if (task, "rdm") in groups:
            lines += ["", "### RDM: BLEU against decoding steps (MBR-5 in brackets)", ""]
            lines += rdm_steps_table(task, groups)
        if any((task, r) in groups for r in GAUSSIAN):
            lines += ["", "### The Gaussian recipes' decodes", ""]
            lines += task_table(task, groups)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {md}")
    plot(groups, png)
    print(f"wrote {png}")
    return 0

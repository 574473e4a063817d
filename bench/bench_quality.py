"""Time-to-quality benchmark: BLEU against training steps for the original's recipes and ours.

For each task × recipe × seed (a *unit*), one training run of a small model (the demo's width:
2 layers × 128, seq_len 48) through the Python training API (:func:`diffuseq.training.train`,
what ``run_train.py`` runs), checkpoints at several steps, and for each checkpoint a decode of
the test split (:mod:`diffuseq.decoding.api`), scored with this toolkit's evaluator:

* DPM-Solver++ with 10 and 4 steps, 5 candidates each (seeds 101..105): the BLEU of the seed-101
  candidate and of the MBR choice among the 5 (``diffuseq.evaluation.metrics.mbr_select``);
* the same with its SDE form (``--sampler sde-dpm-solver++``: fresh noise at every step);
* full 2000-step ancestral sampling (the original's decoder, 1 candidate) at the last checkpoint
  of the synthetic task (``--qqp_ancestral`` adds it on QQP, where rounding over the 30522-word
  BERT vocab makes it slow on a CPU).

Tasks (:mod:`bench.quality_tasks`): ``clauses`` (synthetic) and ``qqp`` (the shared 2047 QQP
pairs). Recipes (same model, data, seeds): ``v1`` (the original DiffuSeq), ``v1+sc``
(self-conditioning), ``v2`` (DiffuSeq-v2: learned mean embedding + discrete noise 0.5),
``v2+sc``, ``v1+nf`` (DINOISER's noise floor: training draws t ≥ 0.3·T and the network is
told at least 0.3·T when sampling), ``v2+sc+nf`` (all three), ``v1+anchor`` (Difformer's
anchor loss + embedding LayerNorm + noise rescaling F = 4) and ``v1+anchor-only`` (the anchor
loss alone). The EMA rate is 0.99 for every recipe: with the paper's 0.9999 (tuned for 50k+ steps)
an EMA of a 3000-step run still holds most of the random initialisation.

Each unit runs in its own process with one torch thread (``--jobs`` of them at a time) and
writes ``OUT/results/<task>-<recipe>-<seed>.json`` as soon as it is done; a rerun of
the same command skips finished units, so an interrupted benchmark resumes; a decode added to
the benchmark later is filled into finished results from the run's kept checkpoints. ``report`` turns the
results into ``bench/results_quality.md`` and ``bench/quality_bleu_vs_steps.png``
(:mod:`bench.quality_report`).

Usage (from the repository root; about 1.5 h on a 2-core CPU with 2 jobs)::

    python -m bench.bench_quality run --jobs 2                # all tasks, recipes, 2 seeds
    python -m bench.bench_quality report                      # tables + plot from the results
    python -m bench.bench_quality run --quick --out /tmp/q    # smoke test: tiny sizes, 1 seed
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench import quality_tasks

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "quality"
RECIPES = {
    "v1": [],
    "v1+sc": ["--self_cond", "true"],
    "v2": ["--learned_mean_embed", "true", "--denoise", "true", "--denoise_rate", "0.5"],
    "v2+sc": [
        "--learned_mean_embed", "true", "--denoise", "true", "--denoise_rate", "0.5",
        "--self_cond", "true",
    ],
    "v1+nf": ["--noise_floor", "0.3"],
    "v2+sc+nf": [
        "--learned_mean_embed", "true", "--denoise", "true", "--denoise_rate", "0.5",
        "--self_cond", "true", "--noise_floor", "0.3",
    ],
    # Difformer (Gao et al. 2022): its full recipe (anchor loss + embedding LayerNorm + noise
    # rescaling by F = 4, the factor of its QQP script) and the anchor loss alone
    "v1+anchor": [
        "--anchor_loss", "true", "--embedding_norm", "true", "--noise_rescale", "4",
    ],
    "v1+anchor-only": ["--anchor_loss", "true"],
    "v1+embnorm": ["--embedding_norm", "true"],  # Difformer's parts apart
    "v1+rescale": ["--noise_rescale", "4"],
    # length prediction (Difformer §3, DINOISER Table 3): padding kept clean, 3 lengths decoded
    "v1+len": ["--length_predict", "true"],
    # SeqDiffuSeq's adaptive noise schedule (sequence-level), refitted every 500 updates
    "v1+adapt": ["--adaptive_schedule", "500"],
    "v1+len+adapt": ["--length_predict", "true", "--adaptive_schedule", "500"],
    # the autoregressive baseline of the same size (BART layers, the split whose parameter
    # count is closest to the diffusion model's: 1+1 here) and RDM (the discrete family)
    "ar": ["--family", "ar"],
    "rdm": ["--family", "discrete", "--schedule_sampler", "uniform"],
}  # fmt: skip
#: The model family of a recipe (decodes differ per family).
RECIPE_FAMILY = {"ar": "ar", "rdm": "discrete"}
#: Decode options of a recipe's diffusion decodes (``DecodeConfig`` fields; none by default).
RECIPE_DECODE: dict[str, dict[str, int]] = {
    "v1+len": {"length_beam": 3},
    "v1+len+adapt": {"length_beam": 3},
}
#: The run config every unit shares (flag names, as ``RECIPES``); training runs on the CPU
#: without a progress bar or a model folder.
MODEL = {
    "config_name": "bert-base-uncased", "bert_hidden_size": 128, "num_layers": 2,
    "num_heads": 4, "intermediate_size": 512, "hidden_dim": 128, "hidden_t_dim": 128,
    "dropout": 0.1, "noise_schedule": "sqrt", "schedule_sampler": "lossaware", "lr": 0.001,
    "bsz": 64, "microbatch": 64, "ema_rate": "0.99", "seq_len": 48,
}  # fmt: skip
SEEDS = (102, 103)
CANDIDATES = 5
DPM_STEPS = (10, 4)
SDE_STEPS = (10, 4)  # SDE-DPM-Solver++ (``--sampler sde-dpm-solver++``), same candidates
RDM_STEPS = (1, 2, 4, 10, 25)  # RDM's adaptive decoding (the discrete family)


@dataclass(frozen=True)
class Task:
    """One benchmark task: where its data comes from and its training/decoding budget."""

    name: str
    eval_at: tuple[int, ...]  # training steps of the scored checkpoints
    diff_steps: int = 2000
    ancestral: bool = True  # T-step ancestral decode at the last checkpoint
    test_limit: int = 0  # 0: the whole test split
    sizes: dict[str, int] = field(default_factory=dict)  # generated split sizes (clauses)


def tasks(*, quick: bool, qqp_ancestral: bool, no_ancestral: bool = False) -> dict[str, Task]:
    """The tasks by name (``no_ancestral``: none decodes with T-step ancestral sampling)."""
    found = _tasks(quick=quick, qqp_ancestral=qqp_ancestral)
    if no_ancestral:
        return {name: replace(task, ancestral=False) for name, task in found.items()}
    return found


def _tasks(*, quick: bool, qqp_ancestral: bool) -> dict[str, Task]:
    if quick:
        small = {"train": 400, "valid": 16, "test": 16}
        return {
            "clauses": Task("clauses", (10, 20), diff_steps=50, test_limit=16, sizes=small),
            "sortcount": Task("sortcount", (10,), diff_steps=50, test_limit=8, sizes=small),
            "qqp": Task("qqp", (10,), diff_steps=50, ancestral=qqp_ancestral, test_limit=8),
        }
    return {
        "clauses": Task("clauses", (1000, 2000, 3000)),
        "sortcount": Task("sortcount", (500, 1000, 1500), ancestral=False),
        "qqp": Task("qqp", (500, 1000), ancestral=qqp_ancestral),
    }


def shared_dir() -> Path:
    return Path(os.environ.get("DIFFUSEQ_SHARED", REPO.parent / "shared"))


def prepare_data(task: Task, out: Path) -> tuple[Path, str]:
    """The task's data folder under ``OUT/data`` (made once) and its ``--vocab`` value."""
    folder = out / "data" / task.name
    makers = {"clauses": quality_tasks.make_clauses, "sortcount": quality_tasks.make_sortcount}
    if task.name in makers:
        if not (folder / "vocab.txt").exists():
            makers[task.name](folder, sizes=task.sizes or None)
        return folder, str(folder / "vocab.txt")
    qqp = shared_dir() / "data" / "qqp" / "valid.jsonl"
    if not qqp.exists():
        raise SystemExit(f"the qqp task needs {qqp} (set DIFFUSEQ_SHARED)")
    if not (folder / "vocab.txt").exists():
        quality_tasks.make_qqp(qqp, folder)
    return folder, str(folder / "vocab.txt")


# ----------------------------------------------------------------------------- one unit


def run_config(task: Task, recipe: str, seed: int, data: Path, vocab: str, run: Path):
    """The unit's :class:`~diffuseq.config.RunConfig`: ``MODEL`` < the recipe's flags < the
    task's data, budget and seed."""
    from diffuseq.config import RunConfig

    steps, interval = max(task.eval_at), min(task.eval_at)
    recipe_flags = RECIPES[recipe]
    unit = {
        "data_dir": str(data), "vocab": vocab, "diff_steps": task.diff_steps,
        "learning_steps": steps, "save_interval": interval, "eval_interval": interval,
        "log_interval": max(1, interval // 5), "seed": seed, "checkpoint_path": str(run),
    }  # fmt: skip
    layers = [
        (MODEL, "bench_quality.MODEL"),
        (dict(zip((f.removeprefix("--") for f in recipe_flags[::2]), recipe_flags[1::2])), recipe),
        (unit, "the unit"),
    ]
    return RunConfig.from_layers(*layers).validate()


def train(task: Task, recipe: str, seed: int, out: Path) -> tuple[Path, dict[int, float]]:
    """Train one unit in this process (skipped when it finished before); checkpoint → training
    seconds. Its log lines also go to ``OUT/logs/<unit>.train.log``."""
    from diffuseq.training import train as train_run

    data, vocab = prepare_data(task, out)
    run = out / "runs" / f"{task.name}-{recipe}-{seed}"
    timing = run / "bench_timing.json"
    if not timing.exists():
        config = run_config(task, recipe, seed, data, vocab, run)
        if run.exists():  # an interrupted training: its seconds would be wrong, start again
            shutil.rmtree(run)
        log = out / "logs" / f"{run.name}.train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logging.getLogger("diffuseq").addHandler(handler)
        start = time.time()
        try:
            result = train_run(config, device="cpu", progress=False, export_model=False)
        finally:
            logging.getLogger("diffuseq").removeHandler(handler)
            handler.close()
        with open(log, "a") as handle:
            handle.write(f"finished at step {result.step}; run folder {result.run_dir}\n")
        seconds = {
            int(p.stem.rsplit("_", 1)[1]): p.stat().st_mtime - start for p in run.glob("ema_*.pt")
        }
        timing.write_text(json.dumps(seconds))
    seconds = {int(k): v for k, v in json.loads(timing.read_text()).items()}
    return run, seconds


def score(records: list[list[dict]], special_tokens: dict[str, str]) -> dict:
    """Scores of candidate 0 and of the MBR choice; records[i][k] as ``generate_raw`` returns."""
    from diffuseq.evaluation import metrics
    from diffuseq.evaluation.job import SpecialTokens, clean_example, score_diversity

    tokens = SpecialTokens(**{k: special_tokens[k] for k in ("sos", "eos", "sep", "pad")})
    cleaned = [[clean_example(r, tokens) for r in per_source] for per_source in records]
    refs = [c[0].reference for c in cleaned]
    result = {}
    picks = {"first": [c[0].recover for c in cleaned]}
    if len(cleaned[0]) > 1:
        groups = [[e.recover for e in c] for c in cleaned]
        matrices = metrics.pairwise_bleu_many(groups)
        picks["mbr"] = [c[metrics.mbr_select(m)].recover for c, m in zip(cleaned, matrices)]
        diversity = score_diversity(groups, matrices)  # of the candidate set (evaluator's)
        result["self_bleu"], result["div4"] = diversity.avg_self_bleu, diversity.avg_div4
    for name, hyps in picks.items():
        result[name] = {
            "bleu": statistics.fmean(metrics.sentence_bleu_many(hyps, refs)),
            "rouge_l": statistics.fmean(metrics.rouge_l_many(hyps, refs)),
            "exact": statistics.fmean(float(h == r) for h, r in zip(hyps, refs)),
            "tokens": statistics.fmean(len(h.split()) for h in hyps),
        }
    result["copy_bleu"] = statistics.fmean(
        metrics.sentence_bleu_many([c[0].source for c in cleaned], refs)
    )
    return result


def decode_settings(
    T: int, *, ancestral: bool, family: str = "gaussian"
) -> list[tuple[str, str, int, int]]:
    """``(name, sampler, steps, candidates)`` of every decode of one checkpoint."""
    if family == "ar":  # greedy search; beam search with 5 beams as the 5 candidates
        return [("greedy", "greedy", 1, 1), ("beam5", "beam", CANDIDATES, CANDIDATES)]
    if family == "discrete":
        return [(f"rdm{n}", "rdm", n, CANDIDATES) for n in RDM_STEPS]
    settings = [(f"dpm{n}", "dpm-solver++", n, CANDIDATES) for n in DPM_STEPS]
    settings += [(f"sde{n}", "sde-dpm-solver++", n, CANDIDATES) for n in SDE_STEPS]
    return settings + ([("ancestral", "ancestral", T, 1)] if ancestral else [])


def decode_checkpoint(
    checkpoint: Path,
    pairs: list,
    *,
    ancestral: bool,
    skip: frozenset[str] = frozenset(),
    options: dict | None = None,
) -> dict:
    """Decodes of one checkpoint not named in ``skip``: ``{"dpm10": {...}, "sde4": {...}, ...}``;
    ``options`` (the recipe's :data:`RECIPE_DECODE`) are extra decode options of every decode."""
    options = options or {}
    from diffuseq.decoding import api

    generator = api.load(checkpoint, device="cpu")
    specials = generator.decoder.tokenizer.special_tokens
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    family = generator.decoder.family.name
    T = getattr(generator.decoder.diffusion, "num_timesteps", 0)
    results = {}
    for name, sampler, steps, k in decode_settings(T, ancestral=ancestral, family=family):
        if name in skip:
            continue
        start = time.perf_counter()
        records = generator.generate_raw(
            sources, references=references, sampler=sampler, steps=steps, num_samples=k,
            seed=101, **options,
        )  # fmt: skip
        scores = score(records, specials)
        # diffusion: one network call per step, candidate and decoded length (--length_beam)
        calls = steps * k * options.get("length_beam", 1)
        if family == "ar":  # one decoder call per generated token (+ [SEP]) and beam
            calls = (scores["first"]["tokens"] + 1) * k
        results[name] = {
            **scores,
            "sampler": sampler,
            "steps": steps,
            "candidates": k,
            "model_calls_per_sentence": calls,
            "decode_seconds": time.perf_counter() - start,
        }
    return results


def checkpoint_file(run: Path, step: int) -> Path:
    [checkpoint] = run.glob(f"ema_*_{step:06d}.pt")
    return checkpoint


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def add_missing_decodes(result: dict, run: Path, pairs: list, task: Task) -> bool:
    """Decode what a finished result lacks (a decode added to the benchmark after it ran) from
    the run's kept checkpoints; returns whether anything was added."""
    added = False
    for entry in result["checkpoints"]:
        last = entry["step"] == max(task.eval_at)
        family = RECIPE_FAMILY.get(result["recipe"], "gaussian")
        wanted = {
            n
            for n, *_ in decode_settings(
                task.diff_steps, ancestral=task.ancestral and last, family=family
            )
        }
        missing = wanted - set(entry)
        if missing and run.is_dir():
            entry.update(
                decode_checkpoint(
                    checkpoint_file(run, entry["step"]),
                    pairs,
                    ancestral=task.ancestral and last,
                    skip=frozenset(wanted - missing),
                    options=RECIPE_DECODE.get(result["recipe"]),
                )
            )
            added = True
    return added


def run_unit(task: Task, recipe: str, seed: int, out: Path) -> dict:
    """Train, decode and score one unit; writes and returns its result record.

    A finished unit is not redone; decodes its record lacks are added from the kept checkpoints.
    """
    path = out / "results" / f"{task.name}-{recipe}-{seed}.json"
    if path.exists():
        result = json.loads(path.read_text())
        if add_missing_decodes(result, out / "runs" / path.stem, test_pairs(out, task), task):
            write_result(path, result)
        return result
    run, seconds = train(task, recipe, seed, out)
    pairs = test_pairs(out, task)
    checkpoints = []
    for step in sorted(task.eval_at):
        last = step == max(task.eval_at)
        checkpoints.append(
            {
                "step": step,
                "train_seconds": seconds[step],
                **decode_checkpoint(
                    checkpoint_file(run, step),
                    test_pairs(out, task),
                    ancestral=task.ancestral and last,
                    options=RECIPE_DECODE.get(recipe),
                ),
            }
        )
    result = {
        "task": task.name,
        "recipe": recipe,
        "seed": seed,
        "flags": RECIPES[recipe],
        "decode_options": RECIPE_DECODE.get(recipe, {}),
        "test_examples": len(pairs),
        "checkpoints": checkpoints,
        "task_settings": asdict(task),
    }
    write_result(path, result)
    return result


def run_split(out: Path, task: Task, split: str) -> Path:
    return out / "data" / task.name / f"{split}.jsonl"


def test_pairs(out: Path, task: Task) -> list:
    """The decoded test sources and references (the first ``test_limit`` of the split)."""
    from diffuseq.data.dataset import read_pairs

    return read_pairs(run_split(out, task, "test"))[: task.test_limit or None]


# ----------------------------------------------------------------------------- driver


def unit_command(args: argparse.Namespace, task: str, recipe: str, seed: int) -> list[str]:
    flags = ["--quick"] if args.quick else []
    flags += ["--qqp_ancestral"] if args.qqp_ancestral else []
    flags += ["--no_ancestral"] if args.no_ancestral else []
    return [sys.executable, "-m", "bench.bench_quality", "unit", task, recipe, str(seed),
            "--out", str(args.out), *flags]  # fmt: skip


def run_all(args: argparse.Namespace) -> int:
    """Every unit, ``--jobs`` at a time, each in its own one-thread process."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_tasks = tasks(
        quick=args.quick, qqp_ancestral=args.qqp_ancestral, no_ancestral=args.no_ancestral
    )
    names = (
        args.tasks.split(",") if args.tasks else (["clauses"] if args.quick else list(all_tasks))
    )
    seeds = (
        [int(s) for s in args.seeds.split(",")] if args.seeds else SEEDS[: 1 if args.quick else 2]
    )
    recipes = args.recipes.split(",")
    for name in names:  # data once, before the parallel units
        prepare_data(all_tasks[name], out)
    command = "python -m bench.bench_quality " + " ".join(shlex.quote(a) for a in args.argv)
    history = out / "command.txt"  # every run command that wrote into OUT, first one first
    known = history.read_text().splitlines() if history.exists() else []
    if command not in known:
        history.write_text("\n".join([*known, command]) + "\n")
    units = [(t, r, s) for t in names for s in seeds for r in recipes]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def launch(unit: tuple[str, str, int]) -> int:
        log = out / "logs" / ("-".join(map(str, unit)) + ".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            code = subprocess.call(
                unit_command(args, *unit),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        print(f"{'done' if code == 0 else f'FAILED ({code}), see ' + str(log)}: {unit}", flush=True)
        return code

    with ThreadPoolExecutor(args.jobs) as pool:
        codes = list(pool.map(launch, units))
    return 1 if any(codes) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("run", "unit", "report"):
        p = sub.add_parser(mode)
        p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder")
        if mode == "report":
            p.add_argument("--md", default=str(REPO / "bench" / "results_quality.md"))
            p.add_argument("--png", default=str(REPO / "bench" / "quality_bleu_vs_steps.png"))
            continue
        p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
        p.add_argument("--qqp_ancestral", action="store_true", help="T-step ancestral on qqp too")
        p.add_argument(
            "--no_ancestral",
            action="store_true",
            help="no T-step ancestral decode on any task (it is most of a unit's decode time)",
        )
        if mode == "unit":
            p.add_argument("task")
            p.add_argument("recipe", choices=list(RECIPES))
            p.add_argument("seed", type=int)
        else:
            p.add_argument("--jobs", type=int, default=2, help="units at a time")
            p.add_argument("--tasks", default="", help="comma-separated (default: all)")
            p.add_argument("--recipes", default=",".join(RECIPES))
            p.add_argument("--seeds", default="", help="comma-separated (default 102,103)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.mode == "report":
        from bench import quality_report

        command = "python -m bench.bench_quality " + " ".join(shlex.quote(a) for a in argv)
        return quality_report.main(Path(args.out), Path(args.md), Path(args.png), command)
    if args.mode == "unit":
        import torch

        torch.set_num_threads(1)
        task = tasks(
            quick=args.quick, qqp_ancestral=args.qqp_ancestral, no_ancestral=args.no_ancestral
        )[args.task]
        run_unit(task, args.recipe, args.seed, Path(args.out))
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())

"""``diffuseq-plot RUN`` (diffuseq/cli/plot.py) and bench/plots.py's default output folder."""

from __future__ import annotations

import json
import sys

import pytest

from bench import plots as bench_plots
from diffuseq.cli.plot import main

pytest.importorskip("matplotlib")


def _metrics(folder, *, quartiles=True):
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for step in range(0, 40, 10):
        record = {"step": step, "loss": 1.0 / (step + 1), "mse": 0.9 / (step + 1)}
        if quartiles:
            record.update({f"loss_q{q}": (q + 1) / (step + 1) for q in range(4)})
        records.append(record)
        records.append({"step": step, "eval_loss": 1.2 / (step + 1)})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_a_run_folder(tmp_path, capsys):
    run = _metrics(tmp_path / "run")
    assert main([str(run)]) == 0
    assert _is_png(run / "loss.png")
    out = capsys.readouterr().out
    assert "loss_q0" in out and "loss_q3" in out and "eval_loss" in out
    assert main([str(run / "metrics.jsonl"), "--out", str(tmp_path / "mine.png")]) == 0
    assert _is_png(tmp_path / "mine.png")


def test_without_quartiles(tmp_path):
    run = _metrics(tmp_path / "run", quartiles=False)
    assert main([str(run)]) == 0 and _is_png(run / "loss.png")


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda p: p, "holds no metrics.jsonl"),
        (lambda p: p / "missing", "neither a run folder nor a metrics.jsonl"),
        (lambda p: (p / "metrics.jsonl").write_text("{oops\n") and p, "line 1: not JSON"),
        (lambda p: (p / "metrics.jsonl").write_text('{"step": 1}\n') and p, "no record with"),
    ],
)
def test_clean_errors(tmp_path, capsys, setup, needle):
    assert main([str(setup(tmp_path))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert needle in err and "Traceback" not in err


def test_missing_matplotlib_is_a_clean_error(tmp_path, capsys, monkeypatch):
    run = _metrics(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([str(run)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_bench_plots_default_output_is_not_the_committed_files(tmp_path, monkeypatch):
    # the default lies in the git-ignored scratch folder, never the committed bench/*.png
    assert bench_plots.DEFAULT_OUTDIR.relative_to(bench_plots.BENCH / "out")
    committed = {p: p.stat().st_mtime_ns for p in bench_plots.BENCH.glob("*.png")}
    outdir = tmp_path / "plots"
    monkeypatch.setattr(bench_plots, "DEFAULT_OUTDIR", outdir)  # read when main() runs
    metrics = _metrics(tmp_path / "run") / "metrics.jsonl"
    args = ["--train", "", "--model", "", "--decode", "", "--metrics", str(metrics)]
    assert bench_plots.main(args) == 0
    assert _is_png(outdir / "demo_loss_curve.png")
    assert {p: p.stat().st_mtime_ns for p in bench_plots.BENCH.glob("*.png")} == committed

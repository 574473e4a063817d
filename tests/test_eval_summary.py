"""``eval_seq2seq.py --summary``: one table across seed files, the MBR row, and the candidate
set's diversity also with ``--mbr``; without the flag the printed lines are the original's."""

from __future__ import annotations

import json

import pytest

from diffuseq.evaluation import job as evaluation
from tests.test_eval_cli import _run, _value, folder  # noqa: F401  (fixture)


def test_summary_table_is_mean_min_max_of_the_files(folder, capsys):  # noqa: F811
    code, plain, _ = _run(["--folder", str(folder)], capsys)
    assert code == 0 and "Summary over" not in plain  # off by default: the original's lines
    code, out, _ = _run(["--folder", str(folder), "--summary"], capsys)
    assert code == 0 and out.startswith(plain)  # the original's lines first, unchanged
    bleus = [float(line.split()[-1]) for line in plain.splitlines() if "avg BLEU" in line]
    assert len(bleus) == 2
    row = next(line for line in out.splitlines() if line.startswith("BLEU "))
    mean, low, high = (float(v) for v in row.split()[1:])
    assert (mean, low, high) == pytest.approx(
        (sum(bleus) / 2, min(bleus), max(bleus)), abs=5e-5
    )  # printed with 4 decimals
    assert "Summary over 2 file(s)" in out and "candidate set: selfBleu" in out
    assert float(_value(plain, "avg selfBleu score")) == pytest.approx(
        float(out.split("selfBleu ")[-1].split(",")[0]), abs=5e-5
    )


def test_mbr_keeps_the_candidate_diversity(folder, tmp_path, capsys):  # noqa: F811
    files = [evaluation.read_decode_file(str(p)) for p in sorted(folder.glob("seed*.json"))]
    plain = evaluation.evaluate(files, echo=lambda line: None)
    mbr = evaluation.evaluate(files, mbr=True, echo=lambda line: None)
    assert mbr.diversity == plain.diversity  # computed with --mbr too (not printed there)
    assert mbr.lines == evaluation.evaluate(files, mbr=True, echo=lambda line: None).lines
    row = mbr.summary["metrics"]["BLEU"]
    assert row["mbr"] == mbr.mbr.scores.avg_bleu
    assert row["min"] == min(b.avg_bleu for b in mbr.files)
    assert mbr.summary["diversity"]["div4"] == plain.diversity.avg_div4
    assert "BERTScore" not in mbr.summary["metrics"]  # not computed: not summarised
    out_json = tmp_path / "eval.json"
    code, out, _ = _run(
        ["--folder", str(folder), "--mbr", "--summary", "--json", str(out_json)], capsys
    )
    assert code == 0 and out.splitlines()[-1].startswith("candidate set: selfBleu")
    report = json.loads(out_json.read_text())
    assert report["summary"]["metrics"]["BLEU"]["mbr"] == pytest.approx(row["mbr"])
    assert report["summary"]["files"] == [str(p) for p in sorted(folder.glob("seed*.json"))]


def test_a_parent_folder_names_the_samples_folders_inside(folder, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "outputs" / "demo"
    for name in (
        "ema_0.9999_000100.pt.samples-dpm-solver++-10steps",
        "ema_0.9999_000200.pt.samples",
    ):
        (run / name).mkdir(parents=True)
    code, _, err = _run(["--folder", str(tmp_path / "outputs")], capsys)
    assert code == 2
    assert "ema_0.9999_000100.pt.samples-dpm-solver++-10steps" in err
    assert "ema_0.9999_000200.pt.samples" in err and "pass one of them to --folder" in err

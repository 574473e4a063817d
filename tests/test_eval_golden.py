"""G8: the original evaluator's printed numbers, per-line values and MBR choices (docs/original.md §7).

Every parameter (folder, file list, line count, expected strings) is read from the golden files.
The golden run replaced BERTScore by NaN, so we run with ``--no_bertscore`` and compare every
other printed line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffuseq.cli.evaluate import main
from diffuseq.evaluation import job as evaluation
from diffuseq.evaluation import metrics
from tests.conftest import require_pinned, skip_missing

TOL = 1e-12
BERTSCORE_LINE = "avg berscore"


@pytest.fixture(scope="module", autouse=True)
def _pinned_versions():
    """BLEU smoothing (nltk) and ROUGE-L (torchmetrics) differ between releases."""
    require_pinned("nltk", "torchmetrics")


@pytest.fixture(scope="module")
def g8(golden_dir: Path) -> dict:
    path = golden_dir / "g8_eval_expected.json"
    if not path.exists():
        skip_missing("g8_eval_expected.json not in the golden folder")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def g8_files(golden_dir: Path, g8: dict) -> list[evaluation.CandidateFile]:
    folder = golden_dir / g8["folder"]
    return [evaluation.read_decode_file(str(folder / name)) for name in g8["files_sorted"]]


def _expected_block(printed: dict, keys: list[str]) -> list[str]:
    return ["*" * 30] + [f"{key} {printed[key]}" for key in keys]


def _expected_stdout(g8: dict, *, mbr: bool) -> list[str]:
    file_keys = [
        "avg BLEU score",
        "avg ROUGE-L score",
        "avg berscore",
        "avg dist1 score",
        "avg len",
    ]
    lines = []
    for entry in g8["per_file"]:
        lines += [entry["printed"]["file"]] + _expected_block(entry["printed"], file_keys)
    if len(g8["per_file"]) > 1 and mbr:
        printed = g8["mbr"]["printed"]
        lines += ["*" * 30, "MBR...", "*" * 30] + _expected_block(printed, list(printed))
    elif len(g8["per_file"]) > 1:
        printed = g8["diversity"]["printed"]
        lines += ["*" * 30, "Compute diversity...", "*" * 30]
        lines += [f"{key} {value}" for key, value in printed.items()]
    return lines


def _without_bertscore(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith(BERTSCORE_LINE)]


@pytest.mark.parametrize("mbr", [False, True], ids=["diversity", "mbr"])
def test_printed_lines_match_golden(golden_dir, g8, mbr, monkeypatch, capsys):
    folder = Path(g8["folder"])
    monkeypatch.chdir(
        golden_dir / folder.parent
    )  # the golden run printed paths like samples/x.json
    argv = ["--folder", folder.name, "--no_bertscore", "--workers", "1"] + (
        ["--mbr"] if mbr else []
    )
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    expected = _expected_stdout(g8, mbr=mbr)
    assert _without_bertscore(out) == _without_bertscore(expected)
    assert [line for line in out if line.startswith(BERTSCORE_LINE)] == [
        "avg berscore skipped (--no_bertscore)"
    ] * (len(g8["per_file"]) + (mbr and len(g8["per_file"]) > 1))
    raw = (golden_dir / g8["stdout_files"]["mbr" if mbr else "plain"]).read_text().splitlines()
    assert _without_bertscore(out) == _without_bertscore(raw)


def _check_block(block: evaluation.BlockScores, lines: list[dict]) -> None:
    assert len(block.bleu) == len(lines)
    for i, line in enumerate(lines):
        assert block.bleu[i] == pytest.approx(line["bleu"], abs=TOL), i
        assert block.rouge_l[i] == pytest.approx(line["rouge_l"], abs=TOL), i
        assert block.dist1[i] == pytest.approx(line["dist1"], abs=TOL), i
        assert block.lengths[i] == line["len"], i


def test_per_line_values_match_golden(g8, g8_files):
    assert len(g8_files[0].examples) == g8["n_lines"]
    report = evaluation.evaluate(g8_files, echo=lambda line: None)
    for k, expected in enumerate(g8["per_line"]["per_file"]):
        cleaned = [(e.recover, e.reference, e.source) for e in g8_files[k].examples]
        keys = ("recover_clean", "reference_clean", "source_clean")
        assert cleaned == [tuple(line[key] for key in keys) for line in expected["lines"]]
        _check_block(report.files[k], expected["lines"])
        summary = g8["per_file"][k]
        assert report.files[k].avg_bleu == pytest.approx(summary["avg_bleu"], abs=TOL)
        assert report.files[k].avg_rouge_l == pytest.approx(summary["avg_rouge_l"], abs=TOL)
        assert report.files[k].avg_dist1 == pytest.approx(summary["avg_dist1"], abs=TOL)
        assert report.files[k].avg_len == pytest.approx(summary["avg_len"], abs=TOL)
    diversity = g8["per_line"]["diversity"]
    assert report.diversity.self_bleu == pytest.approx([d["self_bleu"] for d in diversity], abs=TOL)
    assert report.diversity.div4 == pytest.approx([d["div4"] for d in diversity], abs=TOL)
    assert report.diversity.avg_self_bleu == pytest.approx(
        g8["diversity"]["avg_self_bleu"], abs=TOL
    )
    assert report.diversity.avg_div4 == pytest.approx(g8["diversity"]["avg_div4"], abs=TOL)


def test_mbr_selection_matches_golden(g8, g8_files):
    report = evaluation.evaluate(g8_files, mbr=True, echo=lambda line: None)
    expected = g8["per_line"]["mbr"]
    assert report.mbr.selected_file_index == [line["selected_file_index"] for line in expected]
    for i, line in enumerate(expected):
        group = [f.examples[i].recover for f in g8_files]
        matrix = metrics.pairwise_bleu(group)
        for row, expected_row in zip(matrix, line["pairwise_bleu"], strict=True):
            assert row == pytest.approx(expected_row, abs=TOL), i
        chosen = report.mbr.examples[i]
        assert (chosen.recover, chosen.reference, chosen.source) == (
            line["recover_clean"],
            line["reference_clean"],
            line["source_clean"],
        )
        assert g8["files_sorted"][line["selected_file_index"]] == line["selected_file"]
    _check_block(report.mbr.scores, expected)
    assert report.mbr.scores.avg_bleu == pytest.approx(g8["mbr"]["avg_bleu"], abs=TOL)
    assert report.mbr.scores.avg_rouge_l == pytest.approx(g8["mbr"]["avg_rouge_l"], abs=TOL)
    assert report.mbr.scores.avg_dist1 == pytest.approx(g8["mbr"]["avg_dist1"], abs=TOL)
    assert report.mbr.scores.avg_len == pytest.approx(g8["mbr"]["avg_len_not_printed"], abs=TOL)


def test_reference_impl_agrees_on_golden(g8, g8_files):
    fast = evaluation.evaluate(g8_files, mbr=True, echo=lambda line: None)
    slow = evaluation.evaluate(g8_files, mbr=True, reference_impl=True, echo=lambda line: None)
    assert fast.lines == slow.lines
    assert fast.mbr.selected_file_index == slow.mbr.selected_file_index
    assert [b.bleu for b in fast.files] == [b.bleu for b in slow.files]
    assert [b.rouge_l for b in fast.files] == [b.rouge_l for b in slow.files]

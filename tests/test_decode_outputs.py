"""Decode outputs: atomic files, the manifest, what the evaluator accepts, a killed decode."""

from __future__ import annotations

import json
import sys

import pytest

from diffuseq.cli.evaluate import main as eval_main
from diffuseq.decoding.manifest import MANIFEST_NAME, read_manifest, write_outputs
from diffuseq.evaluation.job import find_decode_files, special_tokens_for
from tests.test_decode import PAIRS, RUN_NAME, _decode, _folder, make_run
from tests.train_helpers import REPO_ROOT, run_command, stalled_process, subprocess_env


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "work")


def _eval(capsys, *argv: str) -> tuple[int, str, str]:
    code = eval_main([*argv, "--no_bertscore", "--workers", "1"])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def test_manifest_lists_every_file_and_the_special_tokens(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--num_samples", "2", "--step", "5") == 0
    assert _decode(run_dir, out, "--num_samples", "1", "--step", "5", "--note", "x") == 0
    folder = _folder(out, "ema_0.9999_000010.pt.samples-ddim-5steps")
    manifest = read_manifest(folder)
    assert sorted(manifest["files"]) == [
        "seed101_step0.json",
        "seed101_step0_x.json",
        "seed102_step0.json",
    ]
    for name, entry in manifest["files"].items():
        assert entry["lines"] == len(PAIRS) == len((folder / name).read_text().splitlines())
        assert entry["bytes"] == (folder / name).stat().st_size
        assert entry["settings"]["sampler"] == "ddim" and entry["settings"]["steps"] == 5
        assert entry["settings"]["checkpoint"].endswith("ema_0.9999_000010.pt")
    assert manifest["files"]["seed101_step0_x.json"]["settings"]["note"] == "x"
    # the word-level vocabulary's tokens, which the evaluator then deletes by default
    assert manifest["special_tokens"] == {
        "sos": "[START]",
        "eos": "[END]",
        "sep": "[END]",
        "pad": "[PAD]",
    }
    tokens = special_tokens_for(str(folder))
    assert (tokens.sos, tokens.eos, tokens.pad) == ("[START]", "[END]", "[PAD]")
    assert special_tokens_for(str(folder), {"sos": "<s>", "eos": None}).sos == "<s>"
    assert special_tokens_for(str(folder / "seed101_step0.json")).eos == "[END]"
    # no manifest in a folder with the original's outputs: the original's defaults
    assert special_tokens_for(str(tmp_path)).sos == "[CLS]"
    assert len(find_decode_files(str(folder))) == 3
    # nothing but outputs, the manifest and the lock file; no temporary file is left
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".json")) == [
        MANIFEST_NAME,
        "run.lock",
    ]


def test_the_evaluator_deletes_the_manifest_tokens_and_flags_win(tmp_path, capsys):
    """A word-level vocabulary writes [START] ... [END]; the manifest names them, so the
    evaluator deletes them by default; explicit --sos/--eos still win."""
    record = {"recover": "[START] a b c d [END] [PAD]", "reference": "a b c d", "source": "x"}
    write_outputs(
        tmp_path,
        {"seed101_step0.json": [json.dumps(record)] * 3},
        settings={},
        special_tokens={"sos": "[START]", "eos": "[END]", "sep": "[END]", "pad": "[PAD]"},
    )
    assert _bleu(tmp_path, capsys) == pytest.approx(1.0)  # recover == reference once cleaned
    assert _bleu(tmp_path, capsys, "--sos", "[CLS]", "--eos", "[SEP]") < 0.9
    assert _bleu(tmp_path, capsys, "--pad", "<pad>") < 0.9  # [PAD] kept, the rest still deleted
    assert _bleu(tmp_path, capsys, "--pad", "[PAD]") == pytest.approx(1.0)
    (tmp_path / MANIFEST_NAME).unlink()  # without a manifest: the original's [CLS] [SEP] ...
    assert _bleu(tmp_path, capsys) < 0.9


def _bleu(folder, capsys, *flags) -> float:
    report = folder.parent / f"{folder.name}.report.json"
    assert _eval(capsys, "--folder", str(folder), "--json", str(report), *flags)[0] == 0
    return json.loads(report.read_text())["files"][0]["avg_bleu"]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("truncate_at_line", "incomplete or changed since it was decoded: 4 lines"),
        ("unlisted", "not listed in"),
        ("missing", "listed in"),
    ],
)
def test_the_evaluator_refuses_a_folder_that_does_not_match(
    run_dir, tmp_path, capsys, damage, needle
):
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--num_samples", "2", "--step", "5") == 0
    folder = _folder(out, "ema_0.9999_000010.pt.samples-ddim-5steps")
    first = folder / "seed101_step0.json"
    if damage == "truncate_at_line":  # cut at a line boundary: it would look complete
        first.write_text("".join(line + "\n" for line in first.read_text().splitlines()[:4]))
    elif damage == "unlisted":
        (folder / "seed999_step0.json").write_text(first.read_text())
    else:
        first.unlink()
    code, out_text, err = _eval(capsys, "--folder", str(folder))
    assert code == 2 and "Traceback" not in err and out_text == ""
    assert needle in err and MANIFEST_NAME in err
    if damage == "truncate_at_line":  # one file is checked against its entry too
        code, _, err = _eval(capsys, "--file", str(first))
        assert code == 2 and "4 lines" in err


def test_a_folder_without_manifest_evaluates_as_the_original(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--num_samples", "2", "--step", "5") == 0
    folder = _folder(out, "ema_0.9999_000010.pt.samples-ddim-5steps")
    (folder / MANIFEST_NAME).unlink()
    (folder / "seed101_step0.json").write_text(
        "".join(line + "\n" for line in (folder / "seed102_step0.json").read_text().splitlines())
    )
    assert _eval(capsys, "--folder", str(folder))[0] == 0


def test_append_keeps_the_manifest_exact(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--step", "5") == 0
    assert _decode(run_dir, out, "--step", "5", "--append") == 0
    folder = _folder(out, "ema_0.9999_000010.pt.samples-ddim-5steps")
    entry = read_manifest(folder)["files"]["seed101_step0.json"]
    assert (
        entry["lines"]
        == 2 * len(PAIRS)
        == len((folder / "seed101_step0.json").read_bytes().splitlines())
    )
    assert len(find_decode_files(str(folder))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["write", "rename"])
def test_a_killed_decode_leaves_complete_files_or_none(run_dir, tmp_path, capsys, moment):
    out = tmp_path / "out"
    argv = ["--model_dir", str(run_dir), "--out_dir", str(out), "--num_samples", "3", "--step", "5"]
    helper = [sys.executable, str(REPO_ROOT / "tests" / "slow_decode.py"), moment, *argv]
    with stalled_process(helper, cwd=tmp_path, log=tmp_path / "stderr.txt"):
        pass  # killed at that moment
    folder = out / RUN_NAME / "ema_0.9999_000010.pt.samples-ddim-5steps"
    outputs = sorted(folder.glob("*.json"))
    for path in outputs:  # every file under a final name is complete
        lines = path.read_text().splitlines()
        assert len(lines) == len(PAIRS) and all(json.loads(line)["recover"] for line in lines)
    if moment == "write":  # killed before the manifest: no output at all, and no manifest
        assert outputs == [] and not (folder / MANIFEST_NAME).exists()
        assert len(list(folder.glob("*.tmp"))) == 2
    else:  # killed between the renames: the manifest names the files still missing
        assert [p.name for p in outputs] == ["seed101_step0.json"]
        assert len(read_manifest(folder)["files"]) == 3
    code, _, err = _eval(capsys, "--folder", str(folder))
    assert code == 2 and "Traceback" not in err
    assert ("no *json files" if moment == "write" else "but missing") in err
    # the next decode finishes the folder and removes the killed writer's temporary files
    again = run_command(
        [sys.executable, str(REPO_ROOT / "run_decode.py"), *argv],
        cwd=tmp_path,
        env=subprocess_env(),
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert not list(folder.glob("*.tmp")) and len(list(folder.glob("*.json"))) == 3
    assert _eval(capsys, "--folder", str(folder))[0] == 0


def test_another_tools_manifest_file_is_not_ours(tmp_path, capsys):
    (tmp_path / MANIFEST_NAME).write_text("include README.md\n")  # e.g. a packaging MANIFEST
    (tmp_path / "seed101_step0.json").write_text(
        json.dumps({"recover": "a", "reference": "a", "source": "x"}) + "\n"
    )
    assert read_manifest(tmp_path) is None
    assert _eval(capsys, "--folder", str(tmp_path))[0] == 0
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "diffuseq-decode-outputs"}))
    code, _, err = _eval(capsys, "--folder", str(tmp_path))  # ours, but malformed
    assert code == 2 and "field 'files'" in err

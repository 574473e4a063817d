"""Decode jobs that cannot mix: the evaluator combines the files of one decode setting only.

The issue's case: decodes piling up in one samples folder (per-seed runs, then ``--num_samples``,
other steps, a re-trained checkpoint of the same name, ``--append``) and MBR silently scoring the
mixture. The original's per-seed workflow stays accepted and says what it combined.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from diffuseq.cli.evaluate import main as eval_main
from diffuseq.config import DecodeConfig
from diffuseq.decoding.decode_sets import check_one_set, group_files
from diffuseq.decoding.job import Decoder, decode_to_files
from diffuseq.decoding.manifest import read_manifest
from diffuseq.errors import DataError
from diffuseq.runtime.logger import setup_logging
from diffuseq.store.run_folder import open_run
from tests.test_decode import PAIRS, _decode, _folder, make_run
from tests.train_helpers import REPO_ROOT

FOLDER = "ema_0.9999_000010.pt.samples-ddim-5steps"


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "work")


def _eval(capsys, *argv: str) -> tuple[int, str, str]:
    code = eval_main([*argv, "--no_bertscore", "--workers", "1"])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def test_the_per_seed_workflow_is_accepted_and_says_what_it_combined(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for seed in ("101", "102", "103"):  # run_decode.sh SEEDS="101 102 103"
        assert _decode(run_dir, out, "--step", "5", "--seed", seed) == 0
    assert _decode(run_dir, out, "--step", "5", "--num_samples", "2") == 0  # 101, 102 again
    folder = _folder(out, FOLDER)
    entry = read_manifest(folder)["files"]["seed103_step0.json"]["settings"]
    assert entry["inputs"]["count"] == len(PAIRS) and len(entry["weights"]) == 16
    assert len(entry["job"]) == 12 and entry["checkpoint"].endswith("ema_0.9999_000010.pt")
    report = tmp_path / "report.json"
    code, stdout, err = _eval(capsys, "--folder", str(folder), "--mbr", "--json", str(report))
    assert code == 0 and "MBR..." in stdout
    assert "evaluating 3 file(s) of one decode setting" in err
    assert (
        "seeds 101-103, from 2 decode run(s): ddim, 5 steps, checkpoint ema_0.9999_000010.pt" in err
    )
    (combined,) = json.loads(report.read_text())["decode_sets"]
    assert combined["seeds"] == [101, 102, 103] and combined["steps"] == 5


def test_a_folder_of_two_step_counts_is_refused_and_allow_mixed_overrides(
    run_dir, tmp_path, capsys
):
    """The mixed-folder case: a 5-step decode with 3 candidates, then a 2-step decode of more
    seeds written into the same folder (the Python API lets any decode choose its folder)."""
    setup_logging(is_main=True)  # to this test's stderr
    run = open_run(run_dir)
    decoder = Decoder.from_checkpoint(run, run.checkpoints()[0])
    inputs = decoder.encode(PAIRS)
    folder = tmp_path / "samples"
    decode_to_files(decoder, inputs, DecodeConfig(steps=5, num_samples=3), out_folder=folder)
    decode_to_files(
        decoder, inputs, DecodeConfig(steps=2, seed=104, num_samples=2), out_folder=folder
    )
    capsys.readouterr()
    code, stdout, err = _eval(capsys, "--folder", str(folder), "--mbr")
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert "holds the outputs of 2 different decode settings" in err
    assert "they differ in steps)" in err and "--allow_mixed" in err
    assert (
        "(1) seed101_step0.json, seed102_step0.json, seed103_step0.json (seeds 101-103): steps 5"
        in err
    )
    assert "(2) seed104_step0.json, seed105_step0.json (seeds 104-105): steps 2." in err
    code, stdout, err = _eval(capsys, "--folder", str(folder), "--mbr", "--allow_mixed")
    assert code == 0 and "MBR..." in stdout
    assert "evaluating 5 file(s) of 2 settings (--allow_mixed)" in err
    # one file of the folder is one setting: accepted
    assert _eval(capsys, "--file", str(folder / "seed104_step0.json"))[0] == 0


def test_other_weights_of_the_same_checkpoint_name_are_refused(run_dir, tmp_path, capsys):
    """A re-trained run writes a checkpoint of the same name: its decodes land in the same
    folder, but the weights' fingerprint differs."""
    out = tmp_path / "out"
    assert _decode(run_dir, out, "--step", "5", "--seed", "101") == 0
    shutil.copy(run_dir / "ema_0.9999_000005.pt", run_dir / "ema_0.9999_000010.pt")
    assert _decode(run_dir, out, "--step", "5", "--seed", "102") == 0
    code, _, err = _eval(capsys, "--folder", str(_folder(out, FOLDER)), "--mbr")
    assert code == 2 and "they differ in checkpoint weights)" in err


def test_other_command_line_settings_in_one_folder_are_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    folder = _folder(out, FOLDER)
    assert _decode(run_dir, out, "--step", "5", "--num_samples", "2") == 0
    assert _decode(run_dir, out, "--step", "5", "--clamp_step", "3") == 0
    code, _, err = _eval(capsys, "--folder", str(folder))
    assert code == 2 and "they differ in clamp_step)" in err
    # --append of another setting mixes the lines of one file: refused even alone
    assert _decode(run_dir, out, "--step", "5", "--top_p", "0.5", "--append") == 0
    code, _, err = _eval(capsys, "--file", str(folder / "seed101_step0.json"))
    assert code == 2 and "they differ in top_p)" in err


def test_grouping_without_a_manifest_and_of_old_entries(tmp_path):
    assert group_files(tmp_path, ["seed101_step0.json"]) is None
    manifest = {
        "format": "diffuseq-decode-outputs",
        "version": 1,
        "files": {  # entries written before job ids and fingerprints: grouped by what they have
            f"seed{s}_step0.json": {
                "lines": 1,
                "bytes": 1,
                "settings": {"sampler": "ddim", "steps": 5},
            }
            for s in (101, 102)
        },
    }
    (tmp_path / "MANIFEST").write_text(json.dumps(manifest))
    (group,) = group_files(tmp_path, sorted(manifest["files"]))
    assert group.seeds == [101, 102] and group.jobs == []
    check_one_set(tmp_path, [group], flag="--allow_mixed")
    manifest["files"]["seed102_step0.json"]["settings"]["steps"] = 10
    (tmp_path / "MANIFEST").write_text(json.dumps(manifest))
    sets = group_files(tmp_path, sorted(manifest["files"]))
    with pytest.raises(DataError, match="differ in steps"):
        check_one_set(tmp_path, sets, flag="--allow_mixed")


def test_the_demo_decodes_into_a_fresh_folder_of_its_own(tmp_path):
    """scripts/common.sh fresh_folder (demo.sh's DEMO_OUT): a folder an earlier demo created is
    replaced by an empty one; a folder the user made is refused and left as it is."""
    common = REPO_ROOT / "scripts" / "common.sh"

    def fresh(folder) -> subprocess.CompletedProcess:
        script = f'source "{common}"; fresh_folder "{folder}" demo.sh'
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)

    out = tmp_path / "generation_outputs" / "demo_script"
    assert fresh(out).returncode == 0 and [p.name for p in out.iterdir()] == [".created-by-demo.sh"]
    (out / "demo").mkdir()
    (out / "demo" / "seed101_step0.json").write_text("{}\n")  # an earlier demo's decode
    assert fresh(out).returncode == 0 and [p.name for p in out.iterdir()] == [".created-by-demo.sh"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.json").write_text("{}\n")
    done = fresh(mine)
    assert done.returncode == 2 and "was not created by demo.sh" in done.stderr
    assert (mine / "keep.json").read_text() == "{}\n"
    assert 'fresh_folder "$DEMO_OUT" demo.sh' in (REPO_ROOT / "scripts" / "demo.sh").read_text()

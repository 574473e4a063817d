"""Issue 24: what a resumed run finds in its folder.

* ``metrics.jsonl``: the records a killed launch wrote after its last saved state are dropped at
  resume (the file is rewritten atomically), so the run keeps one record per step.
* ``config.yaml`` / ``training_args.json`` edited by hand: a model-defining field is refused
  (resume and decode), any other field is reported with the value used.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from diffuseq.cli.decode import main as decode_main
from diffuseq.cli.train import main as train_main
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.run_folder import trim_metrics
from tests.train_helpers import make_tiny_data, tiny_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("resume") / "data")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _kinds(records: list[dict]) -> Counter:
    """(step, kind) -> count; kind: train, eval or decode record."""
    return Counter(
        (r["step"], "eval" if "eval_loss" in r else "decode" if "decode_bleu" in r else "train")
        for r in records
    )


def test_resume_drops_the_killed_launchs_records(data, tmp_path):
    run = tmp_path / "run"
    argv = tiny_argv(data, checkpoint_path=run, log_interval=2, eval_interval=3, save_interval=2)
    assert train_main([*argv, "--learning_steps", "4"]) == 0
    metrics = run / "metrics.jsonl"
    saved = _records(metrics)
    # a launch killed after the state of step 4: records of indices 4 and 5, a decode record
    # of step 5 and half a line
    with metrics.open("a") as handle:
        for step in (4, 5):
            handle.write(json.dumps({"step": step, "loss": 9.0, "samples": 1}) + "\n")
        handle.write(json.dumps({"step": 5, "decode_bleu": 0.5, "seconds": 1.0}) + "\n")
        handle.write('{"step": 6, "lo')
    assert train_main([*argv, "--learning_steps", "7", "--resume_checkpoint", "auto"]) == 0
    records = _records(metrics)  # every line is JSON: the half line is gone
    assert records[: len(saved)] == saved  # the records up to the state are kept as they were
    kinds = _kinds(records)
    assert max(kinds.values()) == 1, kinds  # one record per step and kind
    assert sorted(s for s, k in kinds if k == "train") == [0, 2, 4, 6]  # 3: with eval_loss
    assert all(r.get("loss") != 9.0 and "decode_bleu" not in r for r in records)


def test_a_continued_finished_run_keeps_every_record(data, tmp_path):
    run = tmp_path / "run"
    argv = tiny_argv(data, checkpoint_path=run, log_interval=2, save_interval=2, eval_interval=99)
    assert train_main([*argv, "--learning_steps", "4"]) == 0
    saved = (run / "metrics.jsonl").read_text()
    # the last, partial log interval (index 3) is written after the final save (step 4)
    assert [r["step"] for r in _records(run / "metrics.jsonl") if "loss" in r] == [0, 2, 3]
    assert train_main([*argv, "--learning_steps", "4", "--resume_checkpoint", "auto"]) == 0
    assert (run / "metrics.jsonl").read_text() == saved
    assert train_main([*argv, "--learning_steps", "6", "--resume_checkpoint", "auto"]) == 0
    records = _records(run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [0, 2, 3, 4, 5]


def _write(path: Path, rows: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_trim_by_step(tmp_path):
    """Training records count update indices (< S kept); decode records completed steps."""
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 2, "loss": 1.0},
        {"step": 3, "eval_loss": 1.0},
        {"step": 4, "decode_bleu": 0.1},
        {"notes": "no step"},
        {"step": 4, "loss": 1.0},
        {"step": 5, "decode_bleu": 0.1},
    ]
    _write(path, rows, tail='{"st')
    assert trim_metrics(path, step=4) == 3
    assert _records(path) == rows[:4]
    assert trim_metrics(path, step=4) == 0  # nothing left to drop: not rewritten


def test_trim_without_a_file(tmp_path):
    assert trim_metrics(tmp_path / "metrics.jsonl", step=3) == 0
    assert not (tmp_path / "metrics.jsonl").exists()


# ---------------------------------------------------------------- edited config.yaml / training_args


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("edited") / "run"
    assert train_main(tiny_argv(data, checkpoint_path=run, learning_steps=2, save_interval=2)) == 0
    return run


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def _edit_yaml(run: Path, section: str, key: str, value) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _edit_args(run: Path, key: str, value) -> None:
    args = json.loads((run / "training_args.json").read_text())
    args[key] = value
    (run / "training_args.json").write_text(json.dumps(args))


def _resume(data: Path, run: Path, *flags: str) -> list[str]:
    return [*tiny_argv(data, checkpoint_path=run, learning_steps=3, save_interval=2), *flags,
            "--resume_checkpoint", "auto"]  # fmt: skip


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "run_train.py: error:" in err, err
    return " ".join(err.split())


def test_resume_refuses_an_edited_diffusion_field(data, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    _edit_yaml(run, "diffusion", "diffusion_steps", 100)
    before = (run / "config.yaml").read_text()
    assert train_main(_resume(data, run)) == 2
    err = _error(capsys)
    assert "config.yaml: diffusion.diffusion_steps is 100" in err, err
    assert "state_000002.pt was trained with 8" in err, err
    assert (run / "config.yaml").read_text() == before  # nothing rewritten
    assert not (run / "state_000003.pt").exists()


def test_resume_refuses_an_edited_training_args_field(data, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    _edit_args(run, "noise_schedule", "linear")
    assert train_main(_resume(data, run)) == 2
    err = _error(capsys)
    assert "training_args.json: noise_schedule is 'linear'" in err, err
    assert "trained with 'sqrt'" in err, err


def test_resume_reports_an_edited_training_field_and_uses_the_checkpoint(
    data, trained, tmp_path, capsys
):
    run = _copy(trained, tmp_path)
    _edit_yaml(run, "train", "lr", 0.5)
    assert train_main(_resume(data, run)) == 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert "config.yaml: train.lr is 0.5; the checkpoint's value 0.001 is used" in out, out
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.001
    assert load_state_file(run / "state_000003.pt")["config"]["train"]["lr"] == 0.001


def test_resume_with_a_flag_names_the_flag_value(data, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    _edit_yaml(run, "train", "lr", 0.5)
    assert train_main(_resume(data, run, "--lr", "0.002")) == 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert "train.lr is 0.5; this command's value 0.002 is used" in out, out


def test_files_of_a_stopped_launch_are_not_edits(data, trained, tmp_path, capsys):
    """A launch with --learning_steps 5 wrote its files and was stopped before saving: the
    files hold its value, which is not the checkpoint's, but no one edited them."""
    run = _copy(trained, tmp_path)
    _edit_yaml(run, "train", "learning_steps", 5)
    _edit_args(run, "learning_steps", 5)
    argv = _resume(data, run)
    argv[argv.index("--learning_steps") + 1] = "5"
    assert train_main(argv) == 0
    out = "".join(capsys.readouterr())
    assert "is used" not in out and "edited" not in out


def test_decode_refuses_an_edited_diffusion_field(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    _edit_yaml(run, "diffusion", "noise_schedule", "linear")
    out = tmp_path / "out"
    assert decode_main(["--model_dir", str(run), "--out_dir", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and "run_decode.py: error:" in err, err
    assert "config.yaml was edited: diffusion.noise_schedule is 'linear' there but 'sqrt' in" in err
    assert not out.exists()


def test_decode_ignores_an_edited_training_field(trained, tmp_path):
    run = _copy(trained, tmp_path)
    _edit_yaml(run, "train", "lr", 0.5)
    argv = ["--model_dir", str(run), "--out_dir", str(tmp_path / "out"), "--step", "2"]
    assert decode_main([*argv, "--sampler", "ddim"]) == 0


def test_fixed_fields():
    from diffuseq.store.run_files import fixed_field

    assert fixed_field("diffusion.noise_schedule") and fixed_field("model.hidden_dim")
    assert fixed_field("data.seq_len") and fixed_field("discrete.discrete_schedule")
    assert not fixed_field("model.attention") and not fixed_field("train.lr")
    assert not fixed_field("data.data_dir") and not fixed_field("discrete.discrete_loss")

"""environment.json: library versions, the toolkit's git commit and the devices of every launch."""

from __future__ import annotations

import json
import platform
import subprocess

import numpy as np
import torch

import diffuseq
from diffuseq.runtime.environment import (
    ENVIRONMENT_FILE,
    collect_environment,
    git_revision,
    package_version,
    record_environment,
)
from tests.train_helpers import REPO_ROOT, make_tiny_data, train_tiny


def test_collect_environment_records_versions_and_devices():
    env = collect_environment()
    assert env["python"]["version"] == platform.python_version()
    assert env["torch"]["version"] == torch.__version__
    assert env["torch"]["cuda"] == torch.version.cuda
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["transformers"] == package_version("transformers") is not None
    assert env["packages"]["tokenizers"] is not None
    assert "diffusers" in env["packages"]  # None when not installed
    assert env["diffuseq"]["version"] == diffuseq.__version__
    assert env["host"]["cpu_count"] >= 1
    assert env["host"]["gpu_count"] == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    json.dumps(env)  # plain data


def test_git_revision_of_the_checkout_and_of_a_plain_folder(tmp_path):
    assert git_revision(tmp_path) == {"git_commit": None, "git_dirty": None}
    if not (REPO_ROOT / ".git").exists():
        return  # an installed copy: nothing to compare with
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    revision = git_revision(REPO_ROOT)
    assert revision["git_commit"] == head and isinstance(revision["git_dirty"], bool)
    assert collect_environment()["diffuseq"]["git_commit"] == head


def test_record_keeps_earlier_launches_and_replaces_an_unreadable_file(tmp_path):
    record_environment(tmp_path, start_step=0, device="cpu")
    first = json.loads((tmp_path / ENVIRONMENT_FILE).read_text())["launches"][0]
    record_environment(tmp_path, start_step=5, world_size=2, device="cpu")
    launches = json.loads((tmp_path / ENVIRONMENT_FILE).read_text())["launches"]
    assert launches[0] == first
    assert [(x["start_step"], x["world_size"]) for x in launches] == [(0, 1), (5, 2)]
    (tmp_path / ENVIRONMENT_FILE).write_text("{broken")
    record_environment(tmp_path, start_step=7)
    assert len(json.loads((tmp_path / ENVIRONMENT_FILE).read_text())["launches"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [ENVIRONMENT_FILE]  # no temp file


def test_a_run_and_its_resume_record_their_launches(tmp_path):
    data, run = make_tiny_data(tmp_path / "data"), tmp_path / "run"
    flags = dict(checkpoint_path=run, learning_steps=4, save_interval=2, export_model=False)
    assert train_tiny(data, max_minutes=1e-5, **flags).step == 1  # stops after one step
    assert train_tiny(data, resume_checkpoint="auto", **flags).step == 4
    record = json.loads((run / ENVIRONMENT_FILE).read_text())
    assert record["format"] == "diffuseq-environment"
    launches = record["launches"]
    assert [x["start_step"] for x in launches] == [0, 1]
    assert launches[0]["device"] == "cpu" and launches[0]["world_size"] == 1
    assert launches[0]["torch"]["version"] == torch.__version__

"""Issue 24: decode outputs and inputs stay where they belong.

``--model_dir RUN/hf/..`` names the run ``RUN`` (its name is taken after resolving), so its
outputs go to ``<out_dir>/RUN/...``, never above ``--out_dir``; ``--pattern`` cannot glob
outside the run folder; a model folder never reads its tokenizer from outside itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from diffuseq.cli.decode import main as decode_main
from diffuseq.errors import ConfigError
from diffuseq.store.run_folder import open_run
from diffuseq.store.safe_io import check_pattern
from tests.test_decode import RUN_NAME, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("escapes"))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("suffix", ["hf/..", "hf/../.", "hf/../../" + RUN_NAME])
def test_model_dir_with_dotdot_decodes_into_the_run_name(run, tmp_path, suffix):
    (run / "hf").mkdir(exist_ok=True)
    work = tmp_path / "work"
    out = work / "out"
    argv = ["--model_dir", f"{run}/{suffix}", "--out_dir", str(out), "--step", "2"]
    argv += ["--sampler", "ddim", "--bsz", "8"]
    assert decode_main(argv) == 0
    written = _files(work)
    assert written and all(out / RUN_NAME in p.parents for p in written), written
    assert open_run(f"{run}/{suffix}").name == RUN_NAME


@pytest.mark.parametrize("pattern", ["../x", "a/b", "..", "..ema", "/tmp/ema", "a\\b"])
def test_pattern_with_a_separator_or_dotdot_is_refused(pattern):
    with pytest.raises(ConfigError, match="--pattern"):
        check_pattern(pattern)


@pytest.mark.parametrize("pattern", ["ema", "ema_0.9999", "ema_*_0000", "model"])
def test_plain_patterns_pass(pattern):
    assert check_pattern(pattern) == pattern


def test_pattern_is_checked_by_the_run_folder_too(run):
    with pytest.raises(ConfigError, match="--pattern"):
        open_run(run).select_checkpoints("../" + run.name + "/ema", "latest")

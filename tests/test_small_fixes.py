"""Issue 12's smaller items: DDP without the broadcast_buffers FutureWarning, one resume line,
portable run folder names (original format by a flag), --help texts."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist

from diffuseq.cli import decode, evaluate, train
from diffuseq.cli.common import describe
from diffuseq.config import RunConfig, run_folder_name
from diffuseq.config.run import TrainConfig, run_notes
from diffuseq.models.nn_utils import ddp_without_buffer_sync
from diffuseq.store.checkpoint import ResumeSource
from diffuseq.training.setup import _load_resume


def test_ddp_without_buffer_sync_warns_nothing(tmp_path):
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.nn.parallel.DistributedDataParallel(
                torch.nn.Linear(2, 2), **ddp_without_buffer_sync()
            )
        assert not [w for w in caught if "buffers" in str(w.message)]
    finally:
        torch_dist.destroy_process_group()


class _FakeTrainer:
    def __init__(self, exact: bool) -> None:
        self.exact = exact

    def load_state(self, payload) -> bool:
        return self.exact


@pytest.mark.parametrize("exact, line", [(True, "resumed exactly from"),
                                         (False, "resumed (not bit-identically) from")])  # fmt: skip
def test_one_resume_line_that_agrees_with_the_warning(exact, line):
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("diffuseq.train")
    old_level, log.level = log.level, logging.INFO
    log.addHandler(handler)
    try:
        resume = ResumeSource("state", Path("run/state_000004.pt"), 4, payload={})
        _load_resume(_FakeTrainer(exact), resume, (0.9999,))  # type: ignore[arg-type]
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert records == [f"{line} run/state_000004.pt (step 4)"]


def _config(**train) -> RunConfig:
    return RunConfig().replace("data", dataset="qqp").replace("train", **train)


def test_run_folder_names_are_portable_by_default():
    name = run_folder_name(_config(notes="test-qqp"))
    assert re.fullmatch(r"diffuseq_qqp_h128_lr0\.0001_t4000_cosine_uniform_seed101_test-qqp_"
                        r"\d{8}-\d{6}", name), name  # fmt: skip
    default_notes = run_folder_name(_config())  # notes '-': no stray '_-'
    assert re.fullmatch(r".*_seed101_\d{8}-\d{6}", default_notes), default_notes
    assert ":" not in name + default_notes and "_-" not in default_notes
    assert run_folder_name(_config(notes="")).endswith("_seed101")  # no notes: no timestamp


def test_original_run_folder_name_format():
    config = _config(notes="test-qqp", run_name_format="original")
    name = run_folder_name(config)
    assert re.fullmatch(r".*_seed101_test-qqp\d{8}-\d\d:\d\d:\d\d", name), name
    assert run_folder_name(_config(run_name_format="original"), timestamp="T").endswith("_-T")
    assert run_notes(TrainConfig(notes="x", run_name_format="original"), timestamp="T") == "xT"
    with pytest.raises(Exception, match="run_name_format"):
        _config(run_name_format="iso").validate()


def test_help_examples_use_the_name_it_was_started_by():
    doc = "    python eval_seq2seq.py --folder F\n    torchrun run_train.py --x\n"
    assert describe(doc, "eval_seq2seq.py", "eval_seq2seq.py") == doc
    assert describe(doc, "eval_seq2seq.py", "diffuseq-eval").startswith(
        "    diffuseq-eval --folder F"
    )
    assert "python -m diffuseq.cli.evaluate --folder" in describe(
        doc, "eval_seq2seq.py", "python -m diffuseq.cli.evaluate"
    )


@pytest.mark.parametrize("cli", [train, decode, evaluate])
def test_help_has_one_default_per_flag_and_no_stray_spaces(cli):
    parser = cli.build_parser()
    for action in parser._actions:
        text = action.help or ""
        assert text.count("(default:") <= 1, (action.dest, text)
        assert "  " not in text and text == text.strip(), (action.dest, text)
    # a backslash continuation in a docstring left a run of spaces inside an example line
    for line in (parser.description or "").splitlines():
        assert not re.search(r"\S {5,}--", line), line

"""--tensorboard: the metrics of metrics.jsonl as TensorBoard events in RUN/tensorboard/."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from diffuseq.cli.train import main
from diffuseq.runtime.logger import MetricsWriter
from tests.train_helpers import make_tiny_data, read_metrics, tiny_argv


def _scalars(folder) -> dict[tuple[str, int], float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep all
    events.Reload()
    return {
        (tag, event.step): event.value
        for tag in events.Tags()["scalars"]
        for event in events.Scalars(tag)
    }


def _expected(records) -> dict[tuple[str, int], float]:
    return {
        (key, int(record["step"])): float(value)
        for record in records
        for key, value in record.items()
        if key != "step"
    }


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
def test_tensorboard_events_equal_metrics_jsonl(tmp_path):
    data, run = make_tiny_data(tmp_path / "data"), tmp_path / "run"
    argv = tiny_argv(data, checkpoint_path=run, learning_steps=6, save_interval=3)
    assert main(argv + ["--tensorboard", "--max_minutes", "0.00001"]) == 0  # stops at step 1
    assert main(argv + ["--resume_checkpoint", "auto"]) == 0  # the saved config keeps it on
    records = read_metrics(run)
    expected = _expected(records)
    assert {"loss", "mse_q0", "eval_loss", "grad_norm", "samples"} <= {k for k, _ in expected}
    scalars = _scalars(run / "tensorboard")
    assert scalars.keys() == expected.keys()
    for key, value in expected.items():  # TensorBoard stores float32
        assert math.isclose(scalars[key], value, rel_tol=1e-6, abs_tol=1e-30), key
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per launch


def test_without_tensorboard_off_is_default(tmp_path):
    data, run = make_tiny_data(tmp_path / "data"), tmp_path / "run"
    assert main(tiny_argv(data, checkpoint_path=run, learning_steps=2)) == 0
    assert not (run / "tensorboard").exists()


def test_tensorboard_without_the_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    data, run = make_tiny_data(tmp_path / "data"), tmp_path / "run"
    assert main(tiny_argv(data, checkpoint_path=run, tensorboard="true")) == 2
    err = capsys.readouterr().err
    assert "pip install .[tensorboard]" in " ".join(err.split()) and "Traceback" not in err
    assert not run.exists()  # refused before the run folder is created


def test_every_tracker_gets_every_record(tmp_path):
    class Recorder:
        def __init__(self):
            self.calls, self.finished = [], False

        def log(self, record, step=None):
            self.calls.append((dict(record), step))

        def finish(self):
            self.finished = True

    a, b = Recorder(), Recorder()
    writer = MetricsWriter(path=tmp_path / "metrics.jsonl", trackers=[a, b], console=False)
    writer.log_mean("loss", 2.0)
    writer.log_value("step", 3)
    record = writer.dump()
    writer.close()
    assert a.calls == b.calls == [(record, 3)] and a.finished and b.finished

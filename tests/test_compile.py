"""``--compile`` (torch.compile of the network) and the fp16 + GradScaler path, on the CPU.

Compiled runs are checked against eager ones with Inductor's ``fallback_random`` (random ops
run as eager kernels, drawing the same numbers), so that the comparison measures the compiled
kernels and not a different dropout mask. Compiling is slow on a CPU (tens of seconds per
graph with a cold Inductor cache, a few with a warm one), so the compiled cases are few, tiny
and marked ``slow``; the fallback and fp16 cases are fast.
"""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from diffuseq.cli.decode import main as decode_main
from diffuseq.cli.train import main, prepare
from diffuseq.runtime import dist, perf
from diffuseq.store.checkpoint import load_state_file
from tests.train_helpers import (
    REPO_ROOT,
    make_tiny_data,
    read_metrics,
    run_command,
    subprocess_env,
    tiny_argv,
    train_tiny,
)

STEPS, HALF = 8, 4


@pytest.fixture
def same_random_numbers(monkeypatch):
    """Compiled random ops draw what eager ones draw (Inductor's ``fallback_random``)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)


@pytest.fixture
def no_cxx(monkeypatch):
    """No working C++ compiler for Inductor's CPU backend (a fresh probe; restored after)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/c++"))
    perf.compile_unavailable.cache_clear()
    torch._dynamo.reset()  # the probe is compiled again
    yield
    perf.compile_unavailable.cache_clear()


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if "loss" in r]


def _keys(state: dict) -> dict:
    return {
        "model": list(state["model"]),
        "ema": {rate: list(params) for rate, params in state["ema"].items()},
        "optimizer": [sorted(s) for s in state["optimizer"]["state"].values()],
        "groups": [g["params"] for g in state["optimizer"]["param_groups"]],
    }


def _half_then_rest(argv, run, *, first: str, then: str) -> None:
    """``HALF`` steps with ``--compile first``, then resume to ``STEPS`` with ``--compile then``."""
    trainer = prepare([*argv, "--checkpoint_path", str(run), "--compile", first])
    assert trainer.fit(until=HALF) == HALF
    trainer.close()
    dist.cleanup()
    assert main([*argv, "--checkpoint_path", str(run), "--resume_checkpoint", "auto",
                 "--compile", then]) == 0  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("self_cond", ["false", "true"], ids=["plain", "self_cond"])
def test_compiled_and_eager_runs_resume_each_other(tmp_path, same_random_numbers, self_cond):
    """8 eager steps = 4 eager + 4 compiled = 4 compiled + 4 eager (within fp32 rounding),
    with identical state-dict keys; the compiled steps log the eager losses; a compiled decode
    of the eager run writes the eager decode's files."""
    data = make_tiny_data(tmp_path / "data")
    argv = tiny_argv(data, learning_steps=STEPS, save_interval=HALF, log_interval=1,
                     self_cond=self_cond, ema_rate="0.9")  # fmt: skip
    eager, to_compiled, from_compiled = tmp_path / "eager", tmp_path / "e2c", tmp_path / "c2e"
    assert main([*argv, "--checkpoint_path", str(eager)]) == 0
    _half_then_rest(argv, to_compiled, first="false", then="true")
    _half_then_rest(argv, from_compiled, first="true", then="false")

    reference = _losses(eager)
    assert len(reference) == STEPS
    for run in (to_compiled, from_compiled):
        assert _losses(run) == pytest.approx(reference, rel=1e-4, abs=1e-6), run.name
        for step in (HALF, STEPS):
            a = load_state_file(eager / f"state_{step:06d}.pt")
            b = load_state_file(run / f"state_{step:06d}.pt")
            assert _keys(a) == _keys(b), (run.name, step)
            assert not any(k.startswith("_orig_mod") for k in b["model"])
            # Adam divides by sqrt(v): a gradient entry near 0 that rounds differently moves
            # its weight by up to a few % of lr = 1e-3; everything else agrees to rounding
            for name, tensor in a["model"].items():
                torch.testing.assert_close(b["model"][name], tensor, rtol=1e-3, atol=1e-4)
            for rate, params in a["ema"].items():
                for name, tensor in params.items():
                    torch.testing.assert_close(b["ema"][rate][name], tensor, rtol=1e-3, atol=1e-4)
            worst = max((b["model"][k] - v).abs().max().item() for k, v in a["model"].items())
            print(f"{run.name} step {step}: largest weight difference {worst:.2e}")
            counts = [s["sampler"]["loss_counts"].tolist() for s in (a, b)]
            assert counts[0] == counts[1]
        a, b = (torch.load(r / f"ema_0.9_{STEPS:06d}.pt", weights_only=True) for r in (eager, run))
        assert list(a) == list(b)  # the EMA file decoding reads: the original's keys

    # decoding the eager run with --compile writes the eager outputs; 8 examples x 3 candidates
    # in batches of 5: the last batch (4 rows) is padded, so the network is compiled once
    flags = ["--model_dir", str(eager), "--sampler", "dpm-solver++", "--step", "3",
             "--num_samples", "3", "--bsz", "5"]  # fmt: skip
    assert decode_main([*flags, "--out_dir", str(tmp_path / "eager_out")]) == 0
    torch._dynamo.reset()  # an earlier test's graph of the same shapes would be reused
    graphs = counters["stats"]["unique_graphs"]
    assert (
        decode_main([*flags, "--out_dir", str(tmp_path / "compiled_out"), "--compile", "true"]) == 0
    )
    assert counters["stats"]["unique_graphs"] - graphs == 1
    written = sorted((tmp_path / "eager_out").rglob("seed*.json"))
    assert len(written) == 3
    for path in written:
        twin = tmp_path / "compiled_out" / path.relative_to(tmp_path / "eager_out")
        assert twin.read_text() == path.read_text()


@pytest.mark.slow
def test_two_process_ddp_compiled_run_matches_eager(tmp_path):
    """torchrun, 2 CPU processes (gloo): the DDP wrapper compiled (DDPOptimizer splits its
    graph at the gradient buckets), ``no_sync`` on the first of two micro-batches; the same
    losses and weights as the eager run."""
    data = make_tiny_data(tmp_path / "data")
    argv = tiny_argv(data, learning_steps=HALF, save_interval=HALF, log_interval=1,
                     export_model="false")  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", str(REPO_ROOT / "tests" / "compiled_train.py")]  # fmt: skip
    for name, flag in (("eager", "false"), ("compiled", "true")):
        done = run_command([*torchrun, *argv, "--checkpoint_path", str(tmp_path / name),
                            "--compile", flag], cwd=tmp_path, env=subprocess_env(), timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-5000:]
    assert "--compile: torch.compile is not available" not in done.stderr
    eager, compiled = (
        load_state_file(tmp_path / n / f"state_{HALF:06d}.pt") for n in ("eager", "compiled")
    )
    assert compiled["world_size"] == 2 and _keys(compiled) == _keys(eager)
    for name, tensor in eager["model"].items():
        torch.testing.assert_close(compiled["model"][name], tensor, rtol=1e-3, atol=1e-4)
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)


def test_compile_falls_back_to_eager_without_a_cxx_compiler(
    tmp_path, no_cxx, caplog, capsys, monkeypatch
):
    # an earlier run's setup_logging stops propagation to the root logger that caplog watches
    monkeypatch.setattr(logging.getLogger("diffuseq"), "propagate", True)
    reason = perf.compile_unavailable("cpu")
    assert reason is not None and "compiler" in reason.lower()
    model = torch.nn.Linear(3, 2)
    with caplog.at_level(logging.WARNING, logger="diffuseq"):
        assert perf.compile_model(model, device="cpu") is False
    assert "torch.compile is not available here" in caplog.text
    assert model._compiled_call_impl is None  # still eager
    # a training run asked to compile warns once and trains eagerly, with the eager numbers
    data = make_tiny_data(tmp_path / "data")
    capsys.readouterr()
    train_tiny(data, learning_steps=2, checkpoint_path=tmp_path / "c", compile="true",
               export_model=False)  # fmt: skip
    assert "WARNING --compile: torch.compile is not available here" in capsys.readouterr().err
    train_tiny(data, learning_steps=2, checkpoint_path=tmp_path / "e", export_model=False)
    assert _losses(tmp_path / "c") == _losses(tmp_path / "e")


# ------------------------------------------------------------------------------ fp16 + scaler


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """Let ``--use_fp16`` run on the CPU (torch has CPU fp16 autocast and a CPU GradScaler; the
    CLI refuses it because without AVX512-FP16 it is slower than fp32 and gains nothing)."""
    from diffuseq.training import setup, trainer

    def fp16(config, device):
        return torch.float16 if config.use_fp16 else None

    monkeypatch.setattr(trainer, "autocast_dtype", fp16)
    monkeypatch.setattr(setup, "autocast_dtype", fp16)


def test_fp16_scaler_skips_overflow_and_unscales_before_clipping(tmp_path, fp16_on_cpu):
    from tests.test_trainer import BATCH, DRAWS, _stub_trainer

    trainer, model = _stub_trainer(tmp_path, list(DRAWS) * 2, gradient_clipping=1e-3,
                                   use_fp16=True)  # fmt: skip
    assert trainer.scaler.is_enabled() and trainer.amp_dtype is torch.float16
    # the default scale (2^16) overflows this model's fp16 gradient: the update is skipped
    # and the scale halved, as torch.amp.GradScaler does
    before = model.weight.detach().clone()
    trainer.forward_backward(BATCH)
    trainer.optimize()
    assert torch.equal(model.weight, before) and trainer.scaler.get_scale() == 2.0**15
    assert not math.isfinite(trainer.writer.dump()["grad_norm"])  # what the skipped step saw
    # with a scale that fits, the true gradient is clipped: unscaled first, then clipped to
    # norm 1e-3 (clipping the scaled one would leave 1e-3 / scale after the step unscales it)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    trainer.forward_backward(BATCH)
    scaled = model.weight.grad.norm().item()
    trainer.optimize()
    assert math.isfinite(scaled) and scaled / 2.0**4 > 1e-3  # clipping is active
    assert model.weight.grad.norm().item() == pytest.approx(1e-3, rel=1e-3)
    assert trainer.writer.dump()["grad_norm"] == pytest.approx(1e-3, rel=1e-3)
    assert not torch.equal(model.weight, before)


def test_fp16_with_grad_scaler_trains_and_saves_the_scaler(tmp_path, fp16_on_cpu):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    train_tiny(data, learning_steps=4, use_fp16="true", checkpoint_path=run, export_model=False)
    losses = _losses(run)
    assert losses and all(math.isfinite(x) for x in losses)
    state = load_state_file(run / "state_000004.pt")
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]


# ------------------------------------------------------------------------------ SDPA, TF32


@pytest.mark.parametrize("family", ["gaussian", "ar", "discrete"])
def test_every_family_attends_through_sdpa_by_default(family, monkeypatch):
    """Nothing forces eager attention: every attention module of a default-built network uses
    PyTorch's SDPA (flash / memory-efficient kernels on CUDA), and the forward calls it."""
    from diffuseq.config import RunConfig
    from diffuseq.families import get_family
    from tests.train_helpers import RUNTIME_KEYS, TINY_FLAGS

    layer = {k: v for k, v in TINY_FLAGS.items() if k not in RUNTIME_KEYS}
    config = RunConfig.from_layers((layer | {"family": family, "vocab_size": 50}, "test"))
    model = get_family(family).build_model(config.validate())
    impls = {
        type(m).__name__: m.config._attn_implementation
        for m in model.modules()
        if hasattr(getattr(m, "config", None), "_attn_implementation")
    }
    assert impls and set(impls.values()) == {"sdpa"}, impls
    if family == "gaussian":
        calls = []
        sdpa = torch.nn.functional.scaled_dot_product_attention
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            lambda *a, **k: calls.append(1) or sdpa(*a, **k))  # fmt: skip
        model(torch.randn(2, 24, 16), torch.rand(2)).sum().backward()
        assert len(calls) == 2  # one per encoder layer


def test_tf32_is_a_cuda_switch(monkeypatch):
    from diffuseq.training.precision import enable_tf32

    before = torch.backends.cuda.matmul.fp32_precision
    assert enable_tf32(torch.device("cpu")) is False
    assert torch.backends.cuda.matmul.fp32_precision == before

"""Training loop: exact resume, micro-batch gradient semantics, logged keys, LR, EMA, precision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffuseq.cli.train import main, prepare
from diffuseq.config import TrainConfig
from diffuseq.diffusion.timestep_sampling import TimestepDistribution
from diffuseq.errors import ConfigError
from diffuseq.families.gaussian import GaussianObjective
from diffuseq.runtime import dist
from diffuseq.runtime.logger import MetricsWriter
from diffuseq.store.checkpoint import load_state_file
from diffuseq.training.trainer import Trainer, autocast_dtype
from tests.train_helpers import (
    assert_same,
    make_tiny_data,
    read_metrics,
    tiny_argv,
    train_tiny,
)


@pytest.mark.parametrize("self_cond", ["false", "true"], ids=["plain", "self_cond"])
def test_half_resume_half_is_bit_identical(tmp_path, self_cond):
    data = make_tiny_data(tmp_path / "data")
    steps, half = 40, 20
    argv = tiny_argv(
        data, learning_steps=steps, save_interval=half, ema_rate="0.9,0.999", self_cond=self_cond
    )
    straight, split = tmp_path / "straight", tmp_path / "split"

    assert main(argv + ["--checkpoint_path", str(straight)]) == 0

    trainer = prepare(argv + ["--checkpoint_path", str(split)])
    assert trainer.fit(until=half) == half
    trainer.close()  # releases the run folder's lock (as the end of the process would)
    dist.cleanup()
    middle = load_state_file(split / f"state_{half:06d}.pt")
    # the loss-aware sampler is warmed up (10 losses for every t) before the interruption
    assert int(middle["sampler"]["loss_counts"].min()) == 10
    assert not (split / f"state_{steps:06d}.pt").exists()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    np.random.seed(54321)

    assert main(argv + ["--checkpoint_path", str(split), "--resume_checkpoint", "auto"]) == 0

    a = load_state_file(straight / f"state_{steps:06d}.pt")
    b = load_state_file(split / f"state_{steps:06d}.pt")
    assert a["step"] == b["step"] == steps
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(a[key], b[key], key)
    assert len(a["ema"]) == 2 and a["optimizer"]["state"]  # real content was compared
    for rate in ("0.9", "0.999"):
        name = f"ema_{rate}_{steps:06d}.pt"
        assert_same(load_state_file(straight / name), load_state_file(split / name), name)
    # the same training losses after the first dump following the resume point
    later = lambda run: [r for r in read_metrics(run) if "loss" in r and r["step"] > half]  # noqa: E731
    assert later(straight) == later(split) and len(later(straight)) >= 9
    evals = lambda run: [r for r in read_metrics(run) if "eval_loss" in r]  # noqa: E731
    assert evals(straight) == evals(split)


# ------------------------------------------------------------------------------ a stub set-up

T_STUB = 8


class _StubDiffusion:
    num_timesteps = T_STUB


def _stub_losses(diffusion, model, input_ids, input_mask, t, *, text_model=None):
    """loss_i = (w·x_i)², mse = 2·loss, nll = loss + 1 for a linear "model"."""
    out = model(input_ids.float()).squeeze(-1)
    loss = out**2
    return {"loss": loss, "mse": 2 * loss, "nll": loss + 1, "decoder_nll": loss}


class _FixedSampler(TimestepDistribution):
    """Hands out preset (t, weights) pairs in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def weights(self):
        return np.ones(T_STUB)

    def sample(self, batch_size, *, device="cpu", generator=None):
        t, w = self.draws.pop(0)
        assert len(t) == batch_size
        return torch.tensor(t), torch.tensor(w, dtype=torch.float32)


def _stub_trainer(tmp_path, draws, **train):
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    config = TrainConfig(
        **{
            "lr": 0.1,
            "batch_size": 4,
            "microbatch": 2,
            "learning_steps": 10,
            "ema_rate": "0.5",
            **train,
        }
    )
    writer = MetricsWriter(path=tmp_path / "metrics.jsonl", console=False)
    trainer = Trainer(
        model=model,
        objective=GaussianObjective(_StubDiffusion(), _FixedSampler(draws), _stub_losses),
        train_batches=iter([]),
        valid_batches=None,
        config=config,
        run_dir=tmp_path,
        device=torch.device("cpu"),
        writer=writer,
        progress=False,
    )
    return trainer, model


BATCH = {
    "input_ids": torch.tensor([[1, 0, 2], [0, 1, 1], [3, 1, 0], [1, 1, 1]]),
    "input_mask": torch.ones(4, 3, dtype=torch.long),
}
DRAWS = [([0, 1], [1.0, 2.0]), ([2, 7], [3.0, 4.0])]


def test_gradient_is_sum_of_weighted_microbatch_means(tmp_path):
    trainer, model = _stub_trainer(tmp_path, DRAWS)
    trainer.forward_backward(BATCH)
    w = model.weight.detach().clone().requires_grad_(True)
    x = BATCH["input_ids"].float()
    losses = (x @ w.T).squeeze(-1) ** 2
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (losses[:2] * weights[:2]).mean() + (losses[2:] * weights[2:]).mean()  # not / 2
    (grad,) = torch.autograd.grad(expected, w)
    torch.testing.assert_close(model.weight.grad, grad, rtol=1e-6, atol=0)


def test_logged_keys_are_weighted_means_and_quartiles(tmp_path):
    trainer, model = _stub_trainer(tmp_path, DRAWS)
    with torch.no_grad():
        losses = ((BATCH["input_ids"].float() @ model.weight.T).squeeze(-1) ** 2).tolist()
    trainer.run_step(BATCH)
    record = trainer.writer.dump()
    wl = [loss * w for loss, w in zip(losses, [1.0, 2.0, 3.0, 4.0])]  # importance-weighted losses
    # t = 0, 1, 2, 7 with T = 8 -> quartiles 0, 0, 1, 3 (q2 has no example: no key)
    assert set(record) == {"step", "samples", "grad_norm"} | {
        f"{k}{s}" for k in ("loss", "mse", "nll", "decoder_nll") for s in ("", "_q0", "_q1", "_q3")
    }
    assert record["step"] == 0 and record["samples"] == 4
    assert record["loss"] == pytest.approx(((wl[0] + wl[1]) / 2 + (wl[2] + wl[3]) / 2) / 2)
    assert record["loss_q0"] == pytest.approx((wl[0] + wl[1]) / 2)
    assert record["loss_q1"] == pytest.approx(wl[2]) and record["loss_q3"] == pytest.approx(wl[3])
    assert record["mse_q3"] == pytest.approx(2 * wl[3])
    assert record["nll_q0"] == pytest.approx(((losses[0] + 1) * 1 + (losses[1] + 1) * 2) / 2)
    assert record["grad_norm"] > 0
    # every term the loss function returns is logged, not only the original's key set
    assert record["decoder_nll"] == pytest.approx(record["loss"])


def test_lr_anneal_and_ema_update(tmp_path):
    trainer, model = _stub_trainer(tmp_path, DRAWS)
    trainer.step = 5  # half way through learning_steps = 10
    before = model.weight.detach().clone()
    trainer.forward_backward(BATCH)
    trainer.optimize()
    assert trainer.step == 6
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 5 / 10))
    after = model.weight.detach()
    assert not torch.equal(before, after)
    torch.testing.assert_close(trainer.ema[0.5][0], 0.5 * before + 0.5 * after)


def test_gradient_clipping(tmp_path):
    trainer, model = _stub_trainer(tmp_path, DRAWS, gradient_clipping=1e-3)
    trainer.forward_backward(BATCH)
    raw = model.weight.grad.norm().item()
    trainer.optimize()
    assert raw > 1e-3
    assert trainer.writer.dump()["grad_norm"] == pytest.approx(
        1e-3, rel=1e-4
    )  # logged after clipping


def test_precision_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype(TrainConfig(), cpu) is None
    assert autocast_dtype(TrainConfig(bf16=True), cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="CUDA"):
        autocast_dtype(TrainConfig(use_fp16=True), cpu)


def test_bf16_on_cpu_trains(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    train_tiny(data, learning_steps=3, bf16="true", checkpoint_path=run, export_model=False)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)


def test_loss_goes_down(tmp_path):
    data = make_tiny_data(tmp_path / "data", n_train=64)
    run = tmp_path / "run"
    train_tiny(
        data,
        learning_steps=30,
        log_interval=1,
        eval_interval=1000,
        save_interval=1000,
        lr=0.01,
        schedule_sampler="uniform",
        diff_steps=50,
        checkpoint_path=run,
        export_model=False,
    )
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.7 * first, (first, last)


def test_the_last_log_line_comes_before_the_final_save(tmp_path):
    """The last, partial log interval (update index 4; logged every 3) is logged before
    "saved step 5"."""
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    train_tiny(data, learning_steps=5, log_interval=3, eval_interval=100, save_interval=5,
               checkpoint_path=str(run), export_model=False)  # fmt: skip
    log = (run / "log.txt").read_text()
    assert "INFO step 4 |" in log and "INFO saved step 5 " in log
    assert log.index("INFO step 4 |") < log.index("INFO saved step 5 ")
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [0, 3, 4]

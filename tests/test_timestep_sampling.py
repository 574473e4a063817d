"""Timestep samplers: G7 golden replay, importance weights, resume state, 2-rank all-gather."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.timestep_sampling import (
    TIMESTEP_DISTRIBUTIONS,
    FixStepTimesteps,
    LossSecondMomentTimesteps,
    UniformTimesteps,
    create_timestep_distribution,
)
from tests.conftest import load_golden

# Class names the original's create_timestep_distribution returns -> ours.
# The original's class names (step_sample.py) -> ours.
ORIGINAL_CLASSES = {
    "UniformSampler": UniformTimesteps,
    "LossSecondMomentResampler": LossSecondMomentTimesteps,
    "FixSampler": FixStepTimesteps,
}
F64 = dict(rtol=1e-12, atol=0)


def _g7_sampler(g7) -> LossSecondMomentTimesteps:
    return LossSecondMomentTimesteps(
        g7["T"], history_per_term=g7["history_per_term"], uniform_prob=g7["uniform_prob"]
    )


def test_g7_replay_every_call(golden_dir):
    g7 = load_golden(golden_dir, "g7_lossaware_sampler.pt")
    sampler = _g7_sampler(g7)
    first_warm = None
    for i, call in enumerate(g7["calls"]):
        sampler.update_with_all_losses(call["ts"], call["losses"])
        np.testing.assert_allclose(sampler.weights(), g7["weights_after_call"][i].numpy(), **F64)
        assert np.array_equal(sampler.loss_counts, g7["counts_after_call"][i].numpy())
        expected_history = g7["loss_history_after_call"][i].numpy()
        np.testing.assert_allclose(sampler.loss_history, expected_history, **F64)
        assert sampler.warmed_up() == g7["warmed_up_after_call"][i]
        if first_warm is None and sampler.warmed_up():
            first_warm = i
    assert first_warm == g7["first_warm_call_index"]
    np.testing.assert_allclose(sampler.weights(), g7["final_weights"].numpy(), **F64)
    np.testing.assert_allclose(sampler.loss_history, g7["final_loss_history"].numpy(), **F64)

    after = g7["sample_after_final"]
    np.random.seed(after["numpy_seed"])
    t, weights = sampler.sample(after["batch_size"], device="cpu")
    assert t.dtype == torch.int64 and weights.dtype == torch.float32
    assert torch.equal(t, after["indices"])
    torch.testing.assert_close(weights, after["importance_weights"], rtol=1e-6, atol=0)
    p = g7["final_weights"].numpy() / g7["final_weights"].numpy().sum()
    expected = torch.from_numpy(1 / (g7["T"] * p[after["indices"].numpy()])).float()
    assert torch.equal(weights, expected)


def test_g7_update_with_local_losses_single_process(golden_dir):
    g7 = load_golden(golden_dir, "g7_lossaware_sampler.pt")
    sampler = _g7_sampler(g7)
    for call in g7["calls"]:
        losses = torch.tensor(call["losses"], dtype=torch.float32)
        sampler.update_with_local_losses(torch.tensor(call["ts"]), losses)
    np.testing.assert_allclose(sampler.weights(), g7["final_weights"].numpy(), **F64)


def test_g7_uniform_fixstep_and_names(golden_dir):
    g7 = load_golden(golden_dir, "g7_lossaware_sampler.pt")
    T = g7["T"]
    np.testing.assert_array_equal(UniformTimesteps(T).weights(), g7["uniform_weights"].numpy())
    np.testing.assert_array_equal(FixStepTimesteps(T).weights(), g7["fixstep_weights"].numpy())
    for name, original_class in g7["named"].items():
        assert type(create_timestep_distribution(name, T)) is ORIGINAL_CLASSES[original_class]


def test_fixstep_odd_T_has_T_minus_1_entries():
    sampler = FixStepTimesteps(7)
    assert sampler.weights().tolist() == [1, 1, 1, 0.5, 0.5, 0.5]
    t, w = sampler.sample(200, generator=np.random.default_rng(0))
    assert int(t.max()) <= 5  # step 6 is never drawn, as in the original
    # p = w / 4.5 over 6 entries: importance weights 1/(6·p) = 0.75 (first half), 1.5 (second).
    assert sorted(set(w.tolist())) == [0.75, 1.5]
    assert torch.equal(w, torch.where(t < 3, 0.75, 1.5))


def test_sample_with_generator_and_named_factory():
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=30)
    sampler = create_timestep_distribution("uniform", diffusion)
    a = sampler.sample(8, device="cpu", generator=np.random.default_rng(5))
    b = sampler.sample(8, device="cpu", generator=np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], torch.ones(8))
    assert a[0].min() >= 0 and a[0].max() < 30
    with pytest.raises(ValueError) as info:
        create_timestep_distribution("second-moment", 30)
    assert all(name in str(info.value) for name in TIMESTEP_DISTRIBUTIONS)


def test_lossaware_state_dict_resume():
    rng = np.random.default_rng(0)
    calls = [(rng.integers(0, 6, 5).tolist(), rng.random(5).tolist()) for _ in range(30)]
    straight = LossSecondMomentTimesteps(6)
    resumed = LossSecondMomentTimesteps(6)
    for ts, losses in calls[:12]:
        straight.update_with_all_losses(ts, losses)
        resumed.update_with_all_losses(ts, losses)
    state = resumed.state_dict()
    restored = LossSecondMomentTimesteps(6)
    restored.load_state_dict(state)
    for ts, losses in calls[12:]:
        straight.update_with_all_losses(ts, losses)
        restored.update_with_all_losses(ts, losses)
    assert straight.warmed_up()
    assert np.array_equal(straight.weights(), restored.weights())
    assert np.array_equal(straight.loss_history, restored.loss_history)
    with pytest.raises(ValueError):
        LossSecondMomentTimesteps(7).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# two ranks over gloo

T_DIST, STEPS = 6, 25


def _rank_feed(rank: int, step: int) -> tuple[list[int], list[float]]:
    """Different data per rank and unequal batch sizes (rank 1 has one example more)."""
    rng = np.random.default_rng(1000 * rank + step)
    n = 3 + rank
    return rng.integers(0, T_DIST, n).tolist(), np.float32(rng.random(n) * (rank + 1)).tolist()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        sampler = LossSecondMomentTimesteps(T_DIST, history_per_term=3)
        for step in range(STEPS):
            ts, losses = _rank_feed(rank, step)
            local_losses = torch.tensor(losses, dtype=torch.float32)
            sampler.update_with_local_losses(torch.tensor(ts), local_losses)
        np.savez(
            f"{out_dir}/rank{rank}.npz",
            weights=sampler.weights(),
            history=sampler.loss_history,
            counts=sampler.loss_counts,
        )
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_end_with_identical_state(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, str(tmp_path))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    r0, r1 = (np.load(tmp_path / f"rank{rank}.npz") for rank in range(2))
    replay = LossSecondMomentTimesteps(T_DIST, history_per_term=3)
    for step in range(STEPS):
        for rank in range(2):  # rank order
            replay.update_with_all_losses(*_rank_feed(rank, step))
    assert replay.warmed_up()
    for key in ("weights", "history", "counts"):
        assert np.array_equal(r0[key], r1[key]), key
    assert np.array_equal(r0["weights"], replay.weights())
    assert np.array_equal(r0["history"], replay.loss_history)

"""Unit tests of the samplers (samplers.py, solvers.py) and the per-example noise (noise.py).

A tiny random denoiser and a small T keep every test well under a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.sampling.ancestral import ancestral_sample
from diffuseq.sampling.ddim import (
    adjacent_timesteps,
    ddim_adjacent_sample,
    ddim_sample,
    ddim_timesteps,
)
from diffuseq.sampling.dpm_solver import dpm_scheduler, dpm_solver_sample, sde_dpm_solver_sample
from diffuseq.sampling.dpm_v2 import DiscreteVPSchedule, dpm_solver_v2_sample
from diffuseq.sampling.inputs import SamplerInputs
from diffuseq.sampling.noise import NoiseSource, ReplayNoise, example_seed
from diffuseq.sampling.rounding import make_rounding_fn
from tests.conftest import tiny_denoiser

T = 20
B, L, H = 3, 8, 8


@pytest.fixture(scope="module")
def setup():
    model = tiny_denoiser(
        vocab_size=30, hidden_dim=H, max_position_embeddings=L, seed=1, learned_mean_embed=True
    ).eval()
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T)
    ids = torch.randint(4, 30, (B, L))
    mask = torch.tensor([[0] * 3 + [1] * (L - 3), [0] * 4 + [1] * (L - 4), [0] * 2 + [1] * (L - 2)])
    x_start = model.get_embeds(ids).detach()
    z = torch.randn(B, L, H)
    x_T = torch.where(mask.unsqueeze(-1) == 0, x_start, z)
    return model, diffusion, mask, x_start, x_T


class Spy:
    """Counts model calls and records the time inputs."""

    def __init__(self, model):
        self.model, self.times, self.inputs = model, [], []

    def __call__(self, x, t):
        self.times.append(t.clone())
        self.inputs.append(x.clone())
        return self.model(x, t)


def _kwargs(setup, **extra):
    model, _, mask, x_start, _ = setup
    rounding = make_rounding_fn(model.word_embedding.weight)
    return {"input_mask": mask, "x_start": x_start, "denoised_fn": rounding, **extra}


# ------------------------------------------------------------------------------ timestep grids


def test_ddim_timesteps_grid():
    for steps in (1, 2, 5, 7, T):
        grid = ddim_timesteps(T, steps)
        assert len(grid) == len(set(grid)) == steps
        assert grid[0] == T - 1 and grid == sorted(grid, reverse=True)
        assert steps == 1 or grid[-1] == 0
    assert ddim_timesteps(2000, 4) == [1999, 1333, 666, 0]
    with pytest.raises(ValueError):
        ddim_timesteps(T, T + 1)


def test_adjacent_timesteps_is_original_slice():
    assert adjacent_timesteps(2000, 10) == list(range(1999, 0, -200))
    assert adjacent_timesteps(2000, 200)[-1] == 9
    assert len(adjacent_timesteps(100, 8)) == 9  # ⌊99/12⌋ + 1 calls, not 8


# ------------------------------------------------------------------------------ DDIM


def test_ddim_visits_requested_levels_and_is_deterministic(setup):
    model, diffusion, mask, x_start, x_T = setup
    for steps in (1, 4, T):
        spy = Spy(model)
        out1 = ddim_sample(SamplerInputs(spy, diffusion, x_T, steps=steps, **_kwargs(setup)))
        levels = ddim_timesteps(T, steps)
        assert len(spy.times) == steps
        for t_in, level in zip(spy.times, levels):
            assert torch.equal(t_in, diffusion.scale_timesteps(torch.full((B,), level)))
        out2 = ddim_sample(SamplerInputs(model, diffusion, x_T, steps=steps, **_kwargs(setup)))
        assert torch.equal(out1, out2)
        # ends at the clean level: the output is the (anchored) rounded x̂_0 of the last call
        rounded, _ = make_rounding_fn(model.word_embedding.weight)(
            model(spy.inputs[-1], spy.times[-1])
        )
        target = mask.unsqueeze(-1) == 1
        torch.testing.assert_close(
            out1[target.expand_as(out1)], rounded[target.expand_as(rounded)], rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            out1[~target.expand_as(out1)], x_start[~target.expand_as(x_start)], rtol=0, atol=0
        )


def test_ddim_step_equals_eq12_on_our_tables(setup):
    """Each diffusers step equals GaussianDiffusion.ddim_sample(t → next level) (eq. 12, float64 tables)."""
    model, diffusion, mask, x_start, x_T = setup
    steps = 5
    levels = ddim_timesteps(T, steps)
    states = []
    ddim_sample(
        SamplerInputs(
            model,
            diffusion,
            x_T,
            steps=steps,
            callback=lambda info: states.append(info["sample"]),
            **_kwargs(setup),
        )
    )
    prev = x_T
    rounding = make_rounding_fn(model.word_embedding.weight)
    for k, level in enumerate(levels):
        t_prev = levels[k + 1] if k + 1 < steps else -1
        ref = diffusion.ddim_sample(
            model,
            prev,
            torch.full((B,), level),
            t_prev=t_prev,
            mask=mask,
            x_start=x_start,
            denoised_fn=rounding,
        )
        torch.testing.assert_close(states[k], ref["sample"], rtol=1e-5, atol=1e-5)
        prev = states[k]


def test_ddim_clamp_step_gates_rounding(setup):
    model, diffusion, _, _, x_T = setup
    seen = []
    ddim_sample(
        SamplerInputs(
            model, diffusion, x_T, steps=T, clamp_step=7, callback=seen.append, **_kwargs(setup)
        )
    )
    assert [("tokens" in info) for info in seen] == [info["t"] >= 7 for info in seen]


def test_ddim_v2_mean_shift(setup):
    """With μ the network's first input is x_T + μ·m (the v2 start), as in the ancestral loop."""
    model, diffusion, mask, _, x_T = setup
    mu = model.mean_embed.detach()
    spy = Spy(model)
    ddim_sample(SamplerInputs(spy, diffusion, x_T, steps=3, mean_embed=mu, **_kwargs(setup)))
    torch.testing.assert_close(spy.inputs[0], x_T + mu * mask.unsqueeze(-1), rtol=0, atol=0)


def test_ddim_adjacent_calls(setup):
    model, diffusion, _, _, x_T = setup
    spy = Spy(model)
    ddim_adjacent_sample(SamplerInputs(spy, diffusion, x_T, steps=6, **_kwargs(setup)))
    expected = adjacent_timesteps(T, 6)
    assert [float(t[0]) for t in spy.times] == [
        float(diffusion.scale_timesteps(torch.tensor([t]))) for t in expected
    ]


# ------------------------------------------------------------------------------ DPM-Solver++


@pytest.mark.parametrize("steps", [1, 2, 3, 10, T - 1, T])
def test_dpm_solver_model_calls(setup, steps):
    model, diffusion, mask, x_start, x_T = setup
    spy = Spy(model)
    out = dpm_solver_sample(SamplerInputs(spy, diffusion, x_T, steps=steps, **_kwargs(setup)))
    assert len(spy.times) == steps
    assert float(spy.times[0][0]) == float(diffusion.scale_timesteps(torch.tensor([T - 1])))
    assert torch.equal(
        out, dpm_solver_sample(SamplerInputs(model, diffusion, x_T, steps=steps, **_kwargs(setup)))
    )
    assert torch.equal(out[mask == 0], x_start[mask == 0])


def test_dpm_solver_final_is_rounded_prediction(setup):
    """The last update goes to σ = 0, i.e. returns the last rounded x̂_0 (target positions = E[tokens])."""
    model, diffusion, mask, x_start, x_T = setup
    seen = []
    out = dpm_solver_sample(
        SamplerInputs(model, diffusion, x_T, steps=4, callback=seen.append, **_kwargs(setup))
    )
    E = model.word_embedding.weight.detach()
    torch.testing.assert_close(
        out, torch.where(mask.unsqueeze(-1) == 0, x_start, E[seen[-1]["tokens"]]), rtol=0, atol=1e-5
    )


# ------------------------------------------------------------------------------ SDE-DPM-Solver++


def _noise(seed, rows=B):
    return NoiseSource([seed] * rows, range(rows), shape=(L, H))


@pytest.mark.parametrize("steps", [1, 4, T])
def test_sde_dpm_solver_calls_anchor_and_final(setup, steps):
    """``steps`` calls from T−1; the last update goes to σ = 0 (the last rounded x̂_0)."""
    model, diffusion, mask, x_start, x_T = setup
    spy, seen = Spy(model), []
    out = sde_dpm_solver_sample(
        SamplerInputs(
            spy,
            diffusion,
            x_T,
            steps=steps,
            noise=_noise(5),
            callback=seen.append,
            **_kwargs(setup),
        )
    )
    assert len(spy.times) == steps
    assert float(spy.times[0][0]) == float(diffusion.scale_timesteps(torch.tensor([T - 1])))
    assert torch.equal(out[mask == 0], x_start[mask == 0])
    E = model.word_embedding.weight.detach()
    torch.testing.assert_close(
        out, torch.where(mask.unsqueeze(-1) == 0, x_start, E[seen[-1]["tokens"]]), rtol=0, atol=1e-5
    )


def test_sde_dpm_solver_noise_is_per_row_and_seeded(setup):
    """Same seeds: identical; other seeds: different; a row alone equals the row in a batch."""
    model, diffusion, mask, x_start, x_T = setup

    def sample(seed):
        return sde_dpm_solver_sample(
            SamplerInputs(
                model,
                diffusion,
                x_T,
                steps=6,
                noise=_noise(seed),
                **_kwargs(setup, denoised_fn=None),
            )
        )

    first = sample(5)
    assert torch.equal(first, sample(5))
    assert not torch.allclose(first[mask == 1], sample(6)[mask == 1])
    deterministic = dpm_solver_sample(
        SamplerInputs(model, diffusion, x_T, steps=6, **_kwargs(setup, denoised_fn=None))
    )
    assert not torch.allclose(first[mask == 1], deterministic[mask == 1])
    alone = sde_dpm_solver_sample(
        SamplerInputs(
            model,
            diffusion,
            x_T[1:2],
            steps=6,
            noise=NoiseSource([5], [1], shape=(L, H)),
            input_mask=mask[1:2],
            x_start=x_start[1:2],
        )
    )
    torch.testing.assert_close(alone[0], first[1], rtol=1e-5, atol=1e-5)


def test_sde_dpm_solver_first_update_hand_checked(setup):
    """A network predicting c, stored noise ε: the first (first-order) update from s = T−1 to the
    next level t is (σ_t/σ_s)·e^{−h}·x_T + α_t(1 − e^{−2h})·c + σ_t·√(1 − e^{−2h})·ε, with
    α = √ᾱ, σ = √(1 − ᾱ), h = λ_t − λ_s, λ = log(α/σ) (float64 reference); the final state is c."""
    _, diffusion, mask, x_start, x_T = setup
    c, eps = torch.randn(B, L, H), torch.randn(2, B, L, H)
    seen = []
    out = sde_dpm_solver_sample(
        SamplerInputs(
            lambda x, t: c,
            diffusion,
            x_T,
            steps=2,
            noise=ReplayNoise(eps),
            input_mask=mask,
            x_start=x_start,
            callback=seen.append,
        )
    )
    s, t = dpm_scheduler(diffusion, 2, algorithm_type="sde-dpmsolver++").timesteps.tolist()
    abar = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
    alpha_s, sigma_s = math.sqrt(abar[s]), math.sqrt(1 - abar[s])
    alpha_t, sigma_t = math.sqrt(abar[t]), math.sqrt(1 - abar[t])
    h = math.log(alpha_t / sigma_t) - math.log(alpha_s / sigma_s)
    expected = (
        sigma_t / sigma_s * math.exp(-h) * x_T.double()
        + alpha_t * (1 - math.exp(-2 * h)) * c.double()
        + sigma_t * math.sqrt(1 - math.exp(-2 * h)) * eps[0].double()
    )
    expected = torch.where(mask.unsqueeze(-1) == 0, x_start.double(), expected).float()
    assert (s, t) == (T - 1, 10)
    torch.testing.assert_close(seen[0]["sample"], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, torch.where(mask.unsqueeze(-1) == 0, x_start, c))


def test_sde_dpm_solver_top_p_reaches_noise(setup):
    model, diffusion, _, _, x_T = setup
    biggest = []

    class Watch(NoiseSource):
        def gaussian(self, *, top_p=None):
            out = super().gaussian(top_p=top_p)
            biggest.append(float(out.abs().max()))
            return out

    noise = Watch([1] * B, range(B), shape=(L, H))
    sde_dpm_solver_sample(
        SamplerInputs(model, diffusion, x_T, steps=5, noise=noise, top_p=0.5, **_kwargs(setup))
    )
    assert len(biggest) == 5 and max(biggest) <= 0.5


# ------------------------------------------------------------------------------ ancestral


def test_ancestral_calls_clamp_and_final(setup):
    model, diffusion, mask, x_start, x_T = setup
    spy = Spy(model)
    seen = []
    noise = NoiseSource([5] * B, range(B), shape=(L, H))
    out = ancestral_sample(
        SamplerInputs(
            spy, diffusion, x_T, noise=noise, clamp_step=4, callback=seen.append, **_kwargs(setup)
        )
    )
    assert [info["t"] for info in seen] == list(range(T))[::-1]
    assert [("tokens" in info) for info in seen] == [t >= 4 for t in range(T)[::-1]]
    assert len(spy.times) == T
    assert torch.equal(out[mask == 0], x_start[mask == 0])


def test_ancestral_top_p_reaches_noise(setup):
    """--top_p truncates every step's noise (|ε| ≤ top_p)."""
    model, diffusion, _, _, x_T = setup

    class Watch(NoiseSource):
        biggest = 0.0

        def gaussian(self, *, top_p=None):
            out = super().gaussian(top_p=top_p)
            Watch.biggest = max(Watch.biggest, float(out.abs().max()))
            return out

    ancestral_sample(
        SamplerInputs(
            model,
            diffusion,
            x_T,
            noise=Watch([1] * B, range(B), shape=(L, H)),
            top_p=0.5,
            **_kwargs(setup),
        )
    )
    assert 0.4 < Watch.biggest <= 0.5


# ------------------------------------------------------------------------------ noise


def test_noise_source_rows_are_independent_streams():
    a = NoiseSource([7, 7, 8], [0, 1, 0], shape=(4, 3))
    b = NoiseSource([7], [1], shape=(4, 3))
    first_a, first_b = a.gaussian(), b.gaussian()
    assert torch.equal(first_a[1], first_b[0])
    assert not torch.equal(first_a[0], first_a[1]) and not torch.equal(first_a[0], first_a[2])
    u_a, u_b = a.uniform(), b.uniform()
    assert (
        torch.equal(u_a[1], u_b[0])
        and u_a.shape == (3, 4)
        and 0 <= float(u_a.min())
        and float(u_a.max()) < 1
    )
    truncated = NoiseSource([1], [0], shape=(50, 50)).gaussian(top_p=1.0)
    assert float(truncated.abs().max()) <= 1.0
    assert example_seed(101, 3) != example_seed(101, 4) != example_seed(102, 3)


def test_replay_noise_order():
    g = torch.arange(6.0).reshape(3, 2)
    replay = ReplayNoise(g)
    assert [float(replay.gaussian()[0]) for _ in range(3)] == [0.0, 2.0, 4.0]


# ------------------------------------------------------------------------------ v2 solver


def test_vp_schedule_matches_discrete_definition():
    betas = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T).betas
    vp = DiscreteVPSchedule(betas)
    n = torch.arange(T)
    log_alpha = 0.5 * np.cumsum(np.log(1 - betas))
    torch.testing.assert_close(
        vp.log_alpha((n + 1) / T),
        torch.tensor(log_alpha, dtype=torch.float32),
        rtol=1e-6,
        atol=1e-6,
    )
    mid = torch.tensor([(2.5) / T])  # halfway between t_1 and t_2
    assert float(vp.log_alpha(mid)) == pytest.approx(0.5 * (log_alpha[1] + log_alpha[2]), rel=1e-5)


def _reference_schedule(betas):
    """α(t), σ(t), λ(t) of docs/original.md §8.1 in float64 (numpy interpolation on t_n = (n+1)/N)."""
    log_alpha = 0.5 * np.cumsum(np.log(1 - betas))
    t_grid = np.arange(1, len(betas) + 1) / len(betas)

    def alpha(t):
        return math.exp(np.interp(t, t_grid, log_alpha))

    def sigma(t):
        return math.sqrt(1 - alpha(t) ** 2)

    def lam(t):
        return math.log(alpha(t)) - math.log(sigma(t))

    return alpha, sigma, lam


@pytest.mark.parametrize("steps", [2, 3, 12])
def test_dpm_v2_variant_hand_checked(setup, steps):
    """A network that always predicts c: every data prediction is c, so D₁ = 0 and the final
    state is the closed form [α_t + (σ_t/σ_s)(1 − α_s)]·c of docs/original.md §8.4 (s = t_{steps−1}, t = 1/N);
    the network sees t·1000 on the grid linspace(1, 1/N, steps+1) (steps calls, last point unused)."""
    _, diffusion, mask, x_start, x_T = setup
    c = torch.randn(B, L, H)
    times = []

    def const(x, t):
        times.append(t.clone())
        return c

    out = dpm_solver_v2_sample(
        SamplerInputs(const, diffusion, x_T, steps=steps, input_mask=mask, x_start=x_start)
    )
    grid = np.linspace(1.0, 1.0 / T, steps + 1)
    assert len(times) == steps
    for t_in, g in zip(times, grid[:-1]):
        torch.testing.assert_close(
            t_in, torch.full((B,), g * 1000, dtype=torch.float32), rtol=1e-6, atol=1e-4
        )
    # closed form in float64, independent of the solver code
    alpha, sigma, _ = _reference_schedule(diffusion.betas)
    s, t = grid[-2], grid[-1]
    factor = alpha(t) + sigma(t) / sigma(s) * (1 - alpha(s))
    expected = torch.where(mask.unsqueeze(-1) == 0, x_start, factor * c)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_dpm_v2_variant_second_order_update(setup):
    """A network predicting c·(1 + t_in/1000): checks the order-2 term −½ α_t φ₁ D₁ against float64."""
    _, diffusion, mask, x_start, x_T = setup
    c = torch.randn(B, L, H)
    steps = 3
    out = dpm_solver_v2_sample(
        SamplerInputs(
            lambda x, t: c * (1 + t[:, None, None] / 1000),
            diffusion,
            x_T,
            steps=steps,
            input_mask=mask,
            x_start=torch.zeros_like(x_start),
        ),
        order=2,
    )
    alpha, sigma, lam = _reference_schedule(diffusion.betas)
    grid = np.linspace(1.0, 1.0 / T, steps + 1)
    d = [1 + g for g in grid]  # D at each grid point, in units of c
    x = d[0]
    # k = 1: first order; then D; k = 2: second order (steps < 10: order min(2, 2) = 2); k = 3: first order
    x = (
        sigma(grid[1]) / sigma(grid[0]) * x
        - alpha(grid[1]) * math.expm1(-(lam(grid[1]) - lam(grid[0]))) * d[0]
    )
    x = d[1]
    h = lam(grid[2]) - lam(grid[1])
    r0 = (lam(grid[1]) - lam(grid[0])) / h
    phi = math.expm1(-h)
    x = (
        sigma(grid[2]) / sigma(grid[1]) * x
        - alpha(grid[2]) * phi * d[1]
        - 0.5 * alpha(grid[2]) * phi * (d[1] - d[0]) / r0
    )
    x = d[2]
    x = (
        sigma(grid[3]) / sigma(grid[2]) * x
        - alpha(grid[3]) * math.expm1(-(lam(grid[3]) - lam(grid[2]))) * d[2]
    )
    expected = torch.where(mask.unsqueeze(-1) == 0, torch.zeros_like(c), x * c)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_sde_dpm_solver_needs_a_noise_stream(setup):
    model, diffusion, _, _, x_T = setup
    with pytest.raises(ValueError, match="pass noise=NoiseSource"):
        sde_dpm_solver_sample(SamplerInputs(model, diffusion, x_T, steps=3, **_kwargs(setup)))

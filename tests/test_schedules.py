"""Beta schedules, derived tables and timestep respacing (no golden files needed)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import diffuseq.diffusion.respace
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.respace import respaced_betas, space_timesteps
from diffuseq.diffusion.schedules import MAX_BETA, SCHEDULE_NAMES, get_named_beta_schedule


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("T", [60, 100, 2000])
def test_schedule_invariants(name, T):
    betas = get_named_beta_schedule(name, T)
    assert betas.shape == (T,) and betas.dtype == np.float64
    assert (betas > 0).all() and (betas <= MAX_BETA).all()
    alphas_cumprod = np.cumprod(1.0 - betas)
    assert (np.diff(alphas_cumprod) < 0).all()  # ᾱ strictly decreasing
    assert 0 < alphas_cumprod[-1] < alphas_cumprod[0] < 1


def test_linear_schedules_with_few_steps_are_rejected():
    """The linear family is not clipped: for small T the last beta exceeds 1 and, like v1's
    assert, the diffusion refuses it."""
    betas = get_named_beta_schedule("trunc_lin", 20)
    assert betas[-1] == pytest.approx(1.01)
    with pytest.raises(ValueError, match="beta"):
        GaussianDiffusion(betas=betas)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_tables_are_consistent(name):
    d = GaussianDiffusion(betas=get_named_beta_schedule(name, 60))
    ab = d.alphas_cumprod
    np.testing.assert_array_equal(d.alphas_cumprod_prev, np.r_[1.0, ab[:-1]])
    np.testing.assert_array_equal(d.alphas_cumprod_next, np.r_[ab[1:], 0.0])
    squares = d.sqrt_alphas_cumprod**2 + d.sqrt_one_minus_alphas_cumprod**2
    np.testing.assert_allclose(squares, 1.0, rtol=1e-14)
    np.testing.assert_allclose(d.sqrt_recip_alphas_cumprod * d.sqrt_alphas_cumprod, 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.exp(d.log_one_minus_alphas_cumprod), 1 - ab, rtol=1e-14)
    # Posterior q(z_{t−1}|z_t,z_0): variance and mean coefficients from the two Gaussians.
    prev = d.alphas_cumprod_prev
    np.testing.assert_allclose(d.posterior_variance, d.betas * (1 - prev) / (1 - ab), rtol=1e-14)
    assert d.posterior_variance[0] == 0 and d.posterior_mean_coef2[0] == 0
    assert d.posterior_mean_coef1[0] == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(
        d.posterior_log_variance_clipped[1:], np.log(d.posterior_variance[1:]), rtol=1e-14
    )
    assert d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1]
    # E[z_{t−1}|z_0] = (coef1 + coef2·√ᾱ_t)·z_0 must equal √ᾱ_{t−1}·z_0.
    np.testing.assert_allclose(
        d.posterior_mean_coef1 + d.posterior_mean_coef2 * np.sqrt(ab), np.sqrt(prev), rtol=1e-12
    )
    assert d.model_variance[0] == d.posterior_variance[1]
    np.testing.assert_array_equal(d.model_variance[1:], d.betas[1:])
    np.testing.assert_allclose(np.exp(d.model_log_variance), d.model_variance, rtol=1e-14)


def test_sqrt_schedule_spec_values():
    """Numbers quoted in docs/original.md §5.1 for sqrt, T=2000."""
    d = GaussianDiffusion(betas=get_named_beta_schedule("sqrt", 2000))
    assert d.betas[0] == pytest.approx(0.0146413, abs=1e-7)
    assert d.sqrt_one_minus_alphas_cumprod[0] == pytest.approx(0.1210013, abs=1e-7)
    assert d.betas[1] == pytest.approx(0.0088891, abs=1e-7)
    assert d.betas[-1] == MAX_BETA
    assert d.alphas_cumprod[-1] == pytest.approx(2.0204e-7, rel=1e-4)
    for t, value in [(19, 0.9086), (99, 0.7840), (999, 0.2958), (1499, 0.1353)]:
        assert d.alphas_cumprod[t] == pytest.approx(value, abs=1e-4)
    # For t < T−1, ᾱ_t = (1 − √((t+1)/T + 1e-4)) / 0.99 exactly (telescoping product).
    t = np.arange(1999)
    closed_form = (1 - np.sqrt((t + 1) / 2000 + 1e-4)) / 0.99
    np.testing.assert_allclose(d.alphas_cumprod[:-1], closed_form, rtol=1e-10)


def test_warmup_decay_ends_above_pure_noise():
    betas = get_named_beta_schedule("warmup-decay", 2000)
    np.testing.assert_array_equal(betas[:1800], get_named_beta_schedule("sqrt", 2000)[:1800])
    assert betas[-1] == 1e-4
    assert betas[1800] == pytest.approx(0.0051395, abs=1e-6)
    assert np.cumprod(1 - betas)[-1] == pytest.approx(0.0306, abs=1e-3)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError) as info:
        get_named_beta_schedule("quadratic", 10)
    for name in SCHEDULE_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="pw_lin"):
        get_named_beta_schedule("pw_lin", 10)


def test_space_timesteps_docstring_example():
    results = doctest.testmod(diffuseq.diffusion.respace, verbose=False)
    assert results.attempted >= 4 and results.failed == 0
    kept = sorted(space_timesteps(300, [10, 15, 20]))
    assert kept[:12] == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99, 100, 107]
    assert kept[-1] == 299 and len(kept) == 45


def test_space_timesteps_variants():
    assert space_timesteps(2000, "") == set(range(2000))
    assert space_timesteps(2000, [2000]) == set(range(2000))  # the original's default
    assert space_timesteps(10, "3") == {0, 4, 9}  # round(4.5) == 4 (banker's rounding)
    assert space_timesteps(11, "2,2") == {0, 5, 6, 10}  # first section one step longer
    assert space_timesteps(10, [1]) == {0}
    assert space_timesteps(2000, "ddim100") == set(range(0, 2000, 20))
    assert space_timesteps(1000, "ddim3") == set(range(0, 1000, 334))
    with pytest.raises(ValueError):
        space_timesteps(10, "11")
    with pytest.raises(ValueError):
        space_timesteps(10, "ddim7")


def test_respaced_betas_keep_alphas_cumprod():
    betas = get_named_beta_schedule("sqrt", 200)
    full = np.cumprod(1 - betas)
    kept = space_timesteps(200, "ddim10")
    new_betas, timestep_map = respaced_betas(betas, kept)
    assert timestep_map.tolist() == sorted(kept)
    np.testing.assert_allclose(np.cumprod(1 - new_betas), full[timestep_map], rtol=1e-12)
    # Keeping every step rebuilds the betas from ᾱ: equal up to ~1e-16 (bitwise in ᾱ).
    rebuilt, identity = respaced_betas(betas, range(200))
    np.testing.assert_allclose(rebuilt, betas, rtol=1e-12)
    assert np.array_equal(identity, np.arange(200))
    assert np.array_equal(GaussianDiffusion(betas=rebuilt).alphas_cumprod, full)

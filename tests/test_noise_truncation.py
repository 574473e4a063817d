"""--top_p (the original's truncation of the sampling noise at |x| <= top_p) in bounded time:
the original's redraw loop for the thresholds it is used with (same draws), the inverse CDF of
the truncated normal for the rest; non-finite values are errors."""

from __future__ import annotations

import math
import time

import pytest
import torch

from diffuseq.config import DecodeConfig
from diffuseq.decoding import api
from diffuseq.diffusion import broadcast
from diffuseq.errors import ConfigError
from diffuseq.sampling.noise import NoiseSource
from tests.test_decode import make_run


def original_loop(row: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """The original's unbounded loop (what NoiseSource did before the bound)."""
    outside = row.abs() > top_p
    while outside.any():
        row[outside] = torch.randn(int(outside.sum()), generator=generator, dtype=row.dtype)
        outside = row.abs() > top_p
    return row


@pytest.mark.parametrize("top_p", [0.7, 0.9, 1.0, 2.0, 3.5])
def test_the_original_thresholds_keep_the_original_draws(top_p):
    source = NoiseSource([101, 102], [0, 5], shape=(24, 16))
    got = source.gaussian(top_p=top_p)
    generators = [torch.Generator().manual_seed(g.initial_seed()) for g in source._generators]
    for row, generator in zip(got, generators):
        expected = torch.empty(24, 16).normal_(generator=generator)
        assert torch.equal(row, original_loop(expected, top_p, generator))


@pytest.mark.parametrize("top_p", [1e-300, 1e-12, 1e-9, 1e-3, 0.3, 0.6])
def test_tiny_thresholds_return_at_once_and_stay_inside(top_p):
    start = time.perf_counter()
    source = NoiseSource([1, 2, 3], [0, 1, 2], shape=(64, 64))
    first = source.gaussian(top_p=top_p)
    assert time.perf_counter() - start < 5.0
    assert first.abs().max().item() <= top_p and torch.isfinite(first).all()
    again = NoiseSource([1, 2, 3], [0, 1, 2], shape=(64, 64)).gaussian(top_p=top_p)
    assert torch.equal(first, again)  # still reproducible per row


@pytest.mark.parametrize("top_p", [0.25, 1.0])
def test_the_inverse_cdf_draws_the_same_truncated_normal(top_p, monkeypatch):
    """Forced to the inverse CDF at once, the draws have the truncated normal's moments (the
    rejection loop's distribution): mean 0 and variance 1 - 2aφ(a)/(2Φ(a)-1)."""
    monkeypatch.setattr(broadcast, "MAX_REDRAWS", 0)
    x = NoiseSource([7], [0], shape=(400, 500)).gaussian(top_p=top_p)[0].double()
    phi = math.exp(-(top_p**2) / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(top_p / math.sqrt(2))
    variance = 1 - 2 * top_p * phi / mass
    assert abs(x.mean().item()) < 4 * math.sqrt(variance / x.numel())
    assert x.var().item() == pytest.approx(variance, rel=0.02)
    assert x.abs().max().item() <= top_p


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_top_p_is_an_error(bad):
    with pytest.raises(ValueError, match="finite"):
        NoiseSource([1], [0], shape=(2, 2)).gaussian(top_p=bad)
    with pytest.raises(ConfigError, match="--top_p"):
        DecodeConfig(top_p=bad).validate()


def test_p_sample_with_a_tiny_top_p_returns():
    from diffuseq.diffusion.gaussian import GaussianDiffusion
    from diffuseq.diffusion.schedules import get_named_beta_schedule

    d = GaussianDiffusion(betas=get_named_beta_schedule("sqrt", 10))
    x = torch.randn(2, 4, 3)
    out = d.p_sample(
        lambda x, t: torch.zeros_like(x),
        x,
        torch.tensor([5, 6]),
        mask=None,
        x_start=None,
        top_p=1e-9,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out["sample"]).all()


def test_generate_with_a_tiny_top_p_returns(tmp_path):
    generator = api.load(make_run(tmp_path), device="cpu")
    start = time.perf_counter()
    out = generator.generate(["a b", "c"], sampler="ancestral", top_p=1e-12, seed=3)
    assert len(out) == 2 and time.perf_counter() - start < 60
    with pytest.raises(ValueError, match="top_p"):
        generator.generate(["a"], top_p=math.nan)

"""Properties of GaussianDiffusion on small random inputs (golden comparisons live in
test_diffusion_golden.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.losses import training_losses
from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.sampling.rounding import make_rounding_fn
from tests.conftest import tiny_denoiser

B, L, H, V = 3, 8, 6, 11


def _diffusion(T=50, **kwargs) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T, **kwargs)


def _mask() -> torch.Tensor:
    """0 = source for the first 3/4/5 positions of each example."""
    return (torch.arange(L)[None, :] >= torch.tensor([3, 4, 5])[:, None]).long()


class ConstantModel(nn.Module):
    """A 'network' that always predicts the given x_0 and records its timestep input."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0
        self.seen = []

    def forward(self, x, timesteps):
        self.seen.append(timesteps)
        return self.x0.clone()


def _tiny_random_model(learned_mean_embed: bool = False) -> TransformerNetModel:
    return tiny_denoiser(
        vocab_size=V,
        hidden_dim=H,
        max_position_embeddings=16,
        attention_dropout=0.0,
        seed=0,
        learned_mean_embed=learned_mean_embed,
    )


# ---------------------------------------------------------------------------------------------
# forward process


@pytest.mark.parametrize("variant", ["v1", "mean", "mean_denoise"])
@pytest.mark.parametrize("mask_dims", [2, 3])
def test_partial_noising_keeps_source_span_bit_identical(variant, mask_dims):
    d = _diffusion(denoise=variant == "mean_denoise", denoise_rate=0.9)
    x0, noise = torch.randn(B, L, H), torch.randn(B, L, H)
    mu = torch.randn(H) if variant != "v1" else None
    mask = _mask() if mask_dims == 2 else _mask().unsqueeze(-1).expand(B, L, H)
    t = torch.tensor([0, 25, 49])
    gen = torch.Generator().manual_seed(1)
    x_t = d.q_sample(x0, t, noise=noise, mask=mask, mean_embed=mu, generator=gen)
    source = _mask() == 0
    assert torch.equal(x_t[source], x0[source])
    assert not torch.isclose(x_t[~source], x0[~source]).all()


def test_q_sample_statistics_match_q_mean_variance():
    d = _diffusion(T=100)
    x0 = torch.randn(1, 1, 200_000)
    t = torch.tensor([60])
    x_t = d.q_sample(x0, t, noise=torch.randn_like(x0))
    mean, var, _ = d.q_mean_variance(x0, t)
    residual = x_t - mean
    assert residual.mean().abs().item() < 0.01
    assert residual.var().item() == pytest.approx(var[0, 0, 0].item(), rel=0.02)
    assert var[0, 0, 0].item() == pytest.approx(1 - d.alphas_cumprod[60], rel=1e-6)


def test_v2_q_sample_with_mean_embed_and_discrete_noise():
    d = _diffusion(denoise=True, denoise_rate=0.5)
    x0, noise, mu = torch.randn(B, L, H), torch.randn(B, L, H), torch.randn(H)
    t = torch.tensor([3, 20, 40])
    mask = _mask()
    ab = torch.from_numpy(d.alphas_cumprod[t.numpy()])[:, None, None]
    x0d, mud, noised = x0.double(), mu.double(), noise.double()
    reference = ab.sqrt() * x0d + (1 - ab.sqrt()) * mud + (1 - ab).sqrt() * noised
    no_draw = torch.zeros(B, L)
    x_t = d.q_sample(x0, t, noise=noise, mask=mask, mean_embed=mu, bernoulli_draw=no_draw)
    target = mask == 1
    torch.testing.assert_close(x_t[target].double(), reference[target], rtol=1e-5, atol=1e-5)
    draw = torch.zeros(B, L)
    draw[:, ::2] = 1
    x_t = d.q_sample(x0, t, noise=noise, mask=mask, mean_embed=mu, bernoulli_draw=draw)
    replaced = (draw == 1) & target
    assert torch.equal(x_t[replaced], mu.expand(int(replaced.sum()), H))
    probs = d.forward_mask_prob(t, (B, L))
    expected = 0.5 * (1 - ab[:, 0, 0]).sqrt()
    torch.testing.assert_close(probs[:, 0].double(), expected, rtol=1e-6, atol=0)


def test_denoise_needs_mean_embed():
    d = _diffusion(denoise=True)
    x = torch.randn(B, L, H)
    t = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="learned_mean_embed"):
        d.q_sample(x, t, noise=x, mask=_mask())
    with pytest.raises(ValueError, match="learned_mean_embed"):
        d.p_sample(ConstantModel(x), x, t, mask=_mask(), x_start=x, noise=x)


def test_posterior_matches_float64_formula():
    d = _diffusion()
    x0, x_t = torch.randn(B, L, H), torch.randn(B, L, H)
    t = torch.tensor([0, 1, 30])
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t)
    tn = t.numpy()
    ab, ab_prev, beta = d.alphas_cumprod[tn], d.alphas_cumprod_prev[tn], d.betas[tn]
    c1 = torch.from_numpy(beta * np.sqrt(ab_prev) / (1 - ab))[:, None, None]
    c2 = torch.from_numpy((1 - ab_prev) * np.sqrt(1 - beta) / (1 - ab))[:, None, None]
    expected = c1 * x0.double() + c2 * x_t.double()
    torch.testing.assert_close(mean.double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(mean[0], x0[0] * float(np.float32(d.posterior_mean_coef1[0])))
    assert var[0].abs().max() == 0 and torch.isfinite(log_var).all()


def test_scale_timesteps_with_respacing():
    spacing = dict(noise_schedule="sqrt", diffusion_steps=400, timestep_respacing="ddim10")
    d = GaussianDiffusion.from_schedule(**spacing)
    assert d.num_timesteps == 10 and d.timestep_map.tolist() == list(range(0, 400, 40))
    t = torch.arange(10)
    scaled = d.scale_timesteps(t)
    assert scaled.dtype == torch.float32
    assert torch.equal(scaled, torch.arange(0, 400, 40).float() * (1000.0 / 400))
    raw = GaussianDiffusion.from_schedule(**spacing, rescale_timesteps=False)
    assert torch.equal(raw.scale_timesteps(t), torch.arange(0, 400, 40).float())
    full = _diffusion(T=400).alphas_cumprod
    np.testing.assert_allclose(d.alphas_cumprod, full[d.timestep_map], rtol=1e-12)


def test_invalid_betas_raise():
    with pytest.raises(ValueError):
        GaussianDiffusion(betas=np.array([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError):
        GaussianDiffusion(betas=np.array([0.1, 0.2]), timestep_map=[0])


# ---------------------------------------------------------------------------------------------
# reverse process


def test_p_sample_anchoring_noise_and_mask_shapes():
    d = _diffusion()
    x0, x, anchor, noise = (torch.randn(B, L, H) for _ in range(4))
    model = ConstantModel(x0)
    t = torch.tensor([0, 10, 49])
    out2 = d.p_sample(model, x, t, mask=_mask(), x_start=anchor, noise=noise)
    mask3 = _mask().unsqueeze(-1).expand(B, L, H)
    out3 = d.p_sample(model, x, t, mask=mask3, x_start=anchor, noise=noise)
    assert torch.equal(out2["sample"], out3["sample"])
    source = _mask() == 0
    assert torch.equal(out2["sample"][source], anchor[source])
    target0 = (_mask() == 1) & (t == 0)[:, None]
    assert torch.equal(out2["sample"][target0], out2["greedy_mean"][target0])  # no noise at t = 0
    sigma = torch.from_numpy(np.sqrt(d.model_variance[t.numpy()])).float()[:, None, None]
    expected = out2["greedy_mean"] + sigma * noise * (t != 0).float()[:, None, None]
    torch.testing.assert_close(out2["sample"][~source], expected[~source], rtol=1e-6, atol=1e-6)
    assert torch.equal(model.seen[0], d.scale_timesteps(t))


def test_p_sample_top_p_truncates_noise_reproducibly():
    d = _diffusion()
    x0, x = torch.randn(B, L, H), torch.randn(B, L, H)
    noise = torch.randn(B, L, H) * 3
    t = torch.tensor([5, 6, 7])

    def run(seed):
        return d.p_sample(
            ConstantModel(x0),
            x,
            t,
            mask=None,
            x_start=None,
            noise=noise,
            top_p=1,
            generator=torch.Generator().manual_seed(seed),
        )

    first, again = run(3), run(3)
    assert torch.equal(first["sample"], again["sample"])
    used = (first["sample"] - first["greedy_mean"]) / torch.exp(
        0.5 * d.p_mean_variance(ConstantModel(x0), x, t)["log_variance"]
    )
    assert used.abs().max() <= 1 + 1e-5
    inside = noise.abs() <= 1
    torch.testing.assert_close(used[inside], noise[inside], rtol=1e-5, atol=1e-5)
    # Without noise the draw comes from the generator.
    gen = torch.Generator().manual_seed(4)
    a = d.p_sample(ConstantModel(x0), x, t, mask=None, x_start=None, generator=gen)
    noise = torch.randn(B, L, H, generator=torch.Generator().manual_seed(4))
    b = d.p_sample(ConstantModel(x0), x, t, mask=None, x_start=None, noise=noise)
    assert torch.equal(a["sample"], b["sample"])


def test_p_sample_returns_rounded_tokens():
    d = _diffusion()
    emb = torch.randn(V, H)
    tokens = torch.randint(0, V, (B, L))
    model = ConstantModel(emb[tokens] + 0.01 * torch.randn(B, L, H))
    out = d.p_sample(
        model,
        torch.randn(B, L, H),
        torch.tensor([0, 0, 0]),
        mask=None,
        x_start=None,
        noise=torch.zeros(B, L, H),
        denoised_fn=make_rounding_fn(emb),
    )
    assert torch.equal(out["tokens"], tokens)
    assert torch.equal(out["pred_xstart"], emb[tokens])
    # At t = 0: coef1 ≈ 1, coef2 = 0 and no noise, so the sample is E[tokens].
    torch.testing.assert_close(out["sample"], emb[tokens], rtol=1e-6, atol=1e-6)


def test_ddim_eta0_is_deterministic_and_exact_for_an_oracle():
    """With x̂_0 = x_0, a deterministic DDIM step from q_sample(x_0, t, ε) lands on
    q_sample(x_0, t_prev, ε) (DDIM eq. 12), for any earlier t_prev."""
    d = _diffusion(T=100)
    x0, eps, anchor = torch.randn(B, L, H), torch.randn(B, L, H), torch.randn(B, L, H)
    t = torch.tensor([99, 60, 20])
    x_t = d.q_sample(x0, t, noise=eps)
    oracle = ConstantModel(x0)
    for t_prev in (torch.tensor([79, 30, 0]), 10, -1):
        out = d.ddim_sample(
            oracle,
            x_t,
            t,
            t_prev=t_prev,
            mask=None,
            x_start=None,
            eta=0.0,
            noise=torch.randn(B, L, H),
        )
        again = d.ddim_sample(oracle, x_t, t, t_prev=t_prev, mask=None, x_start=None, eta=0.0)
        assert torch.equal(out["sample"], again["sample"])
        tp = torch.as_tensor(t_prev).expand(B)
        expected = x0 if int(tp[0]) < 0 else d.q_sample(x0, tp, noise=eps)
        torch.testing.assert_close(out["sample"], expected, rtol=1e-4, atol=1e-4)
    # t_prev = t − 1 is the original's pseudo-DDIM step (t_prev=None), bit for bit.
    pseudo = d.ddim_sample(oracle, x_t, t, mask=_mask(), x_start=anchor)
    adjacent = d.ddim_sample(oracle, x_t, t, t_prev=t - 1, mask=_mask(), x_start=anchor)
    assert torch.equal(pseudo["sample"], adjacent["sample"])
    source = _mask() == 0
    assert torch.equal(pseudo["sample"][source], anchor[source])


def test_ddim_eta_positive_matches_formula():
    d = _diffusion(T=100)
    x0, x_t, noise = torch.randn(B, L, H), torch.randn(B, L, H), torch.randn(B, L, H)
    t, t_prev = torch.tensor([90, 50, 10]), torch.tensor([70, 30, 0])
    out = d.ddim_sample(
        ConstantModel(x0), x_t, t, t_prev=t_prev, mask=None, x_start=None, eta=0.7, noise=noise
    )
    ab = torch.from_numpy(d.alphas_cumprod[t.numpy()])[:, None, None]
    abp = torch.from_numpy(d.alphas_cumprod[t_prev.numpy()])[:, None, None]
    x0d, xtd = x0.double(), x_t.double()
    eps = (xtd / ab.sqrt() - x0d) / (1 / ab - 1).sqrt()
    sigma = 0.7 * ((1 - abp) / (1 - ab)).sqrt() * (1 - ab / abp).sqrt()
    expected = abp.sqrt() * x0d + (1 - abp - sigma**2).sqrt() * eps + sigma * noise.double()
    torch.testing.assert_close(out["sample"].double(), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# training loss


def _batch():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, V, (B, L), generator=g), _mask(), torch.tensor([0, 7, 49])


def test_training_losses_terms_and_reproducibility():
    model = _tiny_random_model().eval()
    d = _diffusion()
    ids, mask, t = _batch()
    terms = training_losses(d, model, ids, mask, t, generator=torch.Generator().manual_seed(9))
    assert set(terms) == {"loss", "mse", "nll", "decoder_nll", "tT_loss", "t0_loss"}
    for value in terms.values():
        assert value.shape == (B,) and torch.isfinite(value).all()
    expected = terms["mse"] + terms["decoder_nll"] + terms["tT_loss"]
    torch.testing.assert_close(terms["loss"], expected)
    assert torch.equal(terms["mse"][0], terms["t0_loss"][0])  # t = 0 uses the clean target
    # Draw order: ε_0 then ε, both from the generator.
    g = torch.Generator().manual_seed(9)
    noise0, noise = torch.randn(B, L, H, generator=g), torch.randn(B, L, H, generator=g)
    injected = training_losses(d, model, ids, mask, t, noise0=noise0, noise=noise)
    for key in terms:
        assert torch.equal(terms[key], injected[key]), key


def test_training_losses_through_a_wrapper():
    """The forward call may go through a wrapper (e.g. DDP); the text hooks come from text_model."""

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, x, timesteps):
            return self.module(x, timesteps)

    model = _tiny_random_model(learned_mean_embed=True).eval()
    d = _diffusion(denoise=True, denoise_rate=0.5)
    ids, mask, t = _batch()
    direct = training_losses(d, model, ids, mask, t, generator=torch.Generator().manual_seed(2))
    wrapped = training_losses(
        d,
        Wrapper(model),
        ids,
        mask,
        t,
        text_model=model,
        generator=torch.Generator().manual_seed(2),
    )
    for key in direct:
        assert torch.equal(direct[key], wrapped[key]), key
    assert direct["reg_term"].ndim == 0
    torch.testing.assert_close(direct["reg_term"], 0.01 * model.mean_embed.norm())


def test_training_loss_decreases():
    model = _tiny_random_model().train()
    d = _diffusion()
    ids, mask, _ = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([5, 20, 40])
    g = torch.Generator().manual_seed(1)
    noise0, noise = torch.randn(B, L, H, generator=g), torch.randn(B, L, H, generator=g)
    losses = []
    for _ in range(30):
        terms = training_losses(d, model, ids, mask, t, noise0=noise0, noise=noise, generator=gen)
        loss = terms["loss"].mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

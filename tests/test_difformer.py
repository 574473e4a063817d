"""Difformer's three options (Gao et al. 2022, arXiv 2212.09412): ``--anchor_loss``,
``--embedding_norm`` and ``--noise_rescale``. Off, every loss and table is the original's; on,
each is checked on a hand-computed case, and a tiny run with all three (and self-conditioning
and a noise floor) resumes exactly and decodes from its run folder and its model folder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffuseq.cli.train import main
from diffuseq.config import RunConfig
from diffuseq.decoding import api
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.losses import training_losses
from diffuseq.diffusion.schedules import get_named_beta_schedule, rescale_noise
from diffuseq.errors import CheckpointError, ConfigError
from diffuseq.families.gaussian import FAMILY
from diffuseq.sampling.dpm_solver import dpm_scheduler
from diffuseq.sampling.dpm_v2 import DiscreteVPSchedule
from diffuseq.sampling.rounding import make_rounding_fn
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.checkpoint_format import infer_architecture
from diffuseq.store.hf_folder import MODEL_FILE, load_safetensors
from tests.conftest import tiny_denoiser
from tests.train_helpers import (
    assert_same,
    make_tiny_data,
    read_metrics,
    tiny_argv,
    train_straight_and_split,
)

B, L, H, V = 3, 8, 8, 20
NORM_KEYS = ["embedding_norm.weight", "embedding_norm.bias"]


def _batch():
    ids = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(4))
    mask = (torch.arange(L) >= 3).long().expand(B, L)
    return ids, mask, torch.tensor([0, 7, 19])


def _losses(diffusion, model, **kwargs):
    ids, mask, t = _batch()
    torch.manual_seed(7)  # attention dropout draws from the global generator
    gen = torch.Generator().manual_seed(1)
    return training_losses(diffusion, model, ids, mask, t, generator=gen, **kwargs)


# ------------------------------------------------------------------------------ off = original


def test_every_option_off_is_bit_identical_to_the_original():
    assert RunConfig().model.embedding_norm is False
    assert RunConfig().diffusion.noise_rescale == 0.0 and RunConfig().diffusion.anchor_loss is False
    plain = tiny_denoiser(vocab_size=V, hidden_dim=H, seed=0)
    off = tiny_denoiser(vocab_size=V, hidden_dim=H, seed=0, embedding_norm=False)
    assert_same(plain.state_dict(), off.state_dict())
    default = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    for factor in (0.0, 1.0):  # F = 1 is the identity too
        explicit = GaussianDiffusion.from_schedule(
            noise_schedule="sqrt", diffusion_steps=20, noise_rescale=factor
        )
        assert np.array_equal(default.betas, explicit.betas)
        assert np.array_equal(default.alphas_cumprod, explicit.alphas_cumprod)
    reference = _losses(default, plain)
    assert_same(reference, _losses(explicit, off, anchor_loss=False))
    assert "anchor_loss" not in reference
    # the family's objective without --anchor_loss calls the original loss itself
    objective = FAMILY.build_objective(RunConfig(), default)
    assert objective.loss_fn is training_losses


# ------------------------------------------------------------------------------ anchor loss


class TwoWordModel:
    """A text model with ``E = I₂`` (two words, h = 2) and a zero read-out bias."""

    embedding = torch.eye(2)

    def get_embeds(self, ids):
        return self.embedding[ids]

    def logits_projection(self):
        return self.embedding, torch.zeros(2)


def test_anchor_loss_is_the_cross_entropy_of_the_predicted_x0_on_the_target_span():
    # x̂_0 = [2, 0] everywhere: logits [2, 0]; CE(word 0) = log(1 + e⁻²), CE(word 1) = log(1 + e²)
    prediction = torch.tensor([2.0, 0.0]).expand(1, 4, 2).clone().requires_grad_(True)
    ids = torch.tensor([[1, 1, 0, 1]])
    mask = torch.tensor([[0, 0, 1, 1]])  # source, source, target, target
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=4)
    terms = training_losses(
        diffusion,
        lambda x, t: prediction,
        ids,
        mask,
        torch.tensor([2]),
        text_model=TwoWordModel(),
        generator=torch.Generator().manual_seed(0),
        anchor_loss=True,
    )
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2  # = 1.126928
    assert terms["anchor_loss"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.1269280, abs=1e-7)
    assert torch.equal(terms["nll"], terms["anchor_loss"].detach())  # the logged nll, now trained
    others = terms["mse"] + (terms["decoder_nll"] + terms["tT_loss"])
    assert torch.equal(terms["loss"], others + terms["anchor_loss"])
    # its gradient reaches the prediction at the target positions only
    (grad,) = torch.autograd.grad(terms["anchor_loss"].sum(), prediction)
    assert torch.count_nonzero(grad[0, :2]) == 0
    p0 = 1 / (1 + math.exp(-2))  # softmax([2, 0])[0]
    torch.testing.assert_close(grad[0, 2], torch.tensor([p0 - 1, 1 - p0]) / 2)
    torch.testing.assert_close(grad[0, 3], torch.tensor([p0, -p0]) / 2)


# ------------------------------------------------------------------------------ embedding norm


def test_embedding_norm_normalises_x0_the_rounding_table_and_the_read_out():
    plain = tiny_denoiser(vocab_size=V, hidden_dim=H, seed=0)
    model = tiny_denoiser(vocab_size=V, hidden_dim=H, seed=0, embedding_norm=True)
    assert list(model.state_dict()) == [*plain.state_dict(), *NORM_KEYS]
    for key, value in plain.state_dict().items():  # LN(γ = 1, β = 0) drew no random numbers
        assert torch.equal(value, model.state_dict()[key]), key
    with torch.no_grad():
        model.word_embedding.weight.mul_(10.0).add_(3.0)  # embeddings that grew and shifted
    ids, _, _ = _batch()
    x0 = model.get_embeds(ids).detach()
    table = model.embedding_table().detach()
    for rows in (x0.reshape(-1, H), table):
        torch.testing.assert_close(rows.mean(-1), torch.zeros(len(rows)), atol=1e-5, rtol=0)
        var = rows.var(-1, unbiased=False)
        torch.testing.assert_close(var, torch.ones(len(rows)), atol=1e-3, rtol=0)
    torch.testing.assert_close(x0, table[ids])
    z = torch.randn(B, L, H)
    weight, bias = model.logits_projection()
    torch.testing.assert_close(model.get_logits(z), z @ table.T + model.lm_head.bias)
    torch.testing.assert_close(model.get_logits(z), z @ weight.T + bias)
    # rounding with the normalised table maps each x̄_0 back to its word
    assert torch.equal(make_rounding_fn(model.embedding_table())(x0)[1], ids)
    # the loss trains the LayerNorm's parameters, the anchor term included
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    _losses(diffusion, model.train(), anchor_loss=True)["loss"].mean().backward()
    assert model.embedding_norm.weight.grad.abs().sum() > 0
    # checkpoints: the architecture is readable, and a mismatch names the flag
    assert infer_architecture(model.state_dict())["embedding_norm"] is True
    with pytest.raises(CheckpointError, match="--embedding_norm"):
        model.load_state_dict(plain.state_dict())
    with pytest.raises(CheckpointError, match="--embedding_norm"):
        plain.load_state_dict(model.state_dict())


# ------------------------------------------------------------------------------ noise rescale


def test_noise_rescale_divides_the_snr_by_f_squared_in_q_sample_and_every_sampler():
    T, F = 20, 4.0
    plain = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T)
    scaled = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=T, noise_rescale=F
    )
    ratio = lambda d: d.sqrt_one_minus_alphas_cumprod / d.sqrt_alphas_cumprod  # noqa: E731
    np.testing.assert_allclose(ratio(scaled), F * ratio(plain), rtol=1e-10)
    # sqrt schedule: ᾱ_0 = ᾱ(1/T)/ᾱ(0) with ᾱ(s) = 1 − √(s + 1e-4); then ᾱ'_0 = ᾱ_0 / (16 − 15·ᾱ_0)
    ab0 = (1 - math.sqrt(1 / T + 1e-4)) / (1 - math.sqrt(1e-4))
    assert plain.alphas_cumprod[0] == pytest.approx(ab0, rel=1e-12)
    assert scaled.alphas_cumprod[0] == pytest.approx(ab0 / (16 - 15 * ab0), rel=1e-12)
    assert scaled.alphas_cumprod[0] == pytest.approx(0.1849144, abs=1e-7)
    # q_sample: (z_t/√ᾱ'_t − z_0) = F·√((1−ᾱ_t)/ᾱ_t)·ε, for every t
    x0, noise = torch.randn(T, L, H, dtype=torch.float64), torch.randn(T, L, H, dtype=torch.float64)
    t = torch.arange(T)
    x_t = scaled.q_sample(x0, t, noise=noise)
    per_t = torch.from_numpy(F * ratio(plain))[:, None, None]
    sqrt_ab = torch.from_numpy(scaled.sqrt_alphas_cumprod)[:, None, None]
    torch.testing.assert_close(x_t / sqrt_ab - x0, per_t * noise, rtol=1e-5, atol=1e-5)
    # the samplers build their schedules from the same, rescaled, chain
    ab = torch.from_numpy(scaled.alphas_cumprod).float()
    torch.testing.assert_close(
        dpm_scheduler(scaled, T, algorithm_type="dpmsolver++").alphas_cumprod, ab
    )
    vp = DiscreteVPSchedule(scaled.betas)
    torch.testing.assert_close(torch.exp(2 * vp.log_alpha_grid), ab, rtol=1e-5, atol=1e-6)
    assert np.array_equal(scaled.model_variance[1:], scaled.betas[1:])  # ancestral's Σ_t = β'_t
    respaced = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=T, noise_rescale=F, timestep_respacing="ddim5"
    )
    kept = respaced.timestep_map
    np.testing.assert_allclose(respaced.alphas_cumprod, scaled.alphas_cumprod[kept], rtol=1e-12)
    assert np.array_equal(rescale_noise(get_named_beta_schedule("sqrt", T), F), scaled.betas)


def test_invalid_or_foreign_family_options_are_config_errors():
    with pytest.raises(ConfigError, match="--noise_rescale"):
        RunConfig.from_dict({"noise_rescale": 0.5}).validate()
    for flag, value in (("anchor_loss", True), ("embedding_norm", True), ("noise_rescale", 4.0)):
        config = RunConfig.from_dict(
            {"family": "discrete", "schedule_sampler": "uniform", flag: value}
        )
        with pytest.raises(ConfigError, match=f"--{flag}"):
            config.validate()


# ------------------------------------------------------------------------------ a tiny run


DIFFORMER = {"anchor_loss": "true", "embedding_norm": "true", "noise_rescale": "4"}


def test_a_run_with_all_three_resumes_exactly_and_decodes_with_them(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    argv = tiny_argv(data, ema_rate="0.9", self_cond="true", noise_floor="0.25", **DIFFORMER)
    straight, split, a = train_straight_and_split(argv, tmp_path)
    assert all(k in a["model"] for k in NORM_KEYS)
    logged = [r for r in read_metrics(straight) if "loss" in r]
    assert logged and all(math.isfinite(r["anchor_loss"]) for r in logged)
    later = lambda run: [r for r in read_metrics(run) if "loss" in r and r["step"] > 4]  # noqa: E731
    assert later(straight) == later(split) and len(later(straight)) == 2

    # decoding rebuilds the model and the process from the saved config
    generator = api.load(straight / "ema_0.9_000008.pt", device="cpu")
    model, diffusion = generator.decoder.model, generator.decoder.diffusion
    assert model.embedding_norm is not None and model.self_cond
    rescaled = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=8, noise_rescale=4
    )
    assert np.array_equal(diffusion.betas, rescaled.betas) and diffusion.noise_floor == 0.25
    sources = ["where is the station ?", "i want a ticket"]
    for sampler, steps in (("dpm-solver++", 4), ("ancestral", None)):
        out = generator.generate_raw(sources, sampler=sampler, steps=steps, num_samples=2, seed=5)
        assert len(out) == 2 and all(len(rows) == 2 for rows in out)
        assert out == generator.generate_raw(
            sources, sampler=sampler, steps=steps, num_samples=2, seed=5
        )

    # the model folder written at the end holds the LayerNorm and decodes the same
    folder = straight / "hf" / "ema_0.9_000008"
    weights = load_safetensors(folder / MODEL_FILE)
    assert all(k in weights for k in NORM_KEYS)
    from_folder = api.load(folder, device="cpu")
    assert from_folder.decoder.model.embedding_norm is not None
    assert np.array_equal(from_folder.decoder.diffusion.betas, rescaled.betas)
    for sampler, steps in (("dpm-solver++", 4), ("ancestral", None)):
        options = {"sampler": sampler, "steps": steps, "num_samples": 2, "seed": 5}
        assert generator.generate_raw(sources, **options) == from_folder.generate_raw(
            sources, **options
        )


def test_the_options_compose_with_v2(tmp_path):
    data = make_tiny_data(tmp_path / "data", n_train=16)
    run = tmp_path / "run"
    v2 = {"learned_mean_embed": "true", "denoise": "true", "denoise_rate": "0.5"}
    argv = tiny_argv(
        data, learning_steps=2, save_interval=2, checkpoint_path=run, **v2, **DIFFORMER
    )
    assert main(argv) == 0
    ema = load_state_file(run / "ema_0.9999_000002.pt")
    assert "mean_embed" in ema and all(torch.isfinite(ema[k]).all() for k in NORM_KEYS)
    generator = api.load(run, device="cpu")
    assert len(generator.generate(["i want a ticket"], sampler="ddim", steps=4)[0]) == 1

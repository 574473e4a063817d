"""Golden tests of the sampling loops (samplers.py) against the original code: G4 and G6 loops.

Every parameter (T, loop_T, steps, shapes, vocab, denoise_rate) is read from the golden files.
Tolerances: golden README §0 (teacher-forced states atol 1e-5, free-running 1e-4, tokens exact).
"""

from __future__ import annotations

import pytest
import torch

from diffuseq.decoding.job import texts_from_tokens
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.sampling.ancestral import ancestral_sample
from diffuseq.sampling.ddim import adjacent_timesteps, ddim_adjacent_sample
from diffuseq.sampling.inputs import SamplerInputs
from diffuseq.sampling.noise import ReplayNoise
from diffuseq.sampling.rounding import make_rounding_fn
from diffuseq.tokenizers.tokenizer import VocabFileTokenizer
from tests.conftest import golden_denoiser, load_golden

TEACHER_TOL = {"rtol": 0, "atol": 1e-5}
FREE_TOL = {"rtol": 0, "atol": 1e-4}
LOGIT_TOL = {"rtol": 1e-5, "atol": 5e-5}


@pytest.fixture(scope="module")
def g4(golden_dir):
    data = load_golden(golden_dir, "g4_diffusion.pt")
    T = data["loop_T"]
    return data["by_T"][str(T)], golden_denoiser(golden_dir), T


@pytest.fixture(scope="module")
def tokenizer(golden_dir):
    return VocabFileTokenizer.from_vocab_file(golden_dir / "g2_custom_vocab.txt")


class Recorder:
    """Callback collecting per-step states and rounded tokens."""

    def __init__(self):
        self.t, self.samples, self.tokens = [], [], []

    def __call__(self, info):
        self.t.append(info["t"])
        self.samples.append(info["sample"].clone())
        self.tokens.append(info["tokens"].clone())


def _final_tokens(model, x):
    logits = model.get_logits(x)
    return logits, torch.topk(logits, k=1, dim=-1).indices[..., 0]


def _check_texts(case, loop, tokens, tokenizer):
    records = texts_from_tokens(tokenizer, case["input_ids"], case["input_mask"], tokens)
    assert [r["recover"] for r in records] == loop["recover"]
    if "reference" in loop:
        assert [r["reference"] for r in records] == loop["reference"]
        assert [r["source"] for r in records] == loop["source"]


def test_g4_ancestral_teacher_forced(g4):
    """Step k of the ancestral loop (the p_sample call ancestral_sample makes) on the original's
    state k−1 with its noise k: states atol 1e-5, rounded tokens exact."""
    case, model, T = g4
    loop = case["loop"]
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T)
    rounding = make_rounding_fn(model.word_embedding.weight)
    prev = loop["x_noised"]
    for k, t in enumerate(loop["visited_t"].tolist()):
        out = diffusion.p_sample(
            model,
            prev,
            torch.full((prev.shape[0],), t),
            mask=case["input_mask"],
            x_start=case["x_start_mean"],
            noise=loop["step_noise"][k],
            denoised_fn=rounding,
        )
        torch.testing.assert_close(out["sample"], loop["samples"][k], **TEACHER_TOL)
        assert torch.equal(out["tokens"], loop["rounded_tokens"][k]), f"step {k} (t={t})"
        prev = loop["samples"][k]


def test_g4_ancestral_free_running(g4, tokenizer):
    """The whole loop from x_noised with the stored step noise: tokens exact at every step."""
    case, model, T = g4
    loop = case["loop"]
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T)
    rec = Recorder()
    final = ancestral_sample(
        SamplerInputs(
            model,
            diffusion,
            loop["x_noised"],
            input_mask=case["input_mask"],
            x_start=case["x_start_mean"],
            denoised_fn=make_rounding_fn(model.word_embedding.weight),
            noise=ReplayNoise(loop["step_noise"]),
            callback=rec,
        )
    )
    assert rec.t == loop["visited_t"].tolist()
    for k in range(T):
        assert torch.equal(rec.tokens[k], loop["rounded_tokens"][k]), f"step {k}"
        torch.testing.assert_close(rec.samples[k], loop["samples"][k], **FREE_TOL)
    torch.testing.assert_close(final, loop["final_sample"], **FREE_TOL)
    logits, tokens = _final_tokens(model, final)
    torch.testing.assert_close(logits, loop["final_logits"], **LOGIT_TOL)
    assert torch.equal(tokens, loop["final_tokens"])
    _check_texts(case, loop, tokens, tokenizer)


def test_g4_pseudo_ddim_loop(g4, tokenizer):
    """The original's --step < T path: visited levels, per-step states/tokens, final text."""
    case, model, T = g4
    loop = case["ddim_loop"]
    assert adjacent_timesteps(T, loop["step"]) == loop["visited_t"].tolist()
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T)
    rounding = make_rounding_fn(model.word_embedding.weight)
    # teacher-forced
    prev = loop["x_noised"]
    for k, t in enumerate(loop["visited_t"].tolist()):
        out = diffusion.ddim_sample(
            model,
            prev,
            torch.full((prev.shape[0],), t),
            mask=case["input_mask"],
            x_start=case["x_start_mean"],
            denoised_fn=rounding,
        )
        torch.testing.assert_close(out["sample"], loop["samples"][k], **TEACHER_TOL)
        assert torch.equal(out["tokens"], loop["rounded_tokens"][k])
        prev = loop["samples"][k]
    # free-running; clamp_step must be ignored on this path (the original ignores it)
    rec = Recorder()
    final = ddim_adjacent_sample(
        SamplerInputs(
            model,
            diffusion,
            loop["x_noised"],
            input_mask=case["input_mask"],
            x_start=case["x_start_mean"],
            denoised_fn=rounding,
            clamp_step=T,
            steps=loop["step"],
            callback=rec,
        )
    )
    assert rec.t == loop["visited_t"].tolist()
    for k in range(len(rec.t)):
        assert torch.equal(rec.tokens[k], loop["rounded_tokens"][k])
        torch.testing.assert_close(rec.samples[k], loop["samples"][k], **FREE_TOL)
    torch.testing.assert_close(final, loop["final_sample"], **FREE_TOL)
    _, tokens = _final_tokens(model, final)
    assert torch.equal(tokens, loop["final_tokens"])
    _check_texts(case, loop, tokens, tokenizer)


def test_g6_v2_loop(golden_dir, tokenizer):
    """v2 ancestral loop: μ-shifted start, discrete-noise replacement from uniforms, rounding."""
    data = load_golden(golden_dir, "g6_losses_v2.pt")
    T = data["loop_T"]
    case = data["by_T"][str(T)]
    loop = case["sampling"]["loop"]
    model = golden_denoiser(golden_dir, v2=True)
    torch.testing.assert_close(model.mean_embed.detach(), data["mean_embed"], rtol=0, atol=0)
    diffusion = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=T, denoise=True, denoise_rate=data["denoise_rate"]
    )
    # our Bernoulli rule (uniform < p) gives the original's draws at every step
    for k, t in enumerate(loop["visited_t"].tolist()):
        p = diffusion.reverse_mask_prob(
            torch.full((case["input_mask"].shape[0],), t), case["input_mask"].shape
        )
        assert torch.equal((loop["bernoulli_uniform"][k] < p).float(), loop["bernoulli_draw"][k])
    rec = Recorder()
    x_start = model.get_embeds(case["input_ids"]).detach()
    final = ancestral_sample(
        SamplerInputs(
            model,
            diffusion,
            loop["x_noised"],
            input_mask=case["input_mask"],
            x_start=x_start,
            denoised_fn=make_rounding_fn(model.word_embedding.weight),
            noise=ReplayNoise(loop["step_noise"], loop["bernoulli_uniform"]),
            callback=rec,
            mean_embed=model.mean_embed.detach(),
        )
    )
    assert rec.t == loop["visited_t"].tolist()
    for k in range(T):
        assert torch.equal(rec.tokens[k], loop["rounded_tokens"][k]), f"step {k}"
        torch.testing.assert_close(rec.samples[k], loop["samples"][k], **FREE_TOL)
    logits, tokens = _final_tokens(model, final)
    torch.testing.assert_close(logits, loop["final_logits"], **LOGIT_TOL)
    assert torch.equal(tokens, loop["final_tokens"])
    _check_texts(case, loop, tokens, tokenizer)


def test_g6_v2_start_point(golden_dir):
    """The sampler's first model input is x_noised + μ·m (captured through a model wrapper)."""
    data = load_golden(golden_dir, "g6_losses_v2.pt")
    T = data["loop_T"]
    case = data["by_T"][str(T)]
    loop = case["sampling"]["loop"]
    model = golden_denoiser(golden_dir, v2=True)
    seen = []

    def spy(x, t):
        seen.append(x.clone())
        return model(x, t)

    diffusion = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=T, denoise=True, denoise_rate=data["denoise_rate"]
    )
    ancestral_sample(
        SamplerInputs(
            spy,
            diffusion,
            loop["x_noised"],
            input_mask=case["input_mask"],
            x_start=model.get_embeds(case["input_ids"]).detach(),
            noise=ReplayNoise(loop["step_noise"], loop["bernoulli_uniform"]),
            mean_embed=model.mean_embed.detach(),
            denoised_fn=make_rounding_fn(model.word_embedding.weight),
        )
    )
    torch.testing.assert_close(seen[0], loop["x_start_point_after_mean_shift"], rtol=0, atol=1e-6)

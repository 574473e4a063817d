"""Golden tests of the diffusion math against the original code: G1, G4, G5, G6.

Every parameter (T values, t, shapes, vocab, denoise_rate, loop_T, ...) is read from the golden
files, so the same code runs on the public and the holdout sets. Tolerances are those of the
golden README (§0 "Recommended tolerances").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.losses import training_losses
from diffuseq.diffusion.schedules import SCHEDULE_NAMES, get_named_beta_schedule
from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.sampling.rounding import make_rounding_fn
from tests.conftest import golden_denoiser, load_golden

TABLE_TOL = dict(rtol=1e-12, atol=1e-15)
FP32_TOL = dict(rtol=1e-6, atol=1e-6)
NET_TOL = dict(rtol=1e-5, atol=1e-5)
LOGIT_TOL = dict(rtol=1e-5, atol=5e-5)
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
TEACHER_TOL = dict(rtol=0, atol=1e-5)
FREE_TOL = dict(rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# helpers


def _sqrt_diffusion(T, **kwargs) -> GaussianDiffusion:
    """The diffusion `create_model_and_diffusion` builds for the goldens (sqrt, no respacing)."""
    return GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=int(T), **kwargs)


def _rounding(model: TransformerNetModel):
    """Decoding's rounding: a frozen copy of the tied embedding matrix."""
    return make_rounding_fn(model.word_embedding.weight.detach().clone())


def _assert_close(actual, expected, tol, what=""):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


def _custom_decoder(golden_dir: Path):
    """ids -> text as the original custom tokenizer: strip trailing pads, join, drop "__ "/"@@ "."""
    layout = load_golden(golden_dir, "g2_data_layout.pt")["custom"]
    id_to_token = {i: tok for tok, i in layout["vocab"].items()}
    pad = layout["pad_token_id"]

    def decode(ids: list[int]) -> str:
        while ids and ids[-1] == pad:
            ids = ids[:-1]
        return " ".join(id_to_token[i] for i in ids).replace("__ ", "").replace("@@ ", "")

    return decode


def _texts(decode, tokens: torch.Tensor, input_mask: torch.Tensor) -> list[str]:
    """`recover` strings: decode(tokens[i][len_x:]) with len_x = L − Σ mask."""
    len_x = tokens.shape[1] - input_mask.sum(-1)
    return [decode(row[int(n) :].tolist()) for row, n in zip(tokens, len_x)]


def _final_tokens(model, sample: torch.Tensor) -> torch.Tensor:
    return torch.topk(model.get_logits(sample), k=1, dim=-1).indices[..., 0]


@pytest.fixture(scope="module")
def tiny(golden_dir):
    return golden_denoiser(golden_dir, attn="eager")  # the goldens went through eager attention


@pytest.fixture(scope="module")
def tiny_v2(golden_dir):
    return golden_denoiser(golden_dir, v2=True, attn="eager")


# ---------------------------------------------------------------------------------------------
# G1


def test_g1_schedules_bitwise(golden_dir):
    g1 = load_golden(golden_dir, "g1_schedules.pt")
    checked = set()
    for branch in ("v1", "v2"):
        for name, by_T in g1[branch]["schedules"].items():
            assert sorted(int(T) for T in by_T) == sorted(g1["T_values"])
            for T, expected in by_T.items():
                betas = get_named_beta_schedule(name, int(T))
                assert betas.dtype == np.float64
                assert np.array_equal(betas, expected.numpy()), (branch, name, T)
            checked.add(name)
    assert checked == set(SCHEDULE_NAMES)


def test_g1_diffusion_constructs(golden_dir):
    g1 = load_golden(golden_dir, "g1_schedules.pt")
    for name, by_T in g1["v1"]["diffusion_constructs"].items():
        for T, constructs in by_T.items():
            betas = get_named_beta_schedule(name, int(T))
            if constructs:
                assert GaussianDiffusion(betas=betas).num_timesteps == int(T)
            else:
                with pytest.raises(ValueError):
                    GaussianDiffusion(betas=betas)


def test_g1_v2_unsupported_names(golden_dir):
    """v2 rejects the v1-only names; we implement all of them (superset) and reject unknown
    names with a ValueError that, like the original, says "unknown beta schedule" and lists
    every choice."""
    g1 = load_golden(golden_dir, "g1_schedules.pt")
    for name, message in g1["v2"]["unsupported"].items():
        assert message.endswith(f"unknown beta schedule: {name}")
        assert name in SCHEDULE_NAMES
        bogus = name + "-v3"
        with pytest.raises(ValueError, match="unknown beta schedule") as info:
            get_named_beta_schedule(bogus, g1["T_values"][0])
        assert all(choice in str(info.value) for choice in SCHEDULE_NAMES)


def test_g1_sqrt_tables(golden_dir):
    g1 = load_golden(golden_dir, "g1_schedules.pt")
    for T, tables in g1["sqrt_diffusion_tables"].items():
        spaced = _sqrt_diffusion(T)  # betas rebuilt from ᾱ as SpacedDiffusion: bitwise
        raw = GaussianDiffusion(betas=get_named_beta_schedule("sqrt", int(T)))
        for name, expected in tables.items():
            if name == "timestep_map":
                assert np.array_equal(spaced.timestep_map, expected.numpy())
                continue
            expected = expected.numpy()
            np.testing.assert_allclose(getattr(spaced, name), expected, **TABLE_TOL, err_msg=name)
            # From the raw schedule (betas not rebuilt): README's rtol=1e-10.
            np.testing.assert_allclose(
                getattr(raw, name), expected, rtol=1e-10, atol=1e-15, err_msg=name
            )


def test_g1_v2_model_variance(golden_dir):
    g1 = load_golden(golden_dir, "g1_schedules.pt")
    attrs = {
        "model_variance": "model_variance",
        "model_log_variance": "model_log_variance",
        "alphas_cumprod": "alphas_cumprod",
        "spaced_betas": "betas",
    }
    for name, by_T in g1["v2"]["model_variance"].items():
        for T, tables in by_T.items():
            diffusion = GaussianDiffusion.from_schedule(noise_schedule=name, diffusion_steps=int(T))
            for key, attr in attrs.items():
                actual, expected = getattr(diffusion, attr), tables[key].numpy()
                where = f"{name}/{T}/{key}"
                np.testing.assert_allclose(actual, expected, **TABLE_TOL, err_msg=where)


# ---------------------------------------------------------------------------------------------
# G4


def test_g4_forward_process(golden_dir):
    g4 = load_golden(golden_dir, "g4_diffusion.pt")
    for T, case in g4["by_T"].items():  # noqa: B007  (T is used in assertion messages)
        diffusion = _sqrt_diffusion(case["T"])
        t = case["t"]
        scaled = diffusion.scale_timesteps(case["t_all"])
        assert scaled.dtype == torch.float32 and torch.equal(scaled, case["model_timestep_all"])
        assert torch.equal(diffusion.scale_timesteps(t), case["model_timestep_input"])
        z0 = diffusion.get_x_start(case["x_start_mean"], noise0=case["eps0"])
        _assert_close(z0, case["x_start"], FP32_TOL, "x_start")
        mean, var, log_var = diffusion.q_mean_variance(case["x_start"], t)
        _assert_close(mean, case["q_mean"], FP32_TOL, "q_mean")
        _assert_close(var, case["q_variance"], FP32_TOL, "q_variance")
        _assert_close(log_var, case["q_log_variance"], FP32_TOL, "q_log_variance")
        x_t = diffusion.q_sample(case["x_start"], t, noise=case["noise"], mask=case["input_mask"])
        _assert_close(x_t, case["x_t"], FP32_TOL, "x_t")
        source = case["input_mask"] == 0
        assert torch.equal(x_t[source], case["x_start"][source])
        x_t_nomask = diffusion.q_sample(case["x_start"], t, noise=case["noise"])
        _assert_close(x_t_nomask, case["x_t_nomask"], FP32_TOL, "x_t_nomask")
        post = diffusion.q_posterior_mean_variance(case["x_start"], case["x_t"], t)
        keys = ("posterior_mean", "posterior_variance", "posterior_log_variance_clipped")
        for value, key in zip(post, keys):
            _assert_close(value, case[key], FP32_TOL, key)


def test_g4_reverse_step(golden_dir, tiny):
    g4 = load_golden(golden_dir, "g4_diffusion.pt")
    rounding = _rounding(tiny)
    for T, case in g4["by_T"].items():
        diffusion = _sqrt_diffusion(case["T"])
        t, x_t = case["t"], case["x_t"]
        # Decoding's 3-D mask and clean anchor x̄_0.
        mask3 = case["input_mask"].unsqueeze(-1).expand_as(x_t)
        anchoring = dict(mask=mask3, x_start=case["x_start_mean"])
        with torch.no_grad():
            plain = diffusion.p_mean_variance(tiny, x_t, t)
            rounded = diffusion.p_mean_variance(tiny, x_t, t, denoised_fn=rounding)
            noise = case["p_sample_noise"]
            samples = {
                "p_sample_round": diffusion.p_sample(
                    tiny, x_t, t, **anchoring, noise=noise, denoised_fn=rounding
                ),
                "p_sample_noround": diffusion.p_sample(tiny, x_t, t, **anchoring, noise=noise),
            }
            ddim = diffusion.ddim_sample(
                tiny,
                x_t,
                t,
                **anchoring,
                denoised_fn=rounding,
                eta=0.0,
                noise=torch.zeros_like(x_t),  # the original multiplies its draw by σ = 0
            )
        expected = case["p_mean_variance"]
        _assert_close(plain["model_output"], expected["model_output"], NET_TOL, f"T={T} f")
        for key in ("mean", "pred_xstart", "variance", "log_variance"):
            tol = FP32_TOL if "variance" in key else NET_TOL
            _assert_close(plain[key], expected[key], tol, f"T={T} p_mean_variance/{key}")
        expected = case["p_mean_variance_round"]
        assert torch.equal(rounded["tokens"], expected["rounded_tokens"])
        for key in ("mean", "pred_xstart", "variance", "log_variance"):
            _assert_close(rounded[key], expected[key], NET_TOL, f"T={T} round/{key}")
        for name, out in samples.items():
            for key in ("sample", "pred_xstart", "greedy_mean"):
                _assert_close(out[key], case[name][key], NET_TOL, f"T={T} {name}/{key}")
            if "rounded_tokens" in case[name]:
                assert torch.equal(out["tokens"], case[name]["rounded_tokens"])
        source = case["input_mask"] == 0
        anchored = samples["p_sample_round"]["sample"][source]
        assert torch.equal(anchored, case["x_start_mean"][source])
        assert torch.equal(ddim["tokens"], case["ddim_step_round"]["rounded_tokens"])
        for key in ("sample", "pred_xstart"):
            _assert_close(ddim[key], case["ddim_step_round"][key], NET_TOL, f"T={T} ddim/{key}")


def _loop_cases(golden: dict, key: str, sub: str | None = None):
    """(T, case, loop) for every T that has the loop (only ``T == loop_T``)."""
    found = []
    for T, case in golden["by_T"].items():
        node = case if sub is None else case.get(sub, {})
        if key in node:
            found.append((T, case, node[key]))
    assert [int(T) for T, _, _ in found] == [golden["loop_T"]]
    return found


def _teacher_forced(step_fn, start, loop, *, tokens_key="rounded_tokens"):
    """Run every step k on the *stored* input samples[k−1] in one batch of K·B examples."""
    samples, visited = loop["samples"], loop["visited_t"]
    K, B = samples.shape[:2]
    inputs = torch.cat([start.unsqueeze(0), samples[:-1]]).reshape(K * B, *samples.shape[2:])
    t = visited.repeat_interleave(B)
    with torch.no_grad():
        out = step_fn(inputs, t, k=None)
    states = out["sample"].reshape(samples.shape)
    _assert_close(states, samples, TEACHER_TOL, "teacher-forced states")
    assert torch.equal(out["tokens"].reshape(loop[tokens_key].shape), loop[tokens_key])


def _free_running(step_fn, start, loop):
    state = start
    with torch.no_grad():
        for k, t in enumerate(loop["visited_t"].tolist()):
            out = step_fn(state, torch.full((start.shape[0],), t, dtype=torch.long), k=k)
            assert torch.equal(out["tokens"], loop["rounded_tokens"][k]), f"step {k} (t={t}) tokens"
            state = out["sample"]
            _assert_close(state, loop["samples"][k], FREE_TOL, f"free-running state {k} (t={t})")
    return state


def test_g4_ancestral_loop(golden_dir, tiny):
    g4 = load_golden(golden_dir, "g4_diffusion.pt")
    decode = _custom_decoder(golden_dir)
    rounding = _rounding(tiny)
    for T, case, loop in _loop_cases(g4, "loop"):
        diffusion = _sqrt_diffusion(case["T"])
        mask, anchor = case["input_mask"], case["x_start_mean"]
        assert torch.equal(loop["visited_t"], torch.arange(int(T) - 1, -1, -1))
        start = torch.where(mask.unsqueeze(-1) == 0, anchor, loop["z"])
        assert torch.equal(loop["x_noised"], start)
        B = mask.shape[0]

        def step(x, t, *, k):
            rep = x.shape[0] // B  # K·B examples when teacher-forced in one batch
            noise = loop["step_noise"]
            noise = noise.reshape(-1, *x.shape[1:]) if k is None else noise[k]
            return diffusion.p_sample(
                tiny,
                x,
                t,
                mask=mask.repeat(rep, 1),
                x_start=anchor.repeat(rep, 1, 1),
                noise=noise,
                denoised_fn=rounding,
            )

        _teacher_forced(step, loop["x_noised"], loop)
        final = _free_running(step, loop["x_noised"], loop)
        _assert_close(final, loop["final_sample"], FREE_TOL, "final_sample")
        with torch.no_grad():
            logits = tiny.get_logits(final)
            _assert_close(logits, loop["final_logits"], dict(rtol=1e-5, atol=1e-4), "logits")
            tokens = _final_tokens(tiny, final)
        assert torch.equal(tokens, loop["final_tokens"])
        assert _texts(decode, tokens, mask) == loop["recover"]
        assert _texts(decode, case["input_ids"], mask) == loop["reference"]
        len_x = mask.shape[1] - mask.sum(-1)
        sources = [decode(ids[: int(n)].tolist()) for ids, n in zip(case["input_ids"], len_x)]
        assert sources == loop["source"]


def test_g4_pseudo_ddim_loop(golden_dir, tiny):
    g4 = load_golden(golden_dir, "g4_diffusion.pt")
    decode = _custom_decoder(golden_dir)
    rounding = _rounding(tiny)
    for T, case, loop in _loop_cases(g4, "ddim_loop"):
        diffusion = _sqrt_diffusion(case["T"])
        mask, anchor = case["input_mask"], case["x_start_mean"]
        assert loop["gap"] == int(T) // loop["step"]
        assert loop["visited_t"].tolist() == list(range(int(T)))[::-1][:: loop["gap"]]
        B = mask.shape[0]

        def step(x, t, *, k):
            rep = x.shape[0] // B
            return diffusion.ddim_sample(
                tiny,
                x,
                t,
                mask=mask.repeat(rep, 1),
                x_start=anchor.repeat(rep, 1, 1),
                denoised_fn=rounding,
                eta=0.0,
            )

        _teacher_forced(step, loop["x_noised"], loop)
        final = _free_running(step, loop["x_noised"], loop)
        _assert_close(final, loop["final_sample"], FREE_TOL, "final_sample")
        with torch.no_grad():
            tokens = _final_tokens(tiny, final)
        assert torch.equal(tokens, loop["final_tokens"])
        assert _texts(decode, tokens, mask) == loop["recover"]


# ---------------------------------------------------------------------------------------------
# G5 / G6 losses


def _check_losses(model, diffusion, case, *, extra_keys=(), **kwargs):
    model.zero_grad(set_to_none=True)
    terms = training_losses(
        diffusion,
        model,
        case["input_ids"],
        case["input_mask"],
        case["t"],
        noise0=case["eps0"],
        noise=case["eps"],
        **kwargs,
    )
    for key in ("mse", "nll", "decoder_nll", "tT_loss", "loss", *extra_keys):
        if key in case:
            assert terms[key].shape == case["t"].shape
            _assert_close(terms[key], case[key], LOSS_TOL, key)
    terms["loss"].mean().backward()
    params = dict(model.named_parameters())
    for name, expected in case["grad_of_mean_loss"].items():
        _assert_close(params[name].grad, expected, GRAD_TOL, f"grad {name}")
    grads = [p.grad.double() for p in model.parameters() if p.grad is not None]
    grad_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert grad_norm.item() == pytest.approx(case["grad_norm_of_mean_loss"], rel=1e-4, abs=1e-6)
    model.zero_grad(set_to_none=True)
    return terms


def test_g5_v1_losses_and_gradients(golden_dir, tiny):
    g5 = load_golden(golden_dir, "g5_losses_v1.pt")
    for case in g5["by_T"].values():
        diffusion = _sqrt_diffusion(case["T"])
        assert torch.equal(diffusion.scale_timesteps(case["t"]), case["model_timestep_input"])
        with torch.no_grad():
            assert torch.equal(tiny.get_embeds(case["input_ids"]), case["x_start_mean"])
            z0 = diffusion.get_x_start(case["x_start_mean"], noise0=case["eps0"])
            x_t = diffusion.q_sample(z0, case["t"], noise=case["eps"], mask=case["input_mask"])
            _assert_close(z0, case["x_start"], FP32_TOL, "x_start")
            _assert_close(x_t, case["x_t"], FP32_TOL, "x_t")
            f = tiny(x_t, diffusion.scale_timesteps(case["t"]))
            _assert_close(f, case["model_output"], NET_TOL, "model_output")
        terms = _check_losses(tiny, diffusion, case, extra_keys=("t0_loss",))
        assert "reg_term" not in terms
        at_zero = case["t"] == 0
        assert torch.equal(terms["mse"][at_zero], terms["t0_loss"][at_zero])


def test_g6_v2_loss_variants(golden_dir, tiny, tiny_v2):
    g6 = load_golden(golden_dir, "g6_losses_v2.pt")
    torch.testing.assert_close(tiny_v2.mean_embed.detach(), g6["mean_embed"], rtol=0, atol=0)
    for T, case in g6["by_T"].items():
        for variant, v in case["variants"].items():
            data = dict(v, input_ids=case["input_ids"], input_mask=case["input_mask"])
            model = tiny_v2 if v["learned_mean_embed"] else tiny
            diffusion = _sqrt_diffusion(T, denoise=v["denoise"], denoise_rate=g6["denoise_rate"])
            assert diffusion.reg_rate == g6["reg_rate_effective"]
            kwargs = {}
            if v["denoise"]:
                probs = diffusion.forward_mask_prob(v["t"], v["bernoulli_probs"].shape)
                _assert_close(probs, v["bernoulli_probs"], FP32_TOL, f"{variant} bernoulli probs")
                drawn = (v["bernoulli_uniform"] < v["bernoulli_probs"]).float()
                assert torch.equal(v["bernoulli_draw"], drawn)
                kwargs["bernoulli_draw"] = v["bernoulli_draw"]
            mean_embed = getattr(model, "mean_embed", None)
            with torch.no_grad():
                x_t = diffusion.q_sample(
                    v["x_start"],
                    v["t"],
                    noise=v["eps"],
                    mask=case["input_mask"],
                    mean_embed=mean_embed,
                    **kwargs,
                )
            _assert_close(x_t, v["x_t"], FP32_TOL, f"{variant} x_t")
            terms = _check_losses(model, diffusion, data, **kwargs)
            reg = terms.get("reg_term", torch.tensor(0.0))
            assert reg.item() == pytest.approx(v["reg_term"], rel=1e-6, abs=1e-9), variant


def test_g6_denoise_without_mean_embed_raises(golden_dir, tiny):
    g6 = load_golden(golden_dir, "g6_losses_v2.pt")
    T, case = next(iter(g6["by_T"].items()))
    diffusion = _sqrt_diffusion(T, denoise=True, denoise_rate=g6["denoise_rate"])
    v = case["variants"]["mean_denoise"]
    with pytest.raises(ValueError, match="mean embedding"):
        training_losses(
            diffusion,
            tiny,
            case["input_ids"],
            case["input_mask"],
            v["t"],
            noise0=v["eps0"],
            noise=v["eps"],
        )


# ---------------------------------------------------------------------------------------------
# G6 sampling


def test_g6_v2_p_sample(golden_dir, tiny_v2):
    g6 = load_golden(golden_dir, "g6_losses_v2.pt")
    rounding = _rounding(tiny_v2)
    mu = tiny_v2.mean_embed.detach()
    for T, case in g6["by_T"].items():
        s = case["sampling"]["p_sample"]
        t = case["sampling"]["t"]
        diffusion = _sqrt_diffusion(T, denoise=True, denoise_rate=g6["denoise_rate"])
        probs = diffusion.reverse_mask_prob(t, s["bernoulli_probs"].shape)
        _assert_close(probs, s["bernoulli_probs"], FP32_TOL, "reverse bernoulli probs")
        with torch.no_grad():
            out = diffusion.p_sample(
                tiny_v2,
                s["x"],
                t,
                mask=case["input_mask"],
                x_start=s["x_start_mean"],
                noise=s["noise"],
                denoised_fn=rounding,
                mean_embed=mu,
                bernoulli_draw=s["bernoulli_draw"],
            )
        assert torch.equal(out["tokens"], s["rounded_tokens"])
        for key in ("sample", "pred_xstart", "greedy_mean"):
            _assert_close(out[key], s[key], NET_TOL, f"T={T} v2 p_sample/{key}")


def test_g6_v2_loop(golden_dir, tiny_v2):
    g6 = load_golden(golden_dir, "g6_losses_v2.pt")
    decode = _custom_decoder(golden_dir)
    rounding = _rounding(tiny_v2)
    mu = tiny_v2.mean_embed.detach()
    for T, case, loop in _loop_cases(g6, "loop", sub="sampling"):
        diffusion = _sqrt_diffusion(T, denoise=True, denoise_rate=g6["denoise_rate"])
        mask = case["input_mask"]
        B = mask.shape[0]
        anchor = tiny_v2.get_embeds(case["input_ids"]).detach()
        x_noised = torch.where(mask.unsqueeze(-1) == 0, anchor, loop["z"])
        assert torch.equal(loop["x_noised"], x_noised)
        start = loop["x_noised"] + mu * mask.unsqueeze(-1)  # v2 shifts the start toward μ
        _assert_close(start, loop["x_start_point_after_mean_shift"], FP32_TOL, "start shift")

        def step(x, t, *, k):
            rep = x.shape[0] // B
            noise, draw = loop["step_noise"], loop["bernoulli_draw"]
            if k is None:
                noise, draw = noise.reshape(-1, *x.shape[1:]), draw.reshape(-1, x.shape[1])
            else:
                noise, draw = noise[k], draw[k]
            return diffusion.p_sample(
                tiny_v2,
                x,
                t,
                mask=mask.repeat(rep, 1),
                x_start=anchor.repeat(rep, 1, 1),
                noise=noise,
                denoised_fn=rounding,
                mean_embed=mu,
                bernoulli_draw=draw,
            )

        _teacher_forced(step, loop["x_start_point_after_mean_shift"], loop)
        final = _free_running(step, loop["x_start_point_after_mean_shift"], loop)
        _assert_close(final, loop["final_sample"], FREE_TOL, "final_sample")
        with torch.no_grad():
            tokens = _final_tokens(tiny_v2, final)
        assert torch.equal(tokens, loop["final_tokens"])
        assert _texts(decode, tokens, mask) == loop["recover"]

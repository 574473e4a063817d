"""Noise floor (``--noise_floor F``, DINOISER): training draws only t ≥ round(F·T), the samplers
tell the network max(t, t_min), the config round trip, and a tiny run end to end."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import yaml

from diffuseq.cli.train import main
from diffuseq.config import RunConfig
from diffuseq.decoding import api
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.losses import training_losses
from diffuseq.diffusion.timestep_sampling import (
    TIMESTEP_DISTRIBUTIONS,
    FixStepTimesteps,
    LossSecondMomentTimesteps,
    create_timestep_distribution,
    floor_timestep,
)
from diffuseq.errors import ConfigError
from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.sampling import get_sampler
from diffuseq.sampling.inputs import SamplerInputs
from diffuseq.sampling.noise import NoiseSource
from diffuseq.sampling.noise_floor import NoiseFloored, noise_floor_time
from diffuseq.sampling.rounding import make_rounding_fn
from diffuseq.sampling.self_cond import SelfConditioned
from diffuseq.sampling.table import family_samplers
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.run_folder import open_run
from tests.conftest import tiny_denoiser
from tests.train_helpers import assert_same, make_tiny_data, tiny_argv

B, L, H, V = 3, 8, 8, 20


def _warm(sampler: LossSecondMomentTimesteps, ts, repeats: int) -> None:
    """Record the loss ``t/100 + 0.1·r`` for every ``t`` of ``ts``, ``repeats`` times."""
    for r in range(repeats):
        sampler.update_with_all_losses(list(ts), [t / 100 + 0.1 * r for t in ts])


# ------------------------------------------------------------------------------ training side


def _original_sample(weights: np.ndarray, batch: int, seed: int):
    """The original's draw (step_sample.py), written out: ``p = w/Σw``, ``1/(len(p)·p_t)``."""
    np.random.seed(seed)
    p = weights / np.sum(weights)
    indices = np.random.choice(len(p), size=(batch,), p=p)
    return torch.from_numpy(indices).long(), torch.from_numpy(1 / (len(p) * p[indices])).float()


@pytest.mark.parametrize("name", TIMESTEP_DISTRIBUTIONS)
def test_floor_zero_draws_and_losses_are_the_originals(name):
    T = 21  # odd: fixstep's T−1 entries
    floored = create_timestep_distribution(name, T, noise_floor=0.0)
    assert floored.min_timestep == 0
    if name == "lossaware":
        _warm(floored, range(T), 10)
        assert floored.warmed_up()
        h = floored.loss_history
        original = np.sqrt(np.mean(h**2, axis=-1))
        original = original / np.sum(original) * (1 - 0.001) + 0.001 / T
    elif name == "fixstep":
        original = np.concatenate([np.ones(10), np.zeros(10) + 0.5])
    else:
        original = np.ones(T)
    assert np.array_equal(floored.weights(), original)
    np.random.seed(4)
    t, w = floored.sample(64)
    t_ref, w_ref = _original_sample(original, 64, 4)
    assert torch.equal(t, t_ref) and torch.equal(w, w_ref)

    # ... so the losses at those t are the same numbers too.
    torch.manual_seed(0)
    model = _model(False).train()
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T)
    ids = torch.randint(0, V, (B, L))
    mask = (torch.arange(L) >= 3).long().expand(B, L)
    losses = []
    for steps in (t[:B], t_ref[:B]):
        torch.manual_seed(7)
        gen = torch.Generator().manual_seed(1)
        losses.append(training_losses(diffusion, model, ids, mask, steps, generator=gen))
    assert_same(*losses)


@pytest.mark.parametrize("name", TIMESTEP_DISTRIBUTIONS)
def test_no_draw_below_the_floor(name):
    sampler = create_timestep_distribution(name, 100, noise_floor=0.25)
    assert sampler.min_timestep == 25
    if name == "lossaware":
        _warm(sampler, range(25, 100), 10)
        assert sampler.warmed_up()
    gen = np.random.default_rng(0)
    t, w = sampler.sample(20000, generator=gen)
    assert int(t.min()) == 25 and int(t.max()) == 99  # the floor itself is drawn
    assert len(torch.unique(t)) == 75
    assert sampler.weights()[:25].tolist() == [0.0] * 25
    # importance weights: 1/(N·p_t) with N = 75 allowed steps, so E[w·L_t] = mean_{t≥25} L_t.
    p = sampler.weights() / sampler.weights().sum()
    torch.testing.assert_close(w, torch.from_numpy(1 / (75 * p[t.numpy()])).float())
    assert float(np.sum(p[25:] * (1 / (75 * p[25:])))) == pytest.approx(1.0, abs=1e-12)
    if name == "uniform":
        torch.testing.assert_close(w, torch.ones(20000), rtol=1e-6, atol=0)
    if name == "fixstep":  # 1 on 25..49, 0.5 on 50..99: p = 0.02 and 0.01
        values = sorted(set(w.tolist()))
        assert values == pytest.approx([2 / 3, 4 / 3], rel=1e-6) and len(values) == 2
    # the legacy global RNG path honours the floor as well
    np.random.seed(1)
    assert int(sampler.sample(5000)[0].min()) >= 25


def test_lossaware_warms_up_on_the_allowed_steps_only():
    floored = LossSecondMomentTimesteps(100, history_per_term=2, min_timestep=25)
    plain = LossSecondMomentTimesteps(100, history_per_term=2)
    assert floored.weights().tolist() == [0.0] * 25 + [1.0] * 75  # before warm-up: uniform ≥ 25
    _warm(floored, range(25, 100), 1)
    assert not floored.warmed_up()
    floored.update_with_all_losses(list(range(25, 99)), [t / 100 + 0.1 for t in range(25, 99)])
    assert not floored.warmed_up()  # step 99 has one loss only
    floored.update_with_all_losses([99], [0.99])
    _warm(plain, range(25, 100), 2)
    assert floored.warmed_up() and not plain.warmed_up()  # t < 25 never blocks the floored one
    assert floored.loss_counts[:25].tolist() == [0] * 25
    w = floored.weights()
    assert w[:25].tolist() == [0.0] * 25
    # history of t: [t/100, t/100 + 0.1] (t = 99: [0.99, 0.99]); w_t ∝ √mean(h²), mixed with 0.001
    h = np.array([[t / 100, t / 100 + 0.1] for t in range(25, 99)] + [[0.99, 0.99]])
    rms = np.sqrt((h**2).mean(axis=1))
    np.testing.assert_allclose(w[25:], rms / rms.sum() * 0.999 + 0.001 / 75, rtol=1e-12)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w[25] == pytest.approx(0.0060470, abs=1e-7)  # smallest loss, smallest weight
    assert w[99] == pytest.approx(0.0196535, abs=1e-7)


@pytest.mark.parametrize("warm", [False, True], ids=["warming", "warm"])
def test_resume_of_the_floored_lossaware_state_is_exact(warm):
    a = LossSecondMomentTimesteps(100, history_per_term=3, min_timestep=25)
    _warm(a, range(25, 100), 3 if warm else 2)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = LossSecondMomentTimesteps(100, history_per_term=3, min_timestep=25)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert a.warmed_up() == b.warmed_up() == warm
    for step in range(3):
        ta, wa = a.sample(16, generator=np.random.default_rng(step))
        tb, wb = b.sample(16, generator=np.random.default_rng(step))
        assert torch.equal(ta, tb) and torch.equal(wa, wb) and int(ta.min()) >= 25
        for s in (a, b):
            s.update_with_all_losses(ta.tolist(), (ta.double() / 50).tolist())
        assert np.array_equal(a.weights(), b.weights())
        assert np.array_equal(a.loss_history, b.loss_history)


def test_floor_in_original_units_with_respacing():
    assert floor_timestep(0.25, range(100), 100) == 25
    assert floor_timestep(0.3, [0, 25, 50, 75], 100) == 2
    spaced = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=100, timestep_respacing="ddim4"
    )
    sampler = create_timestep_distribution("uniform", spaced, noise_floor=0.3)
    assert sampler.min_timestep == 2 and sampler.weights().tolist() == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="leaves no timestep"):
        FixStepTimesteps(5, min_timestep=4)  # fixstep draws from 0..3 when T = 5


# ------------------------------------------------------------------------------ sampling side


def _model(self_cond: bool) -> TransformerNetModel:
    return tiny_denoiser(vocab_size=V, hidden_dim=H, seed=0, self_cond=self_cond).eval()


class Recorder:
    """Calls ``model`` and records the time input and keyword arguments it was given."""

    def __init__(self, model):
        self.model, self.times, self.kwargs, self.outputs = model, [], [], []

    def __call__(self, x, t, **kwargs):
        self.times.append(t.clone())
        self.kwargs.append({k: v.clone() for k, v in kwargs.items()})
        self.outputs.append(self.model(x, t, **kwargs))
        return self.outputs[-1]


def _sample(name, model, diffusion):
    torch.manual_seed(3)
    text_model = _model(False)
    ids = torch.randint(4, V, (B, L))
    mask = (torch.arange(L) >= 3).long().expand(B, L)
    x_start = text_model.get_embeds(ids).detach()
    noise = NoiseSource([1, 2, 3], [0, 1, 2], shape=(L, H))
    x_T = torch.where(mask.unsqueeze(-1) == 0, x_start, noise.gaussian())
    return get_sampler(name)(SamplerInputs(
        model, diffusion, x_T, input_mask=mask, x_start=x_start, noise=noise,
        steps=min(10, diffusion.num_timesteps),
        denoised_fn=make_rounding_fn(text_model.word_embedding.weight), clamp_step=0,
    ))  # fmt: skip


@pytest.mark.parametrize("respacing", ["", "5"], ids=["full", "respaced"])
@pytest.mark.parametrize("name", family_samplers("gaussian"))
def test_every_sampler_tells_the_network_max_t_tmin(name, respacing):
    diffusion = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=20, timestep_respacing=respacing
    )
    floor = noise_floor_time(diffusion, 0.5)  # t_min = 10 of T = 20: 10·1000/20
    assert floor.dtype == torch.float32 and float(floor) == 500.0
    plain = Recorder(_model(False))
    _sample(name, plain, diffusion)
    outer = Recorder(NoiseFloored(inner := Recorder(_model(False)), floor))
    _sample(name, outer, diffusion)
    for before, told, seen in zip(plain.times, outer.times, inner.times, strict=True):
        assert torch.equal(told, before)  # the sampler's own schedule is unchanged
        assert torch.equal(seen, torch.maximum(told, torch.tensor(500.0)))
    told = torch.cat(outer.times)
    assert float(told.min()) < 500.0 and float(torch.cat(inner.times).min()) == 500.0
    if name == "ancestral":  # every step: t = 19..0 (respaced: original 19, 14, 9, 4, 0)
        original = diffusion.timestep_map[::-1].copy()
        expected = [diffusion.network_time(torch.tensor(max(int(s), 10))) for s in original]
        assert [float(t[0]) for t in inner.times] == [float(e) for e in expected]
        assert [float(t[0]) for t in inner.times][-2:] == [500.0, 500.0]


@pytest.mark.parametrize("order", ["floor_outside", "floor_inside"])
@pytest.mark.parametrize("name", ["ancestral", "dpm-solver++"])
def test_the_floor_composes_with_self_conditioning(name, order):
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    floor = noise_floor_time(diffusion, 0.25)
    inner = Recorder(_model(True))
    if order == "floor_outside":
        model = NoiseFloored(SelfConditioned(inner), floor)
    else:
        model = SelfConditioned(NoiseFloored(inner, floor))
    outputs = Recorder(model)
    _sample(name, outputs, diffusion)
    assert float(torch.cat(inner.times).min()) == 250.0
    assert torch.count_nonzero(inner.kwargs[0]["self_cond"]) == 0
    assert len(inner.kwargs) == (20 if name == "ancestral" else 10)
    for k in range(1, len(inner.kwargs)):  # each call sees the previous call's x̂_0
        assert torch.equal(inner.kwargs[k]["self_cond"], inner.outputs[k - 1])
        assert torch.count_nonzero(inner.outputs[k - 1]) > 0


def test_floor_zero_wrapper_is_the_identity_for_every_time():
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    recorder = Recorder(lambda x, t: x)
    t = diffusion.scale_timesteps(torch.arange(20))
    NoiseFloored(recorder, noise_floor_time(diffusion, 0.0))(torch.zeros(20, 1, 1), t)
    assert torch.equal(recorder.times[0], t)


# ------------------------------------------------------------------------------ config


def test_config_field_validation_and_old_configs(golden_dir, tmp_path):
    assert RunConfig().diffusion.noise_floor == 0.0
    config = RunConfig().replace("diffusion", noise_floor=0.3).validate()
    config.save_yaml(tmp_path / "config.yaml")
    assert RunConfig.load_yaml(tmp_path / "config.yaml") == config
    assert RunConfig.from_dict({"noise_floor": "0.3"}).diffusion.noise_floor == 0.3
    # a config.yaml from before the flag, and the original's training_args.json: off
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["diffusion"]["noise_floor"]
    assert RunConfig.from_dict(saved).diffusion.noise_floor == 0.0
    runs = sorted((golden_dir / "g9_run" / "diffusion_models").glob("*/training_args.json"))
    original = json.loads(runs[0].read_text())
    assert RunConfig.from_training_args(original).diffusion.noise_floor == 0.0


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), 0.9999])
def test_validation_names_the_flag(value):
    config = RunConfig().replace("diffusion", noise_floor=value, diffusion_steps=100)
    with pytest.raises(ConfigError, match="--noise_floor"):
        config.validate()


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def floor_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("floor")
    data = make_tiny_data(root / "data")
    run = root / "run"
    assert main(tiny_argv(data, noise_floor=0.3, checkpoint_path=run)) == 0
    return run


def test_a_floored_run_trains_and_decodes(floor_run):
    # T = 8, F = 0.3: t_min = round(2.4) = 2; the loss-aware history never holds t < 2
    assert open_run(floor_run).config.diffusion.noise_floor == 0.3
    state = load_state_file(floor_run / "state_000008.pt")
    counts = state["sampler"]["loss_counts"]
    assert counts[:2].tolist() == [0, 0] and int(counts[2:].min()) > 0
    generator = api.load(floor_run)
    assert generator.decoder.diffusion.noise_floor == 0.3  # the process carries the floor
    seen = []
    hook = generator.decoder.model.register_forward_pre_hook(lambda m, a: seen.append(a[1]))
    try:
        out = generator.generate(["the cat sat"], sampler="ancestral", num_samples=2)
        solver = generator.generate(["the cat sat"], sampler="dpm-solver++", steps=4)
    finally:
        hook.remove()
    assert len(out[0]) == 2 and all(isinstance(c, str) for c in out[0]) and len(solver[0]) == 1
    ancestral = torch.stack(seen[: 8 * 1]).view(8, -1)[:, 0].tolist()  # 1 batch of 2 rows
    assert ancestral == [875.0, 750.0, 625.0, 500.0, 375.0, 250.0, 250.0, 250.0]  # 125·max(t, 2)
    assert float(torch.cat(seen).min()) == 250.0

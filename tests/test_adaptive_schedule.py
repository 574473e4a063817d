"""SeqDiffuSeq's adaptive noise schedule (Yuan et al. 2022, arXiv 2212.10325, §3.3),
sequence-level: ``--adaptive_schedule N``. The refit on hand-made loss curves (linear: no
change; ℓ a known function of ᾱ: linear after the refit; degenerate: no change), off = the
original, the refusals, and a tiny run that refits, resumes exactly across a refit and decodes
with the refitted schedule from its run folder and its model folder."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseq.config import RunConfig
from diffuseq.decoding import api
from diffuseq.diffusion.adaptive_schedule import (
    MAX_BETA,
    MIN_BETA,
    AdaptiveSchedule,
    isotonic,
    refit_betas,
)
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.schedules import get_named_beta_schedule
from diffuseq.errors import CheckpointError, ConfigError
from diffuseq.families import get_family
from diffuseq.families.gaussian import FAMILY
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.checkpoint_format import infer_architecture
from diffuseq.store.hf_folder import MODEL_FILE, load_safetensors
from tests.conftest import tiny_denoiser
from tests.train_helpers import (
    make_tiny_data,
    tiny_argv,
    tiny_config,
    train_straight_and_split,
)

V = 20


def _alpha_bar(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - betas)


# ------------------------------------------------------------------------------ the refit


def test_isotonic_pools_adjacent_violators():
    assert isotonic(np.array([1.0, 3.0, 2.0, 4.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert isotonic(np.array([3.0, 2.0, 1.0])).tolist() == [2.0, 2.0, 2.0]
    increasing = np.array([0.1, 0.2, 0.2, 0.7])
    assert np.array_equal(isotonic(increasing), increasing)


def test_a_loss_already_linear_in_t_keeps_the_schedule():
    betas = get_named_beta_schedule("sqrt", 50)
    losses = 0.3 + 2.0 * np.arange(50) / 49
    new_betas, expected = refit_betas(betas, losses)
    np.testing.assert_allclose(new_betas, betas, rtol=1e-6, atol=0)
    np.testing.assert_allclose(expected, losses, rtol=1e-12)


def test_a_convex_loss_of_alpha_bar_becomes_linear_in_t():
    # ℓ = f(ᾱ) = (1 − ᾱ)², convex along the cosine schedule's t; after the refit f(ᾱ'_t) is linear
    T = 200
    betas = get_named_beta_schedule("cosine", T)
    f = lambda ab: (1.0 - ab) ** 2  # noqa: E731
    before = f(_alpha_bar(betas))
    line = lambda v: v[0] + (v[-1] - v[0]) * np.arange(T) / (T - 1)  # noqa: E731
    assert np.abs(before - line(before)).max() > 0.2  # far from linear: 0.2 of a range ~1
    new_betas, expected = refit_betas(betas, before)
    after = f(_alpha_bar(new_betas))
    np.testing.assert_allclose(expected, line(before), rtol=1e-12)
    assert np.abs(after - line(before)).max() < 2e-3  # linear up to the interpolation error
    # ᾱ'_0 = ᾱ_0; ᾱ' strictly decreasing; β' within the clipping (the cosine schedule's last
    # β is 0.999 already, so the clip keeps ᾱ'_{T−1} above ᾱ_{T−1}: 2.5e-6 vs 6.1e-8)
    ab, new_ab = _alpha_bar(betas), _alpha_bar(new_betas)
    assert new_ab[0] == pytest.approx(ab[0], rel=1e-12)
    assert new_betas.max() == MAX_BETA and ab[-1] < new_ab[-1] < 3e-6
    assert (np.diff(new_ab) < 0).all() and (new_betas <= MAX_BETA).all()


def test_a_noisy_curve_gives_a_monotone_clipped_schedule():
    T = 64
    betas = get_named_beta_schedule("linear", T)
    rng = np.random.default_rng(0)
    losses = np.sqrt(np.arange(T) / T) + 0.2 * rng.standard_normal(T)
    new_betas, expected = refit_betas(betas, losses)
    assert ((new_betas >= MIN_BETA) & (new_betas <= MAX_BETA)).all()
    assert (np.diff(_alpha_bar(new_betas)) < 0).all()
    assert (np.diff(expected) > 0).all()
    assert not np.allclose(new_betas, betas)
    assert np.array_equal(refit_betas(betas, losses)[0], new_betas)  # deterministic


def test_degenerate_curves_leave_the_schedule_unchanged():
    betas = get_named_beta_schedule("sqrt", 16)
    assert refit_betas(betas, np.full(16, 0.5)) is None  # flat
    assert refit_betas(betas, np.linspace(1.0, 0.1, 16)) is None  # decreasing: isotonic is flat
    bad = np.linspace(0.1, 1.0, 16)
    bad[3] = np.nan
    assert refit_betas(betas, bad) is None
    # the training state refits only when due and once every t has been seen
    schedule = AdaptiveSchedule(16, interval=4)
    schedule.update(range(15), np.linspace(0.1, 1.0, 15))
    assert schedule.refit(4, betas) is None  # t = 15 unseen
    schedule.update([15, 15], [2.0, 1.0])  # EMA: 2.0, then 0.9·2.0 + 0.1·1.0
    assert schedule.losses[15] == pytest.approx(1.9) and schedule.counts[15] == 2
    assert schedule.refit(3, betas) is None  # not due
    assert schedule.refit(8, betas) is not None and schedule.refits == 1


def test_set_betas_recomputes_every_table_as_the_constructor():
    a = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=12)
    new = refit_betas(a.betas, np.linspace(0, 1, 12) ** 3)[0]
    b = GaussianDiffusion(betas=new, timestep_map=a.timestep_map)
    a.set_betas(new)
    tables = [k for k, v in vars(b).items() if isinstance(v, np.ndarray)]
    assert len(tables) > 15
    for key in tables:
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    with pytest.raises(ValueError, match="K >= 2"):
        a.set_betas(new[:-1])


# ------------------------------------------------------------------------------ off, refusals


def test_off_is_the_original_and_the_other_families_refuse_it(tmp_path):
    assert RunConfig().diffusion.adaptive_schedule == 0
    data = make_tiny_data(tmp_path / "data", n_train=8)
    plain = FAMILY.build_model(tiny_config(data), vocab_size=V)
    assert "noise_betas" not in plain.state_dict()
    objective = FAMILY.build_objective(tiny_config(data), FAMILY.build_process(tiny_config(data)))
    assert objective.adaptive is None and "adaptive_schedule" not in objective.state_dict()
    config = tiny_config(data, adaptive_schedule=3)
    on = FAMILY.build_model(config, vocab_size=V)
    keys = list(on.state_dict())  # a top-level buffer: listed before the submodules' keys
    assert keys.count("noise_betas") == 1
    assert [k for k in keys if k != "noise_betas"] == list(plain.state_dict())
    assert np.array_equal(on.noise_betas.numpy(), FAMILY.build_process(config).betas)
    assert infer_architecture(on.state_dict())["adaptive_schedule"] is True
    with pytest.raises(CheckpointError, match="--adaptive_schedule"):
        plain.load_state_dict(on.state_dict())
    with pytest.raises(CheckpointError, match="--adaptive_schedule"):
        on.load_state_dict(plain.state_dict())
    with pytest.raises(ConfigError, match="--adaptive_schedule"):
        RunConfig.from_dict({"adaptive_schedule": -1}).validate()
    with pytest.raises(ConfigError, match="--noise_floor"):
        RunConfig.from_dict({"adaptive_schedule": 5, "noise_floor": 0.25}).validate()
    discrete = {"family": "discrete", "schedule_sampler": "uniform", "adaptive_schedule": 5}
    with pytest.raises(ConfigError, match="--adaptive_schedule"):
        RunConfig.from_dict(discrete).validate()
    with pytest.raises(ConfigError, match="--adaptive_schedule"):
        ar = tiny_config(data, family="ar", schedule_sampler="uniform", adaptive_schedule=5)
        get_family("ar").build_model(ar, vocab_size=V)
    # a decoder of a model without the buffer keeps the configured process
    process = FAMILY.build_process(tiny_config(data))
    FAMILY.sync_process(process, tiny_denoiser())
    assert np.array_equal(process.betas, FAMILY.build_process(tiny_config(data)).betas)


# ------------------------------------------------------------------------------ a tiny run


def test_a_run_refits_resumes_exactly_across_a_refit_and_decodes_with_it(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    argv = tiny_argv(data, ema_rate="0.9", adaptive_schedule="2")
    straight, split, a = train_straight_and_split(argv, tmp_path)
    first = load_state_file(split / "state_000004.pt")["sampler"]["adaptive_schedule"]
    refits = a["sampler"]["adaptive_schedule"]["refits"]
    # the refit due at step 4 runs before update 5, in the resumed process; step 6's after it
    assert (first["refits"], refits) == (0, 2)
    log = (straight / "log.txt").read_text()
    assert log.count("refitted the noise schedule (--adaptive_schedule") == refits
    # refits come before an update, never after the last one: the saved schedule is the one
    # the saved weights were trained with (updates 7 and 8 ran under the refit at step 6)
    assert "step 6: refitted" in log and "step 8: refitted" not in log
    initial = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=8).betas
    trained = a["model"]["noise_betas"].numpy()
    assert not np.allclose(trained, initial)
    assert (np.diff(np.cumprod(1.0 - trained)) < 0).all()

    # decoding takes the refitted schedule from the weights (EMA file and model folder)
    ema = load_state_file(straight / "ema_0.9_000008.pt")
    assert np.array_equal(ema["noise_betas"].numpy(), trained)
    generator = api.load(straight / "ema_0.9_000008.pt", device="cpu")
    assert np.array_equal(generator.decoder.diffusion.betas, trained)
    folder = straight / "hf" / "ema_0.9_000008"
    assert np.array_equal(load_safetensors(folder / MODEL_FILE)["noise_betas"].numpy(), trained)
    from_folder = api.load(folder, device="cpu")
    assert np.array_equal(from_folder.decoder.diffusion.betas, trained)
    sources = ["where is the station ?", "i want a ticket"]
    for sampler, steps in (("dpm-solver++", 4), ("ancestral", None)):
        options = {"sampler": sampler, "steps": steps, "num_samples": 2, "seed": 5}
        out = generator.generate_raw(sources, **options)
        assert len(out) == 2 and out == from_folder.generate_raw(sources, **options)


def test_it_composes_with_length_prediction_and_difformer_options(tmp_path):
    """--adaptive_schedule with --length_predict, --embedding_norm and --noise_rescale: exact
    resume across a refit, and a length-beam decode (SDE-DPM-Solver++) that uses the refitted
    schedule from the EMA file and the model folder alike."""
    data = make_tiny_data(tmp_path / "data")
    flags = {"length_predict": "true", "embedding_norm": "true", "noise_rescale": "2"}
    argv = tiny_argv(data, ema_rate="0.9", adaptive_schedule="2", **flags)
    straight, split, a = train_straight_and_split(argv, tmp_path)
    trained = a["model"]["noise_betas"].numpy()
    rescaled = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=8, noise_rescale=2.0
    ).betas
    assert a["sampler"]["adaptive_schedule"]["refits"] >= 1
    assert not np.allclose(trained, rescaled)
    generator = api.load(straight / "ema_0.9_000008.pt", device="cpu")
    from_folder = api.load(straight / "hf" / "ema_0.9_000008", device="cpu")
    assert np.array_equal(generator.decoder.diffusion.betas, trained)
    options = {"sampler": "sde-dpm-solver++", "steps": 3, "num_samples": 2, "length_beam": 2}
    out = generator.generate_raw(["where is the station ?", "good morning"], **options)
    assert len(out) == 2 and out == from_folder.generate_raw(
        ["where is the station ?", "good morning"], **options
    )

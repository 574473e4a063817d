"""Self-conditioning (``--self_cond``): the model input, the 50% two-pass training forward, the
decode-time state that feeds each step the previous x̂_0, and the run end to end."""

from __future__ import annotations

import pytest
import torch

from diffuseq.cli.train import main
from diffuseq.decoding import api
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.losses import self_condition, training_losses
from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.sampling.self_cond import SelfConditioned
from diffuseq.sampling.table import family_samplers
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.checkpoint_format import infer_architecture
from tests.conftest import tiny_denoiser
from tests.train_helpers import assert_same, make_tiny_data, tiny_argv

B, L, H, V = 3, 8, 8, 20


def _model(self_cond: bool, seed: int = 0) -> TransformerNetModel:
    return tiny_denoiser(vocab_size=V, hidden_dim=H, seed=seed, self_cond=self_cond).eval()


def test_keys_and_initial_weights_of_the_plain_model_are_unchanged():
    plain, sc = _model(False), _model(True)
    assert list(sc.state_dict()) == [*plain.state_dict(), "self_cond_proj.weight"]
    for key, value in plain.state_dict().items():
        assert torch.equal(value, sc.state_dict()[key]), key  # W_sc drew no random numbers
    assert torch.count_nonzero(sc.self_cond_proj.weight) == 0
    assert infer_architecture(sc.state_dict())["self_cond"] is True
    assert infer_architecture(plain.state_dict())["self_cond"] is False


def test_zero_projection_or_zero_condition_equals_the_plain_model():
    plain, sc = _model(False), _model(True)
    x, t = torch.randn(B, L, H), torch.tensor([0.0, 500.0, 999.5])
    estimate = torch.randn(B, L, H)
    with torch.no_grad():
        reference = plain(x, t)
        assert sc(x, t, self_cond=estimate).shape == (B, L, H)
        torch.testing.assert_close(sc(x, t, self_cond=estimate), reference, rtol=0, atol=0)
        sc.self_cond_proj.weight.normal_()
        torch.testing.assert_close(sc(x, t), reference, rtol=0, atol=0)  # None = zeros
        torch.testing.assert_close(
            sc(x, t, self_cond=torch.zeros_like(x)), reference, rtol=0, atol=0
        )
        assert not torch.allclose(sc(x, t, self_cond=estimate), reference)
    with pytest.raises(ValueError, match="self_cond"):
        plain(x, t, self_cond=estimate)


class _Recorder:
    """``model(x, t, self_cond)`` returning ``x + 1`` and recording the conditions it saw."""

    def __init__(self):
        self.seen = []

    def __call__(self, x, t, self_cond):
        self.seen.append(self_cond.clone())
        return x + 1


def test_the_training_self_condition_is_dropped_half_of_the_time():
    model, x_t = _Recorder(), torch.randn(2000, 2, 3)
    condition = self_condition(model, x_t, torch.zeros(2000), torch.Generator().manual_seed(5))
    used = torch.rand(2000, generator=torch.Generator().manual_seed(5)) < 0.5
    assert torch.equal(condition[used], x_t[used] + 1)  # the first pass saw zeros
    assert torch.count_nonzero(condition[~used]) == 0
    assert torch.count_nonzero(model.seen[0]) == 0
    assert 0.45 < used.float().mean().item() < 0.55


def test_training_losses_with_self_cond_are_deterministic_and_train_the_projection():
    model = _model(True).train()
    model.self_cond_proj.weight.data.normal_(std=0.1)
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    ids = torch.randint(0, V, (B, L))
    mask = (torch.arange(L) >= 3).long().expand(B, L)
    t = torch.tensor([0, 7, 19])
    runs = []
    for _ in range(2):
        torch.manual_seed(7)  # attention dropout draws from the global generator
        gen = torch.Generator().manual_seed(1)
        runs.append(training_losses(diffusion, model, ids, mask, t, generator=gen))
    first, again = runs
    assert_same(first, again)
    first["loss"].mean().backward()
    assert model.self_cond_proj.weight.grad is not None


def test_decode_state_feeds_the_previous_estimate_and_resets_per_batch():
    recorder = _Recorder()
    wrapped = SelfConditioned(recorder)
    x = torch.zeros(1, 2, 3)
    wrapped(x, torch.zeros(1))
    wrapped(x + 5, torch.zeros(1))
    assert torch.count_nonzero(recorder.seen[0]) == 0
    assert torch.equal(recorder.seen[1], x + 1)  # the previous call's x̂_0


@pytest.fixture(scope="module")
def self_cond_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc")
    data = make_tiny_data(root / "data")
    run = root / "run"
    assert main(tiny_argv(data, self_cond="true", checkpoint_path=run)) == 0
    return run


def test_every_sampler_decodes_a_self_conditioned_run(self_cond_run):
    assert "self_cond_proj.weight" in load_state_file(self_cond_run / "ema_0.9999_000008.pt")
    generator = api.load(self_cond_run)
    for name in family_samplers("gaussian"):
        steps = None if name == "ancestral" else 4
        out = generator.generate(["the cat sat"], sampler=name, steps=steps, num_samples=2)
        assert len(out) == 1 and len(out[0]) == 2 and all(isinstance(c, str) for c in out[0])
    first = generator.generate(["the cat sat"], sampler="dpm-solver++", steps=4, seed=3)
    assert first == generator.generate(["the cat sat"], sampler="dpm-solver++", steps=4, seed=3)


@pytest.mark.parametrize(
    "extra",
    [
        {"bf16": "true"},
        {"learned_mean_embed": "true", "denoise": "true", "denoise_rate": "0.5"},
    ],
    ids=["bf16", "v2"],
)
def test_self_cond_composes_with(tmp_path, extra):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = tiny_argv(data, self_cond="true", learning_steps=4, checkpoint_path=run, **extra)
    assert main(argv) == 0
    ema = load_state_file(run / "ema_0.9999_000004.pt")
    assert "self_cond_proj.weight" in ema and torch.isfinite(ema["self_cond_proj.weight"]).all()

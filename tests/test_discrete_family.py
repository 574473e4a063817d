"""The discrete family (RDM, absorbing-state diffusion): forward process, loss, samplers, model,
config, and train -> decode -> evaluate through the CLIs with an exact resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diffuseq.config import DecodeConfig, RunConfig
from diffuseq.discrete.losses import discrete_losses
from diffuseq.discrete.process import AbsorbingDiffusion, keep_probability
from diffuseq.discrete.samplers import absorbing_sample, rdm_sample
from diffuseq.errors import ConfigError
from diffuseq.families import FAMILIES, get_family
from diffuseq.sampling.noise import NoiseSource
from diffuseq.sampling.table import family_samplers, get_sampler
from tests.conftest import REPO_ROOT
from tests.train_helpers import assert_same, make_tiny_data, read_metrics, tiny_argv

MASK = 7  # mask id of the stub vocabulary (V = 7)
TINY_MODEL = {
    "family": "discrete",
    "hidden_dim": 16,
    "hidden_t_dim": 16,
    "bert_hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 11,
    "diff_steps": 8,
    "seq_len": 12,
}


def _layout(batch: int, length: int = 10, source: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(batch * length).reshape(batch, length) % MASK
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, source:] = 1
    return ids, mask


# ------------------------------------------------------------------------------ forward process


def test_schedules_end_points_and_values():
    u = np.array([0.0, 0.25, 0.5, 1.0])
    assert keep_probability("linear", u).tolist() == [1.0, 0.75, 0.5, 0.0]
    np.testing.assert_allclose(keep_probability("cosine", u), np.cos(0.5 * np.pi * u), atol=1e-15)
    assert keep_probability("cosine", 1.0) == 0.0  # exact absorption at u = 1
    with pytest.raises(ValueError, match="linear, cosine"):
        keep_probability("sqrt", u)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_masking_rate_follows_schedule_and_source_never_masked(schedule):
    T = 8
    process = AbsorbingDiffusion(num_timesteps=T, schedule=schedule)
    ids, mask = _layout(4000, length=20, source=8)
    generator = torch.Generator().manual_seed(0)
    for level in (0, 1, 3, 6, 8):
        t = torch.full((ids.shape[0],), level)
        x_t, noisy = process.q_sample(ids, mask, t, mask_token_id=MASK, generator=generator)
        assert torch.equal(x_t[:, :8], ids[:, :8]) and not noisy[:, :8].any()  # source clean
        assert torch.equal(noisy, x_t == MASK)
        assert torch.equal(x_t[~noisy], ids[~noisy])
        rate = noisy[:, 8:].float().mean().item()
        expected = 1.0 - keep_probability(schedule, level / T)
        assert abs(rate - expected) < 0.01, (level, rate, expected)
    assert process.alpha(torch.tensor([0, T])).tolist() == [1.0, 0.0]


def test_weights():
    process = AbsorbingDiffusion(num_timesteps=4, schedule="linear")
    t = torch.tensor([1, 2, 4])
    assert process.elbo_weight(t).tolist() == [4.0, 2.0, 1.0]  # T/t
    assert process.rdm_weight(t).tolist() == [1.0, 0.75, 0.25]  # 1 − (t−1)/T


# ------------------------------------------------------------------------------ loss


class _StubNet(nn.Module):
    """Hidden state = a fixed table ``[L, 3]``, read out by the identity: logits = the table."""

    mask_token_id = 3

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)
        self.seen: list[torch.Tensor] = []

    def forward(self, ids, *, read_out=True):
        self.seen.append(ids.clone())
        return self.table.expand(ids.shape[0], -1, -1)

    def logits_projection(self):
        return torch.eye(3), torch.zeros(3)


def test_loss_against_a_hand_computed_case():
    """V = 3, [MASK] = 3, L = 4 (source 2, target 2), T = 4 (linear: α = 1 − t/4)."""
    table = torch.tensor([[9.0, 9, 9], [9, 9, 9], [1, 2, 0], [0, 3, 1]])
    net = _StubNet(table)
    process = AbsorbingDiffusion(num_timesteps=4, schedule="linear")
    ids = torch.tensor([[0, 1, 2, 1], [0, 1, 2, 1]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    t = torch.tensor([2, 4])  # masking rates 0.5 and 1
    uniforms = torch.tensor([[0.1, 0.1, 0.3, 0.7], [0.0, 0.0, 0.5, 0.99]])
    terms = discrete_losses(process, net, ids, mask, t, uniforms=uniforms, loss="rdm")
    assert torch.equal(net.seen[0], torch.tensor([[0, 1, 3, 1], [0, 1, 3, 3]]))
    ce_a = math.log(math.e + math.e**2 + 1)  # position 2: logits (1, 2, 0), target 2
    ce_b = math.log(1 + math.e**3 + math.e) - 3  # position 3: logits (0, 3, 1), target 1
    sums = torch.tensor([ce_a, ce_a + ce_b])
    torch.testing.assert_close(terms["loss"], torch.tensor([0.75, 0.25]) * sums / 2)
    torch.testing.assert_close(terms["nll"], torch.tensor([2.0, 1.0]) * sums / 2)  # T/t
    torch.testing.assert_close(terms["ce"], sums / torch.tensor([1.0, 2.0]))
    assert terms["mask_rate"].tolist() == [0.5, 1.0]
    elbo = discrete_losses(process, net, ids, mask, t, uniforms=uniforms, loss="elbo")
    torch.testing.assert_close(elbo["loss"], terms["nll"])
    elbo["loss"].sum().backward()  # gradients reach the network through the noisy rows only
    assert net.table.grad[:2].abs().sum() == 0 and net.table.grad[2:].abs().sum() > 0


def test_loss_of_the_real_model_is_the_full_logits_cross_entropy():
    config = RunConfig.from_dict(TINY_MODEL).validate()
    family = get_family("discrete")
    model = family.build_model(config).eval()
    process = family.build_process(config)
    ids, mask = _layout(3, length=12)
    t = torch.tensor([2, 5, 8])
    uniforms = torch.rand(3, 12, generator=torch.Generator().manual_seed(1))
    terms = discrete_losses(process, model, ids, mask, t, uniforms=uniforms)
    x_t, noisy = process.q_sample(ids, mask, t, mask_token_id=11, uniforms=uniforms)
    logits = model(x_t)  # [B, L, V]
    assert logits.shape == (3, 12, 11)
    ce = nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none") * noisy
    expected = process.rdm_weight(t) * ce.sum(-1) / mask.sum(-1)
    torch.testing.assert_close(terms["loss"], expected)


# ------------------------------------------------------------------------------ samplers


class _RowDenoiser:
    """A deterministic stand-in network: each row's logits depend on that row only."""

    def __init__(self, vocab: int = MASK, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(32, vocab, generator=generator)  # [L_max, V]
        self.mix = torch.randn(vocab + 1, vocab, generator=generator)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        rows = []
        for row in x:  # [L]
            context = self.mix[row].mean(dim=0)  # [V]
            rows.append(self.table[: row.shape[0]] + context)
        return torch.stack(rows)  # [B, L, V]


def _run(sampler, rows, *, steps=4, seeds=None, schedule="linear", **options):
    ids, mask = _layout(max(rows) + 1)
    ids, mask = ids[rows], mask[rows]
    x_T = torch.where(mask != 0, torch.full_like(ids, MASK), ids)
    seeds = seeds or [5] * len(rows)
    noise = NoiseSource(seeds, rows, shape=(ids.shape[1], 1))
    denoise = _RowDenoiser()
    levels = []
    out = sampler(
        denoise,
        x_T,
        input_mask=mask,
        mask_token_id=MASK,
        steps=steps,
        schedule=schedule,
        noise=noise,
        callback=lambda info: levels.append(((info["tokens"] == MASK).sum(-1), info["level"])),
        **options,
    )
    return out, denoise.calls, levels, ids, mask


@pytest.mark.parametrize("name", family_samplers("discrete"))
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_sampler_calls_unmasks_everything_and_keeps_the_source(name, steps):
    out, calls, levels, ids, mask = _run(get_sampler(name), [0, 1, 2], steps=steps)
    assert calls == steps == len(levels)
    assert [level for _, level in levels] == [k / steps for k in range(steps, 0, -1)]
    assert not (out == MASK).any() and out.dtype == torch.long
    assert torch.equal(out[mask == 0], ids[mask == 0])
    assert int(out.max()) < MASK


@pytest.mark.parametrize("name", family_samplers("discrete"))
def test_sampler_determinism_per_seed_and_row_alone_equals_row_in_batch(name):
    sampler = get_sampler(name)
    batch, *_ = _run(sampler, [0, 1, 2], seeds=[5, 5, 6])
    again, *_ = _run(sampler, [0, 1, 2], seeds=[5, 5, 6])
    assert torch.equal(batch, again)
    for r, (row, seed) in enumerate(zip([0, 1, 2], [5, 5, 6])):
        alone, *_ = _run(sampler, [row], seeds=[seed])
        assert torch.equal(alone[0], batch[r])
    others = [_run(sampler, [0], seeds=[s])[0][0] for s in range(6)]
    assert len({tuple(o.tolist()) for o in others}) > 1  # seeds give different candidates


def test_rdm_routing_follows_the_schedule_and_remasks():
    """After step k the target holds round((1 − α(u_{k−1}))·Σm) masks; re-masking happens."""
    for schedule in ("linear", "cosine"):
        out, _, levels, _, mask = _run(rdm_sample, [0, 1], steps=4, schedule=schedule)
        span = int(mask[0].sum())
        for (masked, _), k in zip(levels, range(4, 0, -1)):
            expected = math.floor((1 - keep_probability(schedule, (k - 1) / 4)) * span + 0.5)
            assert masked.tolist() == [expected, expected], (schedule, k)
    tokens = []
    rdm_sample(
        _RowDenoiser(),
        torch.where(mask != 0, MASK, _layout(2)[0]),
        input_mask=mask,
        mask_token_id=MASK,
        steps=6,
        schedule="linear",
        noise=NoiseSource([3, 3], [0, 1], shape=(10, 1)),
        routing_temperature=3.0,
        callback=lambda info: tokens.append(info["tokens"].clone()),
    )
    remasked = any(
        ((a != MASK) & (b == MASK)).any() for a, b in zip(tokens, tokens[1:])
    )  # a token decoded at one step is masked again at a later one
    assert remasked
    plain, *_ = _run(rdm_sample, [0, 1], routing_temperature=0.0, seeds=[1, 1])
    other, *_ = _run(rdm_sample, [0, 1], routing_temperature=0.0, seeds=[2, 2])
    assert torch.equal(plain, other)  # τ = 0: deterministic top-k, no noise used


def test_absorbing_tokens_are_final_once_unmasked():
    tokens = []
    ids, mask = _layout(2)
    absorbing_sample(
        _RowDenoiser(),
        torch.where(mask != 0, MASK, ids),
        input_mask=mask,
        mask_token_id=MASK,
        steps=5,
        schedule="cosine",
        noise=NoiseSource([1, 2], [0, 1], shape=(10, 1)),
        callback=lambda info: tokens.append(info["tokens"].clone()),
    )
    for a, b in zip(tokens, tokens[1:]):
        kept = a != MASK
        assert torch.equal(a[kept], b[kept])


# ------------------------------------------------------------------------------ model, config


def test_model_has_the_gaussian_keys_and_a_mask_row():
    config = RunConfig.from_dict(TINY_MODEL).validate()
    model = get_family("discrete").build_model(config)
    gaussian = get_family("gaussian").build_model(config.replace("model", family="gaussian"))
    assert list(model.state_dict()) == list(gaussian.state_dict())
    assert model.word_embedding.weight.shape == (12, 16) and model.mask_token_id == 11
    assert model.lm_head.weight is model.word_embedding.weight
    ids = torch.full((2, 12), 11)
    assert model(ids).shape == (2, 12, 11)  # [MASK] is never a prediction
    copy = get_family("discrete").build_model(config)
    copy.load_state_dict(model.state_dict())  # the original's tied-weight rule applies
    assert_same(dict(copy.state_dict()), dict(model.state_dict()))


def test_registry_config_and_preset():
    assert "discrete" in FAMILIES and FAMILIES["gaussian"] is next(iter(FAMILIES.values()))
    assert {"rdm", "absorbing"} <= set(
        DecodeConfig.__dataclass_fields__["sampler"].metadata["choices"]()
    )
    preset = RunConfig.load_yaml(REPO_ROOT / "configs" / "qqp-rdm.yaml").validate()
    assert preset.model.family == "discrete" and preset.discrete.discrete_loss == "rdm"
    assert preset.data.seq_len == 128  # from the base qqp.yaml
    for bad in ({"self_cond": True}, {"noise_floor": 0.3}, {"timestep_respacing": "ddim4"}):
        with pytest.raises(ConfigError, match="Gaussian family"):
            RunConfig.from_dict({**TINY_MODEL, **bad}).validate()
    RunConfig.from_dict({**TINY_MODEL, "family": "gaussian", "self_cond": True}).validate()
    with pytest.raises(ConfigError, match="discrete_loss"):
        RunConfig.from_dict({**TINY_MODEL, "discrete_loss": "mse"}).validate()


def test_resolve_decode():
    family = get_family("discrete")
    process = AbsorbingDiffusion(num_timesteps=8)
    auto = family.resolve_decode(DecodeConfig(), process)
    assert (auto.sampler, auto.steps, auto.row.family) == ("rdm", 10, "discrete")
    assert family.resolve_decode(DecodeConfig(sampler="absorbing", steps=50), process).steps == 50
    for bad in ({"sampler": "ddim"}, {"top_p": 0.5}, {"clamp_step": 3}):
        with pytest.raises(ConfigError):
            family.resolve_decode(DecodeConfig(**bad), process)


# ------------------------------------------------------------------------------ end to end


def _discrete_argv(data, **overrides):
    return tiny_argv(data, family="discrete", noise_schedule=None, **overrides)


def test_train_decode_evaluate_and_model_folder(tmp_path, capsys):
    from diffuseq.cli.decode import main as decode_main
    from diffuseq.cli.evaluate import main as eval_main
    from diffuseq.cli.train import main as train_main
    from diffuseq.decoding import api

    data = make_tiny_data(tmp_path / "data", n_test=5)
    run = tmp_path / "run"
    argv = _discrete_argv(data, checkpoint_path=run, learning_steps=6, save_interval=6)
    assert train_main(argv + ["--discrete_loss", "elbo", "--discrete_schedule", "cosine"]) == 0
    saved = RunConfig.load_yaml(run / "config.yaml")
    assert saved.model.family == "discrete" and saved.discrete.discrete_loss == "elbo"
    assert {"loss", "nll", "ce", "mask_rate", "loss_q0"} <= set(read_metrics(run)[0])
    out = tmp_path / "out"
    flags = ["--model_dir", str(run), "--num_samples", "2", "--bsz", "3", "--out_dir", str(out)]
    assert decode_main(flags) == 0
    folder = out / "run" / "ema_0.9999_000006.pt.samples-rdm-10steps"
    files = sorted(folder.glob("seed*_step0.json"))
    assert [f.name for f in files] == ["seed101_step0.json", "seed102_step0.json"]
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(records) == 5 and all(r["source"].startswith("[START]") for r in records)
    report = tmp_path / "eval.json"
    assert (
        eval_main(["--folder", str(folder), "--mbr", "--no_bertscore", "--json", str(report)]) == 0
    )
    assert 0.0 <= json.loads(report.read_text())["mbr"]["scores"]["avg_bleu"] <= 1.0
    # the model folder written at the end of training decodes the same
    model_folder = run / "hf" / "ema_0.9999_000006"
    out2 = tmp_path / "out2"
    assert decode_main(["--model_dir", str(model_folder), *flags[2:-1], str(out2)]) == 0
    again = next((out2 / "ema_0.9999_000006").glob("*.samples-rdm-10steps"))
    for f in files:
        assert (again / f.name).read_text() == f.read_text()
    gen = api.load(model_folder, device="cpu")
    raw = gen.generate_raw(["where is the cat ?"], sampler="absorbing", steps=3, num_samples=2)
    assert len(raw[0]) == 2 and raw[0][0]["source"].startswith("[START] where")
    capsys.readouterr()
    assert decode_main([*flags[:-1], str(tmp_path / "x"), "--sampler", "ddim"]) == 2
    assert "a --family discrete model decodes" in " ".join(capsys.readouterr().err.split())


def test_half_resume_half_is_bit_identical(tmp_path):
    from diffuseq.cli.train import main, prepare
    from diffuseq.runtime import dist
    from diffuseq.store.checkpoint import load_state_file

    data = make_tiny_data(tmp_path / "data")
    steps, half = 8, 4
    argv = _discrete_argv(data, learning_steps=steps, save_interval=half, ema_rate="0.9,0.999")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(argv + ["--checkpoint_path", str(straight)]) == 0
    trainer = prepare(argv + ["--checkpoint_path", str(split)])
    assert trainer.fit(until=half) == half
    trainer.close()
    dist.cleanup()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    np.random.seed(54321)
    assert main(argv + ["--checkpoint_path", str(split), "--resume_checkpoint", "auto"]) == 0
    a = load_state_file(straight / f"state_{steps:06d}.pt")
    b = load_state_file(split / f"state_{steps:06d}.pt")
    for key in ("model", "ema", "optimizer", "sampler", "ranks"):
        assert_same(a[key], b[key], key)
    assert a["sampler"]  # the tiny flags train with the loss-aware timestep distribution
    for rate in ("0.9", "0.999"):
        name = f"ema_{rate}_{steps:06d}.pt"
        assert_same(load_state_file(straight / name), load_state_file(split / name), name)


@pytest.mark.slow
def test_two_processes_train_and_decode(tmp_path):
    """DDP training (bf16 autocast on CPU) and a 2-process decode equal to the 1-process one."""
    from diffuseq.cli.decode import main as decode_main
    from tests.test_end_to_end import _torchrun

    data = make_tiny_data(tmp_path / "data", n_test=5)
    run = tmp_path / "run"
    argv = _discrete_argv(data, checkpoint_path=run, learning_steps=4, save_interval=4, bf16="true")
    _torchrun("run_train.py", argv, tmp_path)
    assert (run / "ema_0.9999_000004.pt").is_file()
    two, one = tmp_path / "out2", tmp_path / "out1"
    flags = ["--model_dir", str(run), "--num_samples", "2", "--bsz", "3", "--sampler", "absorbing"]
    _torchrun("run_decode.py", [*flags, "--out_dir", str(two)], tmp_path)
    assert decode_main([*flags, "--out_dir", str(one)]) == 0
    files = sorted((two / "run").glob("*.samples-absorbing-10steps/seed*.json"))
    assert len(files) == 2
    for f in files:
        assert f.read_text() == (one / f.relative_to(two)).read_text()

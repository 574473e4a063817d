"""The sampler table (diffuseq/sampling/table.py): one row per sampler, consistent with the
functions, the command line's choices/help/warnings, and the decode job's path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import diffuseq
from diffuseq.cli import decode
from diffuseq.config import DecodeConfig
from diffuseq.decoding.job import Decoder
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.families import FAMILIES
from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.models.encoder_config import build_bert_config
from diffuseq.sampling import SAMPLER_TABLE, SAMPLERS, SamplerInputs, get_sampler
from diffuseq.sampling.noise import NoiseSource
from diffuseq.sampling.noise_floor import noise_floor_time
from diffuseq.sampling.rounding import make_rounding_fn
from diffuseq.sampling.run import RowBatch
from diffuseq.sampling.table import _by_name, family_samplers, sampler_names, sampler_row
from tests.conftest import REPO_ROOT

T, B, L, H, V = 10, 3, 8, 8, 20
STEPS = 4


def _model(*, self_cond: bool = False, seed: int = 0) -> TransformerNetModel:
    torch.manual_seed(seed)
    bert = build_bert_config(
        dropout=0.0, num_layers=1, num_heads=2, hidden_size=16, intermediate_size=32
    )
    model = TransformerNetModel(
        vocab_size=V, hidden_dim=H, hidden_t_dim=8, dropout=0.0, bert_config=bert,
        self_cond=self_cond,
    ).eval()  # fmt: skip
    if self_cond:  # a trained projection: self-conditioning changes the outputs
        with torch.no_grad():
            model.self_cond_proj.weight.normal_(std=0.5)
    return model.requires_grad_(False)


def _rows() -> RowBatch:
    ids = torch.randint(4, V, (B, L), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(L) >= 3).long().expand(B, L).contiguous()
    return RowBatch(ids, mask, seeds=[101, 102, 101], indices=[0, 0, 1])


def _steps(name: str) -> int:
    return STEPS if sampler_row(name).takes_steps else T


# ------------------------------------------------------------------------------ the table


def test_every_row_imports_its_function():
    assert len(SAMPLER_TABLE) >= 6 and sampler_names() == tuple(SAMPLER_TABLE)
    for name, row in SAMPLER_TABLE.items():
        assert row.name == name
        function = row.load()
        assert callable(function) and SAMPLERS[name] is function is get_sampler(name)
        assert row.family in FAMILIES and row.help and "  " not in row.help
        if row.legacy:  # the first releases' spelling: --sampler BASE --FLAG
            base, flag = row.legacy
            assert base in SAMPLER_TABLE and flag in DecodeConfig.__dataclass_fields__
    assert dict(SAMPLERS) == {name: row.load() for name, row in SAMPLER_TABLE.items()}
    with pytest.raises(ValueError, match="registered twice"):
        _by_name(*SAMPLER_TABLE.values(), SAMPLER_TABLE["ddim"])
    with pytest.raises(ValueError, match="choose one of ancestral, ddim"):
        get_sampler("euler")
    with pytest.raises(KeyError):
        SAMPLERS["euler"]
    assert diffuseq.get_sampler is get_sampler and diffuseq.SAMPLERS is SAMPLERS
    assert diffuseq.SamplerInputs is SamplerInputs


def test_choices_and_help_come_from_the_table():
    parser = decode.build_parser()
    action = next(a for a in parser._actions if "--sampler" in a.option_strings)
    assert tuple(action.choices) == ("auto", *SAMPLER_TABLE)
    for row in SAMPLER_TABLE.values():
        assert f"{row.name}: {row.help}" in action.help
    top_p = next(a for a in parser._actions if "--top_p" in a.option_strings)
    noisy = [row.name for row in SAMPLER_TABLE.values() if row.draws_noise]
    assert noisy == ["ancestral", "sde-dpm-solver++"] and ", ".join(noisy) in top_p.help


def test_the_table_and_sampling_package_import_without_torch():
    code = "import diffuseq.sampling, sys; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


class CountingNoise(NoiseSource):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = 0

    def gaussian(self, *, top_p=None):
        self.draws += 1
        return super().gaussian(top_p=top_p)


@pytest.mark.parametrize("name", family_samplers("gaussian"))
def test_rows_tell_the_truth_about_noise_and_steps(name):
    """draws_noise: the sampler draws from the noise stream; takes_steps: it makes ``steps``
    model calls (else all T)."""
    row, model = sampler_row(name), _model()
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=T)
    rows = _rows()
    x_start = model.get_embeds(rows.input_ids)
    noise = CountingNoise(rows.seeds, rows.indices, shape=(L, H))
    calls = []

    def counting(x, t):
        calls.append(t)
        return model(x, t)

    get_sampler(name)(
        SamplerInputs(counting, diffusion, x_start, rows.input_mask, x_start, noise=noise,
                      steps=STEPS)
    )  # fmt: skip
    assert (noise.draws > 0) == row.draws_noise
    if name != "ddim-adjacent":  # the original's pseudo-DDIM visits ⌊(T−1)/gap⌋ + 1 levels
        assert len(calls) == (STEPS if row.takes_steps else T)


# ------------------------------------------------------------------------------ --top_p warning


@pytest.mark.parametrize(
    "config, warns",
    [
        (DecodeConfig(sampler="sde-dpm-solver++", steps=4, top_p=0.9), False),
        (DecodeConfig(sampler="ancestral", top_p=0.9), False),
        (DecodeConfig(top_p=0.9), False),  # auto at T steps: ancestral
        (DecodeConfig(sampler="ddim", steps=4, top_p=0.9), True),
        (DecodeConfig(steps=4, top_p=0.9), True),  # auto with fewer steps: ddim
        (DecodeConfig(sampler="dpm-solver++", steps=4, top_p=0.9), True),
        (DecodeConfig(sampler="dpm-solver++", dpm_v2_variant=True, steps=4, top_p=0.9), True),
        (DecodeConfig(sampler="ddim", steps=4), False),  # --top_p not given
        (DecodeConfig(sampler="ddim", steps=4, top_p=0.0), False),  # off
    ],
)
def test_top_p_warns_only_for_samplers_that_draw_no_noise(config, warns):
    resolved = config.resolve(2000)
    warning = decode.top_p_warning(resolved)
    assert (warning is not None) == warns
    if warns:
        assert resolved.sampler in warning and "ancestral, sde-dpm-solver++" in warning


# ------------------------------------------------------------------------------ one path


def _direct_tokens(name: str, model, diffusion, rows: RowBatch) -> torch.Tensor:
    """What a user of ``diffuseq.get_sampler`` writes: the raw model, no wrappers."""
    x_start = model.get_embeds(rows.input_ids)
    noise = NoiseSource(rows.seeds, rows.indices, shape=(L, H))
    x_T = torch.where(rows.input_mask.unsqueeze(-1) == 0, x_start, noise.gaussian())
    inputs = SamplerInputs(
        model, diffusion, x_T, input_mask=rows.input_mask, x_start=x_start,
        denoised_fn=make_rounding_fn(model.word_embedding.weight), noise=noise,
        steps=_steps(name),
    )  # fmt: skip
    x_0 = diffuseq.get_sampler(name)(inputs)
    return model.get_logits(x_0).argmax(-1)


@pytest.mark.parametrize("name", family_samplers("gaussian"))
def test_get_sampler_decodes_what_the_cli_decodes(name):
    """A self-conditioned model and a noise-floored process: ``get_sampler`` on the raw model
    gives the decode job's tokens, and the wrappers changed them (they were applied)."""
    model = _model(self_cond=True)
    diffusion = GaussianDiffusion.from_schedule(
        noise_schedule="sqrt", diffusion_steps=T, noise_floor=0.5
    )
    decoder = Decoder(model=model, diffusion=diffusion, tokenizer=None, seq_len=L)
    config = decoder.resolve(DecodeConfig(sampler=name, steps=_steps(name)))
    rows = _rows()
    cli = decoder.sample_tokens(rows, config)
    direct = _direct_tokens(name, model, diffusion, rows)
    assert torch.equal(cli, direct)
    # the wrappers were really applied: the network saw floored times and its estimates
    seen = []

    class Recording(torch.nn.Module):
        self_cond = True

        def forward(self, x, t, self_cond=None):
            seen.append((t.clone(), self_cond))
            return model(x, t, self_cond=self_cond)

    x_start = model.get_embeds(rows.input_ids)
    get_sampler(name)(
        SamplerInputs(Recording(), diffusion, x_start, rows.input_mask, x_start,
                      noise=NoiseSource(rows.seeds, rows.indices, shape=(L, H)),
                      steps=_steps(name))
    )  # fmt: skip
    floor = float(noise_floor_time(diffusion, 0.5))
    assert min(float(t.min()) for t, _ in seen) == floor
    assert torch.count_nonzero(seen[0][1]) == 0 and torch.count_nonzero(seen[-1][1]) > 0

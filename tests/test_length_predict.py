"""``--length_predict`` / ``--length_beam`` (Difformer §3, DINOISER Table 3): the span mask and
target lengths, the length loss, the padding kept clean, a head that reads only the source,
the length beam's rows and choice on hand-made cases; off, every term is the original's; a tiny
run with the head (and self-conditioning and v2) resumes exactly and decodes with
``--length_beam 3`` from its run folder and its model folder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffuseq.cli.decode import main as decode_main
from diffuseq.config import DecodeConfig, RunConfig
from diffuseq.decoding import api
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.length import (
    length_candidates,
    length_losses,
    length_rows,
    pick_copies,
    span_mask,
    span_scores,
    target_lengths,
)
from diffuseq.diffusion.losses import training_losses
from diffuseq.errors import ConfigError
from diffuseq.families.ar import ARFamily
from diffuseq.families.discrete import FAMILY as DISCRETE
from diffuseq.families.gaussian import FAMILY
from diffuseq.sampling.run import RowBatch
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

PAD, V, H = 0, 20, 8
# [CLS]=1 x… [SEP]=2 [SEP] | [CLS] y… [SEP] PAD…  (len_x = 4 and 5; spans of 4 and 3)
IDS = torch.tensor([[1, 5, 2, 2, 1, 6, 7, 2, 0, 0], [1, 5, 6, 2, 2, 1, 7, 2, 0, 0]])
MASK = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]])
T = torch.tensor([3, 5])


def _model(**kwargs):
    return tiny_denoiser(vocab_size=V, hidden_dim=H, seed=0, pad_token_id=PAD, **kwargs).eval()


def _losses(model, mask=MASK, **kwargs):
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    gen = torch.Generator().manual_seed(1)
    return training_losses(diffusion, model, IDS, mask, T, generator=gen, **kwargs)


# ------------------------------------------------------------------------------ the math


def test_span_mask_and_target_lengths_on_a_hand_made_batch():
    span = span_mask(IDS, MASK, PAD)
    assert span.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]]
    assert span.dtype == MASK.dtype
    assert target_lengths(IDS, MASK, PAD).tolist() == [4, 3]


def test_length_loss_is_the_cross_entropy_of_the_target_length():
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]))  # p = .25 .5 .25 / ...
    out = length_losses(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(out, torch.tensor([math.log(2.0), math.log(4.0)]))
    # in the training loss: λ·CE added, every other term that of the span-masked original
    model = _model(length_predict=True)
    terms = _losses(model, length_loss_weight=0.3)
    plain = _losses(model, mask=span_mask(IDS, MASK, PAD))
    expected = length_losses(model.length_logits(IDS, MASK), torch.tensor([4, 3]))
    torch.testing.assert_close(terms["length_loss"], expected)
    for key in plain:
        torch.testing.assert_close(
            terms[key], plain[key] + (0.3 * expected if key == "loss" else 0), msg=key
        )


def test_off_is_bit_identical_to_the_original():
    assert RunConfig().model.length_predict is False and DecodeConfig().length_beam == 1
    plain, off = _model(), _model(length_predict=False)
    assert_same(plain.state_dict(), off.state_dict())
    reference = _losses(plain)
    assert_same(reference, _losses(off, length_loss_weight=None))
    assert "length_loss" not in reference
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    assert FAMILY.build_objective(RunConfig(), diffusion).loss_fn is training_losses
    on_objective = FAMILY.build_objective(RunConfig.from_dict({"length_predict": True}), diffusion)
    assert on_objective.loss_fn.keywords == {"length_loss_weight": 0.1}
    # the head is registered last: every other weight is initialised as without it
    on = _model(length_predict=True).state_dict()
    assert_same(plain.state_dict(), {k: v for k, v in on.items() if not k.startswith("length")})
    assert (
        infer_architecture(on)["length_predict"]
        and not infer_architecture(plain.state_dict())["length_predict"]
    )


def test_the_padding_stays_clean_when_noised():
    model = _model(length_predict=True)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    _losses(model, length_loss_weight=0.1, noise0=torch.zeros(2, 10, H))
    x_t, clean = seen[0], model.get_embeds(IDS)
    kept = span_mask(IDS, MASK, PAD) == 0  # source and padding
    assert torch.equal(x_t[kept], clean[kept])
    assert not torch.isclose(x_t[~kept], clean[~kept]).all(dim=-1).any()


def test_the_length_head_reads_only_the_source():
    model = _model(length_predict=True)
    logits = model.length_logits(IDS, MASK)
    assert logits.shape == (2, 11)
    other = torch.where(MASK == 1, torch.randint(0, V, IDS.shape), IDS)
    assert torch.equal(model.length_logits(other, MASK), logits)
    source = IDS.clone()
    source[0, 1] = 9
    assert not torch.equal(model.length_logits(source, MASK)[0], logits[0])
    # detached: the length loss leaves the word embeddings alone
    model.train()
    length_losses(model.length_logits(IDS, MASK), torch.tensor([4, 3])).sum().backward()
    assert model.word_embedding.weight.grad is None
    assert model.length_head.proj.weight.grad.abs().sum() > 0


def test_length_beam_rows_and_choice_on_a_hand_made_case():
    logits = torch.full((2, 11), -5.0)
    logits[0, [0, 8, 3, 2, 5]] = torch.tensor([9.0, 8.0, 3.0, 2.0, 1.0])  # 0, 8 (> room 6) out
    logits[1, [1, 2]] = torch.tensor([1.0, 0.5])
    room1 = torch.tensor([[0] * 8 + [1, 1]])  # room 2: lengths 1, 2 only
    lengths = length_candidates(logits, torch.cat([MASK[:1], room1]), 3)
    assert lengths.tolist() == [[3, 2, 5], [1, 2, 1]]  # row 1 repeats its best length
    ids, mask = length_rows(IDS, MASK, torch.tensor([[3, 2], [1, 5]]), PAD)
    assert mask.tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    ]
    assert ids.tolist() == [
        [1, 5, 2, 2, 1, 6, 7, 0, 0, 0],
        [1, 5, 2, 2, 1, 6, 0, 0, 0, 0],
        [1, 5, 6, 2, 2, 1, 0, 0, 0, 0],
        [1, 5, 6, 2, 2, 1, 7, 2, 0, 0],
    ]
    tokens = torch.zeros(2, 2, 3)
    tokens[0, :, 1] = math.log(3.0)  # top-1 probability 3/5 at both positions
    tokens[1, 0, 0] = math.log(2.0)  # 2/4, then (ignored) 1/3
    scores = span_scores(tokens, torch.tensor([[1, 1], [1, 0]]))
    torch.testing.assert_close(scores, torch.tensor([math.log(0.6), math.log(0.5)]))
    choice = pick_copies(torch.tensor([-0.5, -0.2, -0.3, -0.1, -0.1, -0.4]), 3)
    assert choice.tolist() == [1, 3]  # a tie goes to the more probable length


def test_refusals():
    with pytest.raises(ConfigError, match="--length_beam"):
        DecodeConfig(length_beam=0).validate()
    config = DecodeConfig(length_beam=2).resolve(20)
    rows = RowBatch(IDS, MASK, [1, 1], [0, 1])
    diffusion = GaussianDiffusion.from_schedule(noise_schedule="sqrt", diffusion_steps=20)
    with pytest.raises(ConfigError, match="--length_predict"):
        FAMILY.sample_tokens(_model(), diffusion, rows, config=config)
    with pytest.raises(ConfigError, match="--length_predict"):
        RunConfig.from_dict(
            {"family": "discrete", "schedule_sampler": "uniform", "length_predict": True}
        ).validate()
    with pytest.raises(ConfigError, match="--length_beam"):
        DISCRETE.resolve_decode(DecodeConfig(length_beam=2), None)
    with pytest.raises(ConfigError, match="--length_predict"):
        ARFamily().build_model(RunConfig.from_dict({"family": "ar", "length_predict": True}))
    with pytest.raises(ConfigError, match="--length_beam"):
        ARFamily().resolve_decode(DecodeConfig(length_beam=2), None)
    with pytest.raises(ConfigError, match="--length_loss_weight"):
        RunConfig.from_dict({"length_loss_weight": -1.0}).validate()


# ------------------------------------------------------------------------------ a tiny run

LENGTH = {"length_predict": "true", "length_loss_weight": "0.5"}
V2 = {"learned_mean_embed": "true", "denoise": "true", "denoise_rate": "0.5"}


def test_a_length_run_resumes_exactly_and_decodes_a_length_beam(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    argv = tiny_argv(data, ema_rate="0.9", self_cond="true", **V2, **LENGTH)
    straight, split, a = train_straight_and_split(argv, tmp_path)
    assert "length_head.proj.weight" in a["model"] and "mean_embed" in a["model"]
    logged = [r for r in read_metrics(straight) if "loss" in r]
    assert logged and all(math.isfinite(r["length_loss"]) for r in logged)
    later = lambda run: [r for r in read_metrics(run) if "loss" in r and r["step"] > 4]  # noqa: E731
    assert later(straight) == later(split) and len(later(straight)) == 2

    generator = api.load(straight / "ema_0.9_000008.pt", device="cpu")
    model = generator.decoder.model
    assert model.length_head is not None and model.self_cond and model.pad_token_id == 3
    sources = ["where is the station ?", "i want a ticket", "good morning"]
    options = {"sampler": "dpm-solver++", "steps": 3, "num_samples": 2, "seed": 5}
    out = generator.generate_raw(sources, length_beam=3, **options)
    assert len(out) == 3 and all(len(rows) == 2 for rows in out)
    assert out == generator.generate_raw(sources, length_beam=3, batch_size=1, **options)
    assert generator.generate_raw(sources[:1], sampler="ancestral", length_beam=2)[0][0]["recover"]

    # the model folder written at the end holds the head and decodes the same
    folder = straight / "hf" / "ema_0.9_000008"
    assert "length_head.proj.weight" in load_safetensors(folder / MODEL_FILE)
    from_folder = api.load(folder, device="cpu")
    assert from_folder.generate_raw(sources, length_beam=3, **options) == out

    # the decode command: --length_beam 3 has its own samples folder
    common = ["--model_dir", str(straight), "--sampler", "ddim", "--step", "2", "--bsz", "3"]
    assert decode_main(common + ["--length_beam", "3", "--out_dir", str(tmp_path / "o")]) == 0
    (samples,) = (tmp_path / "o").glob("*/*lenbeam3")
    records = (samples / "seed101_step0.json").read_text().splitlines()
    assert len(records) == 8 and all(json.loads(r)["recover"] for r in records)

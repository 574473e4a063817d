"""The autoregressive family (``--family ar``): sizing, layout, loss, decoding, end to end, resume."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from diffuseq.cli.decode import main as decode_main
from diffuseq.cli.evaluate import main as eval_main
from diffuseq.cli.train import main as train_main
from diffuseq.cli.train import prepare
from diffuseq.config import DecodeConfig, RunConfig
from diffuseq.errors import CheckpointError, ConfigError
from diffuseq.families import FAMILIES, get_family
from diffuseq.families.ar import parameter_counts
from diffuseq.models.seq2seq import split_merged
from diffuseq.runtime import dist
from diffuseq.sampling.run import RowBatch
from diffuseq.store.checkpoint import load_state_file
from diffuseq.store.checkpoint_format import state_dict_for_saving
from diffuseq.tokenizers.tokenizer import load_tokenizer
from tests.train_helpers import (
    DEMO_DIR,
    REPO_ROOT,
    assert_same,
    make_tiny_data,
    run_command,
    subprocess_env,
    tiny_argv,
)

AR = get_family("ar")
V = 20
# [CLS]=1 x [SEP]=2 [SEP] [CLS] y [SEP] [PAD]=0 (word ids 3..19)
IDS = torch.tensor(
    [
        [1, 5, 6, 2, 2, 1, 7, 8, 9, 2, 0, 0],
        [1, 5, 2, 2, 1, 7, 2, 0, 0, 0, 0, 0],
        [1, 3, 4, 5, 6, 2, 2, 1, 8, 9, 10, 2],  # the target fills the row: no padding
    ]
)
MASK = torch.tensor([[0] * 5 + [1] * 7, [0] * 4 + [1] * 8, [0] * 7 + [1] * 5])


def tiny_config(**model) -> RunConfig:
    sizes = dict(bert_hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    return RunConfig().replace(
        "model", family="ar", vocab_size=V, hidden_dim=16, hidden_t_dim=16, **{**sizes, **model}
    )


@pytest.fixture(scope="module")
def model():
    """A tiny model fitted to the three rows (so that its outputs depend on the source)."""
    torch.manual_seed(0)
    model = AR.build_model(tiny_config())
    objective = AR.build_objective(tiny_config(), None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        objective.losses(model, IDS, MASK, text_model=model).terms["loss"].mean().backward()
        opt.step()
    return model.eval()


# ------------------------------------------------------------------------------ sizing


def test_registered():
    assert FAMILIES["ar"].module == "diffuseq.families.ar" and AR.name == "ar"
    assert RunConfig.from_dict({"family": "ar"}).validate().model.family == "ar"
    with pytest.raises(ConfigError, match="--ar_layers"):
        RunConfig.from_dict({"ar_layers": "6"}).validate()


def test_parameter_parity_demo_and_paper_sizes():
    """Same flags, parameter counts within 10%: the demo (configs/demo.yaml, its word vocab)
    and the paper's QQP model (configs/qqp.yaml, BERT-base, 30522 tokens); the preset
    configs/qqp-ar.yaml is Transformer-base (6+6 x 512)."""
    demo_vocab = load_tokenizer(str(DEMO_DIR / "vocab.txt"), config_name="bert-base-uncased")
    cases = [
        ("demo.yaml", demo_vocab.vocab_size, "ar"),
        ("qqp.yaml", 30522, "ar"),
        ("qqp-ar.yaml", 30522, None),
    ]
    counts = {}
    for name, vocab, family in cases:
        config = RunConfig.load_yaml(REPO_ROOT / "configs" / name)
        if family:
            config = config.replace("model", family=family)
        counts[name] = parameter_counts(config, vocab_size=vocab)
        print(f"{name}: {counts[name].describe()}")
    demo, qqp, base = counts["demo.yaml"], counts["qqp.yaml"], counts["qqp-ar.yaml"]
    assert (demo.encoder_layers, demo.decoder_layers) == (1, 1)
    assert (qqp.encoder_layers, qqp.decoder_layers) == (4, 4)
    assert 0.9 <= demo.ratio <= 1.1 and 0.9 <= qqp.ratio <= 1.1
    assert (base.encoder_layers, base.decoder_layers) == (6, 6)
    assert 59e6 < base.ar < 61e6  # the preset's comment says "about 60M"
    # the counts are the built model's
    built = AR.build_model(RunConfig.load_yaml(REPO_ROOT / "configs" / "demo.yaml").replace(
        "model", family="ar", vocab_size=demo_vocab.vocab_size
    ))  # fmt: skip
    assert sum(p.numel() for p in built.parameters()) == demo.ar
    assert built.config.d_model == 128 and built.config.encoder_ffn_dim == 512


def test_diffusion_only_options_are_rejected():
    with pytest.raises(ConfigError, match="--self_cond"):
        AR.build_model(tiny_config(self_cond=True))


# ------------------------------------------------------------------------------ layout and loss


def test_split_merged_layout():
    b = split_merged(IDS, MASK)
    assert b.len_x.tolist() == [5, 4, 7] and b.span.tolist() == [7, 8, 5]
    assert b.src_ids.tolist()[1] == [1, 5, 2, 2, 2, 2, 2]
    assert b.src_mask.sum(1).tolist() == [5, 4, 7]
    assert (b.bos == 1).all() and (b.eos == 2).all()
    # decoder reads [CLS] y..., predicts y... [SEP]; nothing after the end counts
    assert b.dec_ids[0, :4].tolist() == [1, 7, 8, 9] and b.labels[0, :4].tolist() == [7, 8, 9, 2]
    assert b.label_mask.sum(1).tolist() == [4, 2, 4]
    assert b.labels[b.label_mask].tolist() == [7, 8, 9, 2, 7, 2, 8, 9, 10, 2]


def _hand_nll(model, ids, mask) -> torch.Tensor:
    """Per example: mean over the target tokens y... [SEP] of -log softmax(HF logits)."""
    out = []
    for row, m in zip(ids, mask):
        len_x = int((m == 0).sum())
        target = row[len_x:].tolist()
        end = target.index(2, 1)
        y = torch.tensor(target[: end + 1])
        logits = model.net(
            input_ids=row[None, :len_x], decoder_input_ids=y[None, :-1]
        ).logits  # [1, n, V]
        out.append(F.cross_entropy(logits[0].float(), y[1:]))
    return torch.stack(out)


def test_loss_equals_hand_computation(model):
    batch = AR.build_objective(tiny_config(), None).losses(model, IDS, MASK, text_model=model)
    assert set(batch.terms) == {"loss", "nll"} and batch.groups is None
    assert torch.equal(batch.weights, torch.ones(3))
    torch.testing.assert_close(batch.terms["loss"], _hand_nll(model, IDS, MASK))


def test_loss_ignores_padding_and_predicts_no_source(model):
    objective = AR.build_objective(tiny_config(), None)
    loss = objective.losses(model, IDS, MASK, text_model=model).terms["loss"]
    # other ids after the target's end, and more padding: the same loss
    noisy = IDS.clone()
    noisy[0, 10:], noisy[1, 7:] = 13, 17
    wide = torch.cat([noisy, torch.zeros(3, 6, dtype=torch.long)], 1)
    wide_mask = torch.cat([MASK, torch.ones(3, 6, dtype=torch.long)], 1)
    again = objective.losses(model, wide, wide_mask, text_model=model).terms["loss"]
    torch.testing.assert_close(again, loss)
    # a row alone has the loss it has in a batch
    alone = objective.losses(model, IDS[1:2], MASK[1:2], text_model=model).terms["loss"]
    torch.testing.assert_close(alone, loss[1:2])


# ------------------------------------------------------------------------------ decoding


def test_resolve_decode():
    r = AR.resolve_decode
    assert (r(DecodeConfig(), None).sampler, r(DecodeConfig(), None).steps) == ("greedy", 1)
    beam = r(DecodeConfig(num_samples=3), None)
    assert (beam.sampler, beam.steps) == ("beam", 4)
    assert r(DecodeConfig(sampler="beam", steps=6, num_samples=5), None).steps == 6
    assert r(DecodeConfig(sampler="sample", num_samples=5), None).steps == 1
    for bad, match in (
        (DecodeConfig(sampler="ddim"), "diffusion sampler"),
        (DecodeConfig(sampler="beam", steps=2, num_samples=3), "beam width"),
        (DecodeConfig(top_p=0.9), "--top_p"),
        (DecodeConfig(sampler="greedy", steps=5), "no --step"),
    ):
        with pytest.raises(ConfigError, match=match):
            r(bad, None)


def _decode(model, ids, mask, sampler, *, seeds, indices, k=1):
    config = AR.resolve_decode(DecodeConfig(sampler=sampler, num_samples=k), None)
    rows = RowBatch(ids, mask, seeds=seeds, indices=indices)
    return AR.sample_tokens(model, None, rows, config=config)


@pytest.mark.parametrize("sampler", ["greedy", "sample", "beam"])
def test_rows_alone_equal_rows_in_a_batch(model, sampler):
    model.pad_token_id = 0
    order = [0, 0, 2, 1]  # example 0 twice: candidates k = 0, 1 (seeds 101, 102)
    ids, mask = IDS[order], MASK[order]
    seeds, indices = [101, 102, 101, 101], order
    k = 2 if sampler == "beam" else 1
    batch = _decode(model, ids, mask, sampler, seeds=seeds, indices=indices, k=k)
    assert batch.shape == ids.shape and batch.dtype == torch.long
    # the source side is kept, the target span starts with [CLS] and has no reference ids
    assert torch.equal(batch[mask == 0], ids[mask == 0])
    assert batch[[0, 1, 2, 3], [5, 5, 7, 4]].tolist() == [1, 1, 1, 1]
    if sampler == "greedy":  # the fitted targets
        assert batch[:, 8:].tolist() == [[9, 2, 0, 0], [9, 2, 0, 0], [8, 9, 10, 2], [0] * 4]
        assert batch[3, 4:7].tolist() == [1, 7, 2]
    if sampler == "beam":  # two different beams of example 0
        assert not torch.equal(batch[0], batch[1])
    for r in range(4):
        alone = _decode(model, ids[r : r + 1], mask[r : r + 1], sampler, seeds=seeds[r : r + 1],
                        indices=indices[r : r + 1], k=k)  # fmt: skip
        assert torch.equal(alone[0], batch[r]), (sampler, r)
    again = _decode(model, ids, mask, sampler, seeds=seeds, indices=indices, k=k)
    assert torch.equal(again, batch)  # deterministic (sampling: seeded per row)


def test_sampling_depends_on_seed_and_greedy_does_not(model):
    ids, mask = IDS[:1].repeat(4, 1), MASK[:1].repeat(4, 1)
    seeds = [101, 102, 103, 104]
    greedy = _decode(model, ids, mask, "greedy", seeds=seeds, indices=[0] * 4)
    assert all(torch.equal(greedy[0], row) for row in greedy)
    sampled = _decode(model, ids, mask, "sample", seeds=seeds, indices=[0] * 4)
    assert len({tuple(row.tolist()) for row in sampled}) > 1


def test_state_dict_holds_the_tied_matrix_once(model):
    sd = model.state_dict()
    assert "net.model.shared.weight" in sd and not any("embed_tokens" in k for k in sd)
    assert "net.lm_head.weight" not in sd
    # the EMA file: every entry is a parameter's EMA or a buffer
    ema = {n: p.detach() + 1 for n, p in model.named_parameters()}
    saved = state_dict_for_saving(model, ema_params=ema)
    other = AR.build_model(tiny_config())
    other.load_state_dict(saved)
    assert torch.equal(other.net.lm_head.weight, model.net.model.shared.weight + 1)
    assert other.net.lm_head.weight is other.net.model.decoder.embed_tokens.weight
    with pytest.raises(CheckpointError, match="--family ar"):
        AR.build_model(tiny_config(bert_hidden_size=32)).load_state_dict(saved)


# ------------------------------------------------------------------------------ end to end


def test_train_decode_evaluate_end_to_end(tmp_path, capsys):
    """The three CLIs with --family ar; a few hundred steps learn the training pairs (greedy
    BLEU on the train split), beam candidates feed MBR, the model folder decodes the same."""
    data = make_tiny_data(tmp_path / "data", n_test=6)
    run, out = tmp_path / "run", tmp_path / "out"
    argv = tiny_argv(
        data, family="ar", checkpoint_path=run, bert_hidden_size=64, intermediate_size=128,
        bsz=16, microbatch=16, lr=0.003, learning_steps=300, save_interval=300,
        log_interval=100, eval_interval=100, ema_rate=0.99,
    )  # fmt: skip
    assert train_main(argv) == 0
    assert RunConfig.load_yaml(run / "config.yaml").model.family == "ar"
    common = ["--model_dir", str(run), "--out_dir", str(out), "--bsz", "5"]
    assert decode_main(common + ["--split", "train"]) == 0
    folder = out / "run" / "ema_0.99_000300.pt.samples-greedy-1steps-train"
    record = json.loads((folder / "seed101_step0.json").read_text().splitlines()[0])
    assert record["recover"].startswith("[START] ") and record["recover"].endswith(" [END]")
    report = tmp_path / "train.json"
    assert eval_main(["--folder", str(folder), "--no_bertscore", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["files"][0]["avg_bleu"] > 0.8
    assert decode_main(common + ["--num_samples", "3"]) == 0  # auto: beam, 3 candidates
    beams = out / "run" / "ema_0.99_000300.pt.samples-beam-4steps"
    assert sorted(p.name for p in beams.glob("*.json")) == [
        f"seed{s}_step0.json" for s in (101, 102, 103)
    ]
    assert eval_main(["--folder", str(beams), "--mbr", "--no_bertscore"]) == 0
    assert "MBR..." in capsys.readouterr().out
    hf = run / "hf" / "ema_0.99_000300"
    assert decode_main(["--model_dir", str(hf), "--out_dir", str(tmp_path / "hf"), "--num_samples", "3"]) == 0  # fmt: skip
    for f in sorted(beams.glob("*.json")):
        again = tmp_path / "hf" / hf.name / "model.safetensors.samples-beam-4steps" / f.name
        assert again.read_text() == f.read_text()


def test_half_resume_half_is_bit_identical(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    steps, half = 16, 8
    argv = tiny_argv(data, family="ar", learning_steps=steps, save_interval=half,
                     ema_rate="0.9,0.999")  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_main(argv + ["--checkpoint_path", str(straight)]) == 0
    trainer = prepare(argv + ["--checkpoint_path", str(split)])
    assert trainer.fit(until=half) == half
    trainer.close()
    dist.cleanup()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    assert train_main(argv + ["--checkpoint_path", str(split), "--resume_checkpoint", "auto"]) == 0
    a = load_state_file(straight / f"state_{steps:06d}.pt")
    b = load_state_file(split / f"state_{steps:06d}.pt")
    for key in ("model", "ema", "optimizer", "ranks"):
        assert_same(a[key], b[key], key)
    for rate in ("0.9", "0.999"):
        name = f"ema_{rate}_{steps:06d}.pt"
        assert_same(load_state_file(straight / name), load_state_file(split / name), name)


@pytest.mark.parametrize("task", ["qqp", "qg", "dialogue", "ts"])
def test_presets_are_transformer_base_on_the_paper_data(task):
    config = RunConfig.load_yaml(REPO_ROOT / "configs" / f"{task}-ar.yaml").validate()
    assert (config.model.family, config.model.ar_layers) == ("ar", "6+6")
    assert (config.model.bert_hidden_size, config.model.num_heads) == (512, 8)
    assert config.model.intermediate_size == 2048 and config.model.dropout == 0.1
    paper = RunConfig.load_yaml(REPO_ROOT / "configs" / f"{task}.yaml")
    assert config.data == paper.data


def test_bf16_trains_and_decodes_on_cpu(tmp_path, model):
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = tiny_argv(data, family="ar", learning_steps=3, bf16="true", checkpoint_path=run,
                     export_model="false")  # fmt: skip
    assert train_main(argv) == 0
    assert (run / "ema_0.9999_000003.pt").is_file()
    config = AR.resolve_decode(DecodeConfig(dtype="bf16", num_samples=2), None)
    rows = RowBatch(IDS, MASK, seeds=[101, 102, 101], indices=[0, 0, 1])
    tokens = AR.sample_tokens(model, None, rows, config=config)
    assert tokens.shape == IDS.shape and torch.equal(tokens[MASK == 0], IDS[MASK == 0])


@pytest.mark.slow
def test_two_processes_train_and_decode_like_one(tmp_path):
    """torchrun (gloo, 2 processes) trains an ar run; its 2-process beam decode equals a
    1-process decode byte for byte."""
    data = make_tiny_data(tmp_path / "data", n_test=5)
    run = tmp_path / "run"
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def torchrun(script: str, argv: list[str]) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(REPO_ROOT / script), *argv]  # fmt: skip
        done = run_command(cmd, cwd=tmp_path, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    torchrun("run_train.py", tiny_argv(data, family="ar", checkpoint_path=run, learning_steps=6))
    assert load_state_file(run / "state_000006.pt")["world_size"] == 2
    decode = ["--model_dir", str(run), "--num_samples", "2", "--bsz", "3"]
    torchrun("run_decode.py", decode + ["--out_dir", str(tmp_path / "two")])
    assert decode_main(decode + ["--out_dir", str(tmp_path / "one")]) == 0
    name = "run/ema_0.9999_000006.pt.samples-beam-4steps"
    files = sorted((tmp_path / "two" / name).glob("*.json"))
    assert len(files) == 2
    for f in files:
        assert f.read_text() == (tmp_path / "one" / name / f.name).read_text()

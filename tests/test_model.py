"""Unit tests of the denoiser and its config builder on tiny random models (no golden files)."""

from __future__ import annotations

import io

import pytest
import torch
from transformers import BertConfig, BertModel

from diffuseq.errors import CheckpointError, ConfigError, OfflineAssetError
from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.models.encoder_config import build_bert_config
from diffuseq.store.checkpoint_format import infer_architecture, state_dict_for_saving
from tests.conftest import tiny_denoiser

TINY = {
    "num_layers": 2,
    "num_heads": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "max_position_embeddings": 24,
}


def tiny_model(**kw) -> TransformerNetModel:
    """This file's tiny denoiser (:func:`tests.conftest.tiny_denoiser`): 2 layers of width 32,
    24 positions, h = 8, d_t = 6, V = 20, eval mode."""
    return tiny_denoiser(**{**TINY, "hidden_t_dim": 6, **kw}).eval()


def inputs(model: TransformerNetModel, batch: int = 3, length: int = 10):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, model.hidden_dim, generator=gen)  # [B, L, h]
    t = torch.tensor([0.0, 0.5, 999.5][:batch])
    return x, t


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------- config builder


def test_builtin_configs_offline():
    cfg = build_bert_config("bert-base-uncased", dropout=0.3)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (768, 12, 12)
    assert (cfg.intermediate_size, cfg.max_position_embeddings, cfg.vocab_size) == (
        3072,
        512,
        30522,
    )
    assert cfg.hidden_act == "gelu" and cfg.layer_norm_eps == 1e-12
    assert cfg.hidden_dropout_prob == 0.3 and cfg.attention_probs_dropout_prob == 0.1
    assert cfg._attn_implementation == "sdpa"
    assert build_bert_config("bert-base-cased", dropout=0.1).vocab_size == 28996
    large = build_bert_config("bert-large-uncased", dropout=0.1)
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    # each call returns a fresh object
    assert build_bert_config(dropout=0.1) is not build_bert_config(dropout=0.1)


def test_size_overrides_and_validation():
    cfg = build_bert_config(dropout=0.0, **TINY)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (2, 2, 32)
    assert (cfg.intermediate_size, cfg.max_position_embeddings) == (64, 24)
    assert build_bert_config(dropout=0.0, num_layers=0).num_hidden_layers == 12  # 0 = keep
    with pytest.raises(ConfigError, match="divisible"):
        build_bert_config(dropout=0.0, hidden_size=100, num_heads=12)
    with pytest.raises(ConfigError, match="--num_layers"):
        build_bert_config(dropout=0.0, num_layers=-1)
    with pytest.raises(ConfigError, match="--dropout"):
        build_bert_config(dropout=1.5)
    with pytest.raises(ConfigError, match="eager"):
        build_bert_config(dropout=0.0, attn_implementation="flash")


def test_local_folder_config(tmp_path):
    BertConfig(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96
    ).save_pretrained(tmp_path / "cfg")
    cfg = build_bert_config(str(tmp_path / "cfg"), dropout=0.2, num_layers=1)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (48, 1, 4)
    assert cfg.hidden_dropout_prob == 0.2
    direct = build_bert_config(tmp_path / "cfg" / "config.json", dropout=0.0)
    assert direct.num_hidden_layers == 3
    (tmp_path / "nomodeltype").mkdir()
    (tmp_path / "nomodeltype" / "config.json").write_text(
        '{"hidden_size": 16, "num_attention_heads": 4}'
    )
    assert build_bert_config(tmp_path / "nomodeltype", dropout=0.0).hidden_size == 16
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        build_bert_config(str(tmp_path / "empty"), dropout=0.0)
    with pytest.raises(ConfigError, match="no such folder"):
        build_bert_config(str(tmp_path / "missing"), dropout=0.0)


def test_unknown_hub_name_is_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    name = "no-such-org/no-such-bert-xyz"
    with pytest.raises(OfflineAssetError) as err:
        build_bert_config(name, dropout=0.1)
    message = str(err.value)
    assert name in message and "local folder" in message and "bert-base-uncased" in message


# ---------------------------------------------------------------- model structure


def test_state_dict_layout_and_parameter_count():
    model = tiny_model()
    keys = list(model.state_dict())
    assert keys[:4] == ["position_ids", "word_embedding.weight", "lm_head.weight", "lm_head.bias"]
    assert keys[-4:] == [
        "output_down_proj.0.weight",
        "output_down_proj.0.bias",
        "output_down_proj.2.weight",
        "output_down_proj.2.bias",
    ]
    assert torch.equal(model.position_ids, torch.arange(24)[None])
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.parameter_count() == sum(unique.values())
    no_proj = tiny_model(hidden_dim=32)
    assert not any("proj" in k for k in no_proj.state_dict())
    v2 = tiny_model(learned_mean_embed=True)
    assert next(iter(v2.state_dict())) == "mean_embed"
    assert v2.parameter_count() == model.parameter_count() + 8
    assert tiny_model().mean_embed is None


def test_mean_embed_init_std():
    h = 4096
    model = tiny_denoiser(
        **TINY, vocab_size=4, hidden_dim=h, hidden_t_dim=4, learned_mean_embed=True
    )
    assert model.mean_embed.shape == (h,)
    assert model.mean_embed.std().item() == pytest.approx(h**-0.5, rel=0.05)


def test_bert_base_parameter_counts_spec_4_5():
    """Spec §4.5 / §2.3 logged counts, built on the meta device (no memory)."""
    bert = build_bert_config("bert-base-uncased", dropout=0.1)
    counts = []
    with torch.device("meta"):
        for h, mean in [(128, False), (128, True), (256, False)]:
            model = TransformerNetModel(
                vocab_size=30522,
                hidden_dim=h,
                hidden_t_dim=128,
                dropout=0.1,
                bert_config=bert,
                learned_mean_embed=mean,
            )
            counts.append(model.parameter_count())
    assert counts == [91_225_274, 91_225_402, 95_328_826]


def test_constructor_does_not_mutate_config():
    bert = build_bert_config(dropout=0.0, **TINY)
    bert._attn_implementation = None
    model = TransformerNetModel(
        vocab_size=5, hidden_dim=8, hidden_t_dim=4, dropout=0.25, bert_config=bert
    )
    assert bert.hidden_dropout_prob == 0.0 and bert._attn_implementation is None
    assert model.config.hidden_dropout_prob == 0.25 and model.config._attn_implementation == "sdpa"
    assert model.dropout.p == 0.25


# ---------------------------------------------------------------- forward


def test_forward_shapes_logits_and_errors():
    model = tiny_model()
    x, t = inputs(model)
    with torch.no_grad():
        y = model(x, t)
        assert y.shape == x.shape and y.dtype == torch.float32
        ids = torch.tensor([[1, 2, 3]])
        assert torch.equal(model.get_embeds(ids), model.word_embedding.weight[ids])
        z = torch.randn(2, 3, 8)
        expected = z @ model.word_embedding.weight.T + model.lm_head.bias  # [2, 3, V]
        torch.testing.assert_close(model.get_logits(z), expected)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.randn(1, 25, 8), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\[B, L, 8\]"):
        model(torch.randn(1, 4, 7), torch.zeros(1))


def test_autocast_output_is_cast_back():
    model = tiny_model()
    x, t = inputs(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, t)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("hidden_dim", [8, 32])
def test_sdpa_matches_eager(hidden_dim):
    sdpa = tiny_model(hidden_dim=hidden_dim)
    eager = tiny_model(hidden_dim=hidden_dim, attn="eager")
    eager.load_state_dict(sdpa.state_dict())
    x, t = inputs(sdpa)
    with torch.no_grad():
        diff = (sdpa(x, t) - eager(x, t)).abs().max().item()
    assert diff < 1e-5


def test_dropout_active_only_in_train_mode():
    model = tiny_denoiser(**TINY, vocab_size=5, hidden_dim=8, hidden_t_dim=4, dropout=0.5)
    x, t = inputs(model)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x, t), model(x, t))
        model.train()
        assert not torch.equal(model(x, t), model(x, t))


# ---------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_identical_outputs():
    a = tiny_model(learned_mean_embed=True)
    torch.manual_seed(123)
    b = tiny_model(learned_mean_embed=True)
    x, t = inputs(a)
    b.load_state_dict(roundtrip(state_dict_for_saving(a)))
    with torch.no_grad():
        assert torch.equal(a(x, t), b(x, t))
    assert b.lm_head.weight is b.word_embedding.weight
    assert torch.equal(b.mean_embed, a.mean_embed)


def test_tied_weight_rule_takes_lm_head():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    raw = torch.randn_like(state["lm_head.weight"])
    state["lm_head.weight"] = raw
    model.load_state_dict(state)
    assert model.lm_head.weight is model.word_embedding.weight
    assert torch.equal(model.word_embedding.weight.detach(), raw)
    # Either tied key alone is enough.
    for key in ("lm_head.weight", "word_embedding.weight"):
        partial = {k: v for k, v in state.items() if k != key}
        fresh = torch.randn_like(raw)
        partial["lm_head.weight" if key == "word_embedding.weight" else "word_embedding.weight"] = (
            fresh
        )
        model.load_state_dict(partial)
        assert torch.equal(model.lm_head.weight.detach(), fresh)


def test_load_with_assign_keeps_tie():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])
    model.load_state_dict(state, assign=True)
    assert model.lm_head.weight is model.word_embedding.weight
    assert torch.equal(model.word_embedding.weight.detach(), state["lm_head.weight"])


def test_position_ids_missing_other_length_and_module_prefix():
    src = tiny_model()
    state = dict(src.state_dict())
    dst = tiny_model(vocab_size=20)
    no_pos = {k: v for k, v in state.items() if k != "position_ids"}
    dst.load_state_dict(no_pos)
    long_pos = {**state, "position_ids": torch.arange(512)[None]}
    dst.load_state_dict(long_pos)
    assert torch.equal(dst.position_ids, torch.arange(24)[None])
    dst.load_state_dict({f"module.{k}": v for k, v in state.items()})
    x, t = inputs(src)
    with torch.no_grad():
        assert torch.equal(src(x, t), dst(x, t))


def test_state_dict_for_saving_tied_quirk():
    model = tiny_model()
    ema = {name: p.detach() * 2 for name, p in model.named_parameters()}
    assert "lm_head.weight" not in ema
    quirk = state_dict_for_saving(model, ema_params=ema, tied_quirk=True)
    fixed = state_dict_for_saving(model, ema_params=ema, tied_quirk=False)
    assert list(quirk) == list(fixed) == list(model.state_dict())
    raw = model.word_embedding.weight.detach()
    assert torch.equal(quirk["word_embedding.weight"], 2 * raw)
    assert torch.equal(quirk["lm_head.weight"], raw)  # original: raw weight under lm_head
    assert torch.equal(fixed["lm_head.weight"], 2 * raw)
    assert torch.equal(quirk["lm_head.bias"], 2 * model.lm_head.bias.detach())
    assert torch.equal(quirk["position_ids"], model.position_ids)
    # the original's types: nn.Parameter for parameters, plain tensors for the buffer and the
    # second name of the tied matrix
    params = set(ema)
    for saved in (quirk, fixed):
        assert {k for k, v in saved.items() if type(v) is torch.nn.Parameter} == params
        assert all(v.requires_grad == (k in params) for k, v in saved.items())
    # Loading the quirky file gives the raw tied matrix and EMA everywhere else.
    other = tiny_model()
    other.load_state_dict(roundtrip(quirk))
    assert torch.equal(other.word_embedding.weight.detach(), raw)
    assert torch.equal(other.time_embed[0].weight.detach(), 2 * model.time_embed[0].weight.detach())
    with pytest.raises(ValueError, match="named_parameters"):
        state_dict_for_saving(model, ema_params={"word_embedding.weight": raw})


def test_bad_checkpoints_raise_checkpoint_error():
    model = tiny_model()
    state = dict(model.state_dict())
    missing = {k: v for k, v in state.items() if k != "time_embed.0.bias"}
    with pytest.raises(CheckpointError, match="missing keys: time_embed.0.bias"):
        model.load_state_dict(missing)
    result = model.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["time_embed.0.bias"]

    wide = dict(tiny_model(hidden_dim=12).state_dict())
    with pytest.raises(CheckpointError) as err:
        model.load_state_dict(wide)
    assert "word_embedding.weight (checkpoint [20, 12], model [20, 8])" in str(err.value)
    assert "hidden_dim: checkpoint 12, model 8 (set --hidden_dim)" in str(err.value)

    with pytest.raises(CheckpointError, match="vocab_size: checkpoint 30, model 20"):
        model.load_state_dict(dict(tiny_model(vocab_size=30).state_dict()))

    deeper = tiny_model(num_layers=3)
    with pytest.raises(CheckpointError, match="num_layers: checkpoint 3, model 2") as err:
        model.load_state_dict(dict(deeper.state_dict()))
    assert "unexpected keys: input_transformers.layer.2." in str(err.value)

    v2_state = dict(tiny_model(learned_mean_embed=True).state_dict())
    with pytest.raises(CheckpointError, match="learned_mean_embed: checkpoint True, model False"):
        model.load_state_dict(v2_state)
    with pytest.raises(CheckpointError, match="learned_mean_embed: checkpoint False, model True"):
        tiny_model(learned_mean_embed=True).load_state_dict(state)
    with pytest.raises(CheckpointError, match="mapping"):
        model.load_state_dict([1, 2])


def test_infer_architecture():
    model = tiny_model(learned_mean_embed=True)
    assert infer_architecture(model.state_dict()) == {
        "vocab_size": 20,
        "hidden_dim": 8,
        "hidden_t_dim": 6,
        "bert_hidden_size": 32,
        "num_layers": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 24,
        "learned_mean_embed": True,
        "self_cond": False,
        "embedding_norm": False,
        "length_predict": False,
        "adaptive_schedule": False,
    }


# ---------------------------------------------------------------- use_plm_init bert


def test_init_from_local_pretrained_bert(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
        vocab_size=20,
    )
    pretrained = BertModel(config)
    pretrained.save_pretrained(tmp_path / "bert")
    folder = str(tmp_path / "bert")
    bert = build_bert_config(folder, dropout=0.0)
    model = TransformerNetModel(
        vocab_size=20,
        hidden_dim=32,
        hidden_t_dim=6,
        dropout=0.0,
        bert_config=bert,
        init_pretrained="bert",
        config_name=folder,
    )
    assert model.lm_head.weight is model.word_embedding.weight
    assert torch.equal(model.word_embedding.weight, pretrained.embeddings.word_embeddings.weight)
    assert torch.equal(
        model.position_embeddings.weight, pretrained.embeddings.position_embeddings.weight
    )
    q = "layer.1.attention.self.query.weight"
    assert torch.equal(model.input_transformers.state_dict()[q], pretrained.encoder.state_dict()[q])
    assert list(model.state_dict()) == list(tiny_model(hidden_dim=32).state_dict())

    with pytest.raises(ConfigError, match="--hidden_dim 32"):
        TransformerNetModel(
            vocab_size=20,
            hidden_dim=8,
            hidden_t_dim=6,
            dropout=0.0,
            bert_config=bert,
            init_pretrained="bert",
            config_name=folder,
        )
    with pytest.raises(OfflineAssetError, match="not available offline"):
        TransformerNetModel(
            vocab_size=20,
            hidden_dim=32,
            hidden_t_dim=6,
            dropout=0.0,
            bert_config=bert,
            init_pretrained="bert",
            config_name="no-such-org/no-such-bert-xyz",
        )
    with pytest.raises(ConfigError, match="'no' or 'bert'"):
        TransformerNetModel(
            vocab_size=20,
            hidden_dim=32,
            hidden_t_dim=6,
            dropout=0.0,
            bert_config=bert,
            init_pretrained="roberta",
        )

"""Golden tests of the denoiser against the original code: G3 (tiny model), G6 (v2 state), G9 (run).

Every size, key list and constructor argument is read from the golden files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.models.encoder_config import build_bert_config
from diffuseq.models.nn_utils import timestep_embedding
from diffuseq.store.checkpoint_format import infer_architecture, state_dict_for_saving
from tests.conftest import golden_denoiser, load_golden, skip_missing

FWD_TOL = {"rtol": 1e-5, "atol": 1e-5}
LOGIT_TOL = {"rtol": 1e-5, "atol": 5e-5}
ARCH_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "layer_norm_eps",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def _get(tree: dict, path: str):
    """``tree["a/b/c"]`` for nested dicts (or flat ``"a/b"`` keys)."""
    if path in tree:
        return tree[path]
    head, _, rest = path.partition("/")
    return _get(tree[head], rest)


def _g3_config(golden_dir: Path) -> dict:
    path = golden_dir / "g3_model_config.json"
    if not path.exists():
        skip_missing("g3_model_config.json not found")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def g3(golden_dir):
    """(model loaded with g3_model_state.pt, g3_model_outputs.pt)."""
    return golden_denoiser(golden_dir), load_golden(golden_dir, "g3_model_outputs.pt")


def test_g3_bert_config_matches_resolved(golden_dir):
    cfg = _g3_config(golden_dir)
    ours = build_bert_config(
        str(golden_dir / "g3_tiny_bert_config"), dropout=cfg["constructor_args"]["dropout"]
    )
    for field in ARCH_FIELDS:
        assert getattr(ours, field) == cfg["bert_config_resolved"][field], field


def test_g3_state_dict_keys_shapes_order_and_count(golden_dir, g3):
    cfg = _g3_config(golden_dir)
    model, outputs = g3
    expected = [(name, list(shape), dtype) for name, shape, dtype in cfg["state_dict_keys"]]
    ours = [
        (k, list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]
    assert ours == expected
    assert list(load_golden(golden_dir, "g3_model_state.pt")) == [e[0] for e in expected]
    assert model.parameter_count() == cfg["parameter_count"] == outputs["parameter_count"]
    assert model.lm_head.weight is model.word_embedding.weight


def test_g3_get_embeds_exact(g3):
    model, out = g3
    with torch.no_grad():
        assert torch.equal(model.get_embeds(out["input_ids"]), out["get_embeds"])


def test_g3_intermediates(g3):
    model, out = g3
    x, t = out["x"], out["timesteps"]
    L = x.shape[1]
    with torch.no_grad():
        temb = timestep_embedding(t, model.hidden_t_dim)  # [B, d_t]
        time_out = model.time_embed(temb)  # [B, H]
        up = model.input_up_proj(x) if model.input_up_proj is not None else x  # [B, L, H]
        pos = model.position_embeddings(model.position_ids[:, :L])  # [1, L, H]
        summed = pos + up + time_out.unsqueeze(1)  # [B, L, H]
        normed = model.dropout(model.LayerNorm(summed))
        enc = model.input_transformers(normed).last_hidden_state
        down = model.output_down_proj(enc) if model.output_down_proj is not None else enc
    got = {
        "timestep_embedding": temb,
        "time_embed_out": time_out,
        "input_up_proj_out": up,
        "position_embeddings_out": pos,
        "sum_before_layernorm": summed,
        "layernorm_out": normed,
        "encoder_out": enc,
        "output_down_proj_out": down,
    }
    for name, value in got.items():
        torch.testing.assert_close(value, _get(out, f"intermediates/{name}"), **FWD_TOL, msg=name)
    # Chained from the golden encoder input, the encoder alone is also within tolerance.
    with torch.no_grad():
        enc_from_golden = model.input_transformers(_get(out, "intermediates/layernorm_out"))
    torch.testing.assert_close(
        enc_from_golden.last_hidden_state, _get(out, "intermediates/encoder_out"), **FWD_TOL
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_g3_forward_and_logits(golden_dir, attn):
    model = golden_denoiser(golden_dir, attn=attn)
    out = load_golden(golden_dir, "g3_model_outputs.pt")
    with torch.no_grad():
        y = model(out["x"], out["timesteps"])
        torch.testing.assert_close(y, out["forward_out"], **FWD_TOL)
        torch.testing.assert_close(model.get_logits(y), out["logits_of_forward_out"], **LOGIT_TOL)
        torch.testing.assert_close(
            model.get_logits(out["get_embeds"]), out["logits_of_embeds"], **LOGIT_TOL
        )


def test_g3_sdpa_equals_eager(golden_dir, g3):
    model, out = g3
    eager = golden_denoiser(golden_dir, attn="eager", load=False)
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        diff = (model(out["x"], out["timesteps"]) - eager(out["x"], out["timesteps"])).abs().max()
    assert diff < 1e-5


def test_timestep_embedding_table(golden_dir):
    out = load_golden(golden_dir, "g3_model_outputs.pt")
    t = _get(out, "timestep_embedding_table/t")
    by_dim = _get(out, "timestep_embedding_table/by_dim")
    assert any(int(d) % 2 for d in by_dim) and any(int(d) % 2 == 0 for d in by_dim)
    for d, table in by_dim.items():
        torch.testing.assert_close(timestep_embedding(t, int(d)), table, rtol=1e-6, atol=1e-6)


def test_g3_variant_no_projection(golden_dir):
    out = load_golden(golden_dir, "g3_model_outputs.pt")
    var = _get(out, "variant_no_projection")
    state = var["state_dict"]
    model = golden_denoiser(golden_dir, hidden_dim=var["hidden_dim"], load=False)
    assert model.input_up_proj is None and model.output_down_proj is None
    assert list(model.state_dict()) == list(state)
    assert not any("proj" in k for k in state)
    model.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model.get_embeds(out["input_ids"]), var["get_embeds"])
        y = model(var["x"], var["timesteps"])
        torch.testing.assert_close(y, var["forward_out"], **FWD_TOL)
        torch.testing.assert_close(model.get_logits(y), var["logits_of_forward_out"], **LOGIT_TOL)


def test_g6_mean_embed_is_first_key_and_loads(golden_dir):
    state = load_golden(golden_dir, "g6_model_state_v2.pt")
    model = golden_denoiser(golden_dir, v2=True, load=False)
    keys = list(model.state_dict())
    assert keys[0] == "mean_embed" and keys == list(state)
    assert (
        model.parameter_count()
        == _g3_config(golden_dir)["parameter_count"] + state["mean_embed"].numel()
    )
    model.load_state_dict(state)
    assert torch.equal(model.mean_embed.detach(), state["mean_embed"])
    assert infer_architecture(state)["learned_mean_embed"] is True
    # G6 holds the G3 weights plus mean_embed: the forward pass is G3's.
    out = load_golden(golden_dir, "g3_model_outputs.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(out["x"], out["timesteps"]), out["forward_out"], **FWD_TOL)


def _g9_runs(golden_dir: Path) -> list[Path]:
    runs = sorted(p for p in (golden_dir / "g9_run" / "diffusion_models").glob("*") if p.is_dir())
    if not runs:
        skip_missing("no g9_run/diffusion_models/<run> folder")
    return runs


def test_g9_ema_checkpoints_load_with_tied_lm_head(golden_dir):
    root = golden_dir / "g9_run"
    info = json.loads((golden_dir / "g9_run_info.json").read_text())
    n_checked = 0
    for run in _g9_runs(golden_dir):
        args = json.loads((run / "training_args.json").read_text())
        bert = build_bert_config(str(root / args["config_name"]), dropout=args["dropout"])
        for path in sorted(run.glob("ema_*.pt")):
            file_sd = torch.load(path, weights_only=True)
            model = TransformerNetModel(
                vocab_size=args["vocab_size"],
                hidden_dim=args["hidden_dim"],
                hidden_t_dim=args["hidden_t_dim"],
                dropout=args["dropout"],
                bert_config=bert,
                learned_mean_embed=args.get("learned_mean_embed", False),
                init_pretrained=args["use_plm_init"],
            ).eval()
            entry = info["checkpoints"][str(path.relative_to(root))]
            ours = [
                [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
                for k, v in model.state_dict().items()
            ]
            assert ours == entry["keys"]
            model.load_state_dict(file_sd)

            word, head = file_sd["word_embedding.weight"], file_sd["lm_head.weight"]
            assert (word - head).abs().max().item() == pytest.approx(
                entry["max_abs_diff_word_embedding_vs_lm_head"], rel=1e-6
            )
            assert model.lm_head.weight is model.word_embedding.weight
            assert torch.equal(model.word_embedding.weight.detach(), head)
            for name, value in model.state_dict().items():
                if name not in ("word_embedding.weight", "lm_head.weight"):
                    assert torch.equal(value, file_sd[name]), name

            # Writing it back in the original's quirky format reproduces the file exactly.
            ema = {name: file_sd[name] for name, _ in model.named_parameters()}
            saved = state_dict_for_saving(model, ema_params=ema, tied_quirk=True)
            assert list(saved) == list(file_sd)
            assert all(torch.equal(saved[k], file_sd[k]) for k in file_sd)
            assert type(saved) is type(file_sd) and saved._metadata == file_sd._metadata
            for key, value in file_sd.items():  # nn.Parameter / plain tensor, as the original
                assert type(saved[key]) is type(value), key
                assert saved[key].requires_grad == value.requires_grad, key

            x = torch.randn(2, args["seq_len"], args["hidden_dim"])
            with torch.no_grad():
                assert torch.isfinite(model(x, torch.tensor([0.0, 999.5]))).all()
            n_checked += 1
    assert n_checked == len(info["checkpoints"])

"""The memory-lean CPU training forward of the encoder equals transformers' own layers:
same dropout masks (same random draws), same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch

import diffuseq.models.denoiser as model_module
from diffuseq.models.denoiser import TransformerNetModel
from tests.conftest import tiny_denoiser


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lean_training_forward_matches_transformers(monkeypatch, dropout, autocast):
    model = tiny_denoiser(
        vocab_size=50,
        hidden_dim=16,
        hidden_t_dim=16,
        dropout=dropout,
        num_layers=2,
        hidden_size=32,
        intermediate_size=64,
        seed=0,
    ).train()
    x = torch.randn(3, 10, 16)
    t = torch.tensor([0.0, 5.0, 999.5])

    def run(lean: bool):
        # the reference: transformers' own layers with eager attention (under bf16 autocast,
        # SDPA's fused kernel accumulates differently; in fp32 the two are equal)
        model.config._attn_implementation = "sdpa" if lean else "eager"
        monkeypatch.setattr(TransformerNetModel, "_lean_training", lambda self, emb: lean)
        torch.manual_seed(1)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x, t)
        out.float().square().mean().backward()
        return out.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    lean_out, lean_grads = run(True)
    ref_out, ref_grads = run(False)
    assert torch.equal(lean_out, ref_out)
    assert lean_grads.keys() == ref_grads.keys()
    for name, grad in lean_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_lean_forward_used_only_when_training(monkeypatch):
    model = tiny_denoiser(dropout=0.1, hidden_size=32, intermediate_size=64)
    emb = torch.zeros(1, 2, 32)
    assert not model.train()._lean_training(emb)  # small activations: transformers' layers
    monkeypatch.setattr(model_module, "LEAN_MIN_ELEMENTS", emb.numel())
    assert model.train()._lean_training(emb)
    assert not model.eval()._lean_training(emb)
    with torch.no_grad():
        assert not model.train()._lean_training(emb)

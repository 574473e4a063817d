"""Shared test fixtures: golden-file location, tiny deterministic settings, the tiny denoiser."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:  # imported by the builders below only: collecting tests stays fast
    from diffuseq.models.denoiser import TransformerNetModel

REPO_ROOT = Path(__file__).resolve().parents[1]


#: Set (as .ci/run does) to make a missing reference folder a test failure instead of a skip.
REQUIRE_SHARED = os.environ.get("DIFFUSEQ_REQUIRE_GOLDEN", "") not in ("", "0")


def shared_dir() -> Path:
    """``$DIFFUSEQ_SHARED`` if set, else ``../shared`` next to the checkout."""
    env = os.environ.get("DIFFUSEQ_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


#: The golden reference files (numbers produced by running the original code), shipped with
#: the repository so that a fresh clone runs every parity test.
BUNDLED_GOLDEN = REPO_ROOT / "tests" / "golden"


def find_golden_dir() -> Path | None:
    """``$DIFFUSEQ_GOLDEN`` if set, else the bundled ``tests/golden``; ``None`` if it is not a
    folder."""
    env = os.environ.get("DIFFUSEQ_GOLDEN")
    candidate = Path(env) if env else BUNDLED_GOLDEN
    return candidate if candidate.is_dir() else None


def skip_missing(what: str) -> None:
    """Skip the test because reference data is missing, or fail under DIFFUSEQ_REQUIRE_GOLDEN."""
    message = f"{what} not found (set DIFFUSEQ_SHARED / DIFFUSEQ_GOLDEN or place it at ../shared)"
    if REQUIRE_SHARED:
        pytest.fail(message + "; DIFFUSEQ_REQUIRE_GOLDEN is set", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = find_golden_dir()
    if path is None:
        skip_missing("golden reference folder")
    return path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = shared_dir() / "data"
    if not path.is_dir():
        skip_missing("shared data folder")
    return path


def pinned_versions() -> dict[str, str]:
    """``{package: version}`` of the ``name==version`` lines of ``constraints.txt``."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.strip().lower()] = version.strip()
    return pins


def require_pinned(*packages: str) -> None:
    """Skip (fail under DIFFUSEQ_REQUIRE_GOLDEN) unless each package is at its pinned version.

    The golden numbers come from the versions in ``constraints.txt``; another release of, e.g.,
    nltk changes BLEU smoothing, so the comparison would test the library, not this code.
    """
    from importlib.metadata import version

    pins = pinned_versions()
    for package in packages:
        installed, wanted = version(package), pins[package]
        if installed != wanted:
            message = (
                f"{package} {installed} is installed; the golden values need {package}=={wanted} "
                "(pip install -c constraints.txt ...)"
            )
            if REQUIRE_SHARED:
                pytest.fail(message + "; DIFFUSEQ_REQUIRE_GOLDEN is set", pytrace=False)
            pytest.skip(message)


def load_golden(golden_dir: Path, name: str):
    """``torch.load`` a golden ``.pt`` file with ``weights_only=True``; skip if it is missing."""
    path = golden_dir / name
    if not path.exists():
        skip_missing(f"golden file {name} in {golden_dir}")
    return torch.load(path, weights_only=True)


def tiny_denoiser(
    *,
    vocab_size: int = 20,
    hidden_dim: int = 8,
    hidden_t_dim: int = 8,
    dropout: float = 0.0,
    num_layers: int = 1,
    num_heads: int = 2,
    hidden_size: int = 16,
    intermediate_size: int = 32,
    max_position_embeddings: int | None = None,
    attention_dropout: float | None = None,
    attn: str = "sdpa",
    seed: int | None = None,
    **model_kwargs: Any,
) -> TransformerNetModel:
    """A tiny random denoiser: a ``bert-base-uncased`` encoder config shrunk to the given sizes
    (default 1 layer, 2 heads, width 16, feed-forward 32), as built (train mode).

    Args:
        max_position_embeddings: ``None`` keeps bert-base's 512.
        attention_dropout: ``None`` keeps bert-base's 0.1 (``dropout`` is the hidden dropout).
        attn: the encoder's attention kernel, ``"sdpa"`` or ``"eager"``.
        seed: ``torch.manual_seed(seed)`` first (``None``: the generator as it is).
        model_kwargs: the rest of ``TransformerNetModel`` (``learned_mean_embed``, ``self_cond``).
    """
    from diffuseq.models.denoiser import TransformerNetModel
    from diffuseq.models.encoder_config import build_bert_config

    if seed is not None:
        torch.manual_seed(seed)
    bert = build_bert_config(
        dropout=dropout,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        attn_implementation=attn,
    )
    if attention_dropout is not None:
        bert.attention_probs_dropout_prob = attention_dropout
    return TransformerNetModel(
        vocab_size=vocab_size,
        hidden_dim=hidden_dim,
        hidden_t_dim=hidden_t_dim,
        dropout=dropout,
        bert_config=bert,
        **model_kwargs,
    )


def golden_denoiser(
    golden_dir: Path,
    *,
    v2: bool = False,
    attn: str = "sdpa",
    hidden_dim: int | None = None,
    load: bool = True,
) -> TransformerNetModel:
    """The G3 tiny denoiser of the golden files (G6: ``v2``, with μ) in eval mode: its
    constructor arguments and encoder config from ``g3_model_config.json`` and
    ``g3_tiny_bert_config``, loaded with ``g3_model_state.pt`` (``g6_model_state_v2.pt``)
    unless ``load`` is false (then freshly initialised, ``hidden_dim`` may differ)."""
    from diffuseq.models.denoiser import TransformerNetModel
    from diffuseq.models.encoder_config import build_bert_config

    config_path = golden_dir / "g3_model_config.json"
    if not config_path.exists():
        skip_missing("g3_model_config.json not found")
    args = json.loads(config_path.read_text())["constructor_args"]
    bert = build_bert_config(
        str(golden_dir / "g3_tiny_bert_config"), dropout=args["dropout"], attn_implementation=attn
    )
    model = TransformerNetModel(
        vocab_size=args["vocab_size"],
        hidden_dim=args["input_dims"] if hidden_dim is None else hidden_dim,
        hidden_t_dim=args["hidden_t_dim"],
        dropout=args["dropout"],
        bert_config=bert,
        learned_mean_embed=v2,
        init_pretrained=args["init_pretrained"],
    )
    if load:
        model.load_state_dict(
            load_golden(golden_dir, "g6_model_state_v2.pt" if v2 else "g3_model_state.pt")
        )
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models are dominated by thread overhead: one intra-op thread is much faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory):
    """Point ``$XDG_CACHE_HOME`` (the tokenization cache's ``--data_cache auto``, also inherited
    by the training subprocesses) at a session folder: tests never write to ``~/.cache``."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous

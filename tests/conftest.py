"""Shared test fixtures: golden-file location and tiny deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_golden_dir() -> Path | None:
    """``$DIFFUSEQ_GOLDEN`` if set, else ``../shared/golden`` next to the checkout."""
    env = os.environ.get("DIFFUSEQ_GOLDEN")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "golden"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = find_golden_dir()
    if path is None:
        pytest.skip(
            "golden reference folder not found (set DIFFUSEQ_GOLDEN or place it at ../shared/golden)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not found")
    return path


def load_golden(golden_dir: Path, name: str):
    """``torch.load`` a golden ``.pt`` file with ``weights_only=True``; skip if it is missing."""
    path = golden_dir / name
    if not path.exists():
        pytest.skip(f"golden file {name} not found in {golden_dir}")
    return torch.load(path, weights_only=True)


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

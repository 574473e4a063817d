"""Shared test fixtures: golden-file location and tiny deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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

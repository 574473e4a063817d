"""Every CLI module runs with ``python -m`` and names itself in its usage line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train", "decode", "evaluate", "plot", "export"])
def test_python_m_help(name):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", f"diffuseq.cli.{name}", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m diffuseq.cli.{name}"), done.stdout[:200]


HEAVY = ("torch", "transformers", "diffusers", "tokenizers", "matplotlib")


@pytest.mark.parametrize("name", ["train", "decode", "evaluate", "plot", "export"])
def test_help_imports_no_torch(name):
    """--help builds the whole parser (every choice list) without loading torch & co."""
    code = (
        "import contextlib, io, sys\n"
        f"import diffuseq.cli.{name} as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"--help of diffuseq.cli.{name} imports {done.stdout}"


def test_registries_match_the_light_names():
    from diffuseq.diffusion.timestep_sampling import TIMESTEP_DISTRIBUTIONS
    from diffuseq.diffusion.timesteps import TIMESTEP_DISTRIBUTION_NAMES

    assert TIMESTEP_DISTRIBUTIONS == TIMESTEP_DISTRIBUTION_NAMES

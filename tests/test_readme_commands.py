"""Every command of README.md's ```bash blocks (and its Python example) runs, scaled down, so
that the README and the scripts cannot drift apart.

The commands run as written, in README order, in a scratch copy of the repository's layout
(scripts, entry points, configs, small copies of the demo data; the package from this checkout),
one torch thread per process. Scaling: training gets a few steps of a small T (flags appended,
which win over earlier ones), ``--num_samples 10`` becomes 2; ``RUN`` and the README's example
checkpoint name become the run folder and checkpoint the demo command created. What cannot run
on a CPU offline is checked, not run: other datasets (QQP, QG; stand-in folders hold demo data)
and several processes (``NPROC`` > 1) run ``train.sh ... --check_args`` with one process, which
parses and validates everything a run would. ``scripts/test.sh`` runs one small test file (the
whole suite is what runs this test). A command that matches no rule fails the test: extend
:func:`scaled` when the README gains a command.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.train_helpers import DEMO_DIR, REPO_ROOT, run_command, subprocess_env

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
#: Appended to every training command that runs (not --check_args): a few steps of a small T.
TINY_TRAIN = ["--learning_steps", "4", "--diff_steps", "20", "--bsz", "8", "--microbatch", "8",
              "--save_interval", "2", "--log_interval", "2", "--eval_interval", "2"]  # fmt: skip
EXAMPLE_CHECKPOINT = "ema_0.9999_050000.pt"


def readme_commands(text: str) -> list[list[str]]:
    """The commands of the ```bash blocks (continuations joined, comments dropped), as words."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def readme_python(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, value = words[0].split("=", 1)
        env[key] = value
        words = words[1:]
    return env, words


def scaled(words: list[str], state: dict[str, str]) -> tuple[dict[str, str], list[str], str]:
    """``(env, argv, what)`` for one README command: the command scaled down, or checked."""
    env, argv = _split_env(words)
    env = {k: _substitute(v, state) for k, v in env.items()}
    argv = [_substitute(w, state) for w in argv]
    program = argv[1] if argv[0] in ("bash", "python") else argv[0]
    if program == "scripts/demo.sh":
        return {**env, "RUN": "diffusion_models/demo"}, argv + TINY_TRAIN, "run"
    if program == "scripts/test.sh":
        return env, argv + ["-p", "no:cacheprovider", "tests/test_schedules.py"], "run"
    if program == "scripts/train.sh":
        demo = "configs/demo.yaml" in argv or "--resume_checkpoint" in argv
        if int(env.get("NPROC", "1")) > 1 or not demo:
            # several processes, or a dataset that is not bundled: validate, do not train
            return {**env, "NPROC": "1"}, argv + ["--check_args"], "check"
        if "--resume_checkpoint" in argv:
            return env, argv + ["--learning_steps", "6"], "run"
        return env, argv + TINY_TRAIN, "run"
    if program == "run_train.py":  # a model family on the bundled demo
        return env, argv + TINY_TRAIN, "run"
    if program in ("scripts/run_decode.sh", "run_decode.py"):
        argv = ["2" if a == "10" and p == "--num_samples" else a for p, a in zip([""] + argv, argv)]
        return env, argv, "run"
    if program == "eval_seq2seq.py":
        return env, argv + ["--no_bertscore"], "run"
    raise AssertionError(f"README command with no rule in tests/test_readme_commands.py: {words}")


def _substitute(word: str, state: dict[str, str]) -> str:
    if "run" in state:
        word = word.replace("/RUN", "/" + state["run"])
    if "checkpoint" in state:
        word = word.replace(EXAMPLE_CHECKPOINT, state["checkpoint"])
    return word


def _scratch_checkout(root: Path) -> None:
    """The layout the commands expect, with small data; the package comes from PYTHONPATH."""
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    for name in ("run_train.py", "run_decode.py", "eval_seq2seq.py", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / "configs").symlink_to(REPO_ROOT / "configs")
    (root / "tests").symlink_to(REPO_ROOT / "tests")
    for folder in ("demo", "QQP", "QG"):  # QQP, QG: stand-ins for --check_args
        target = root / "datasets" / folder
        target.mkdir(parents=True)
        for split, n in (("train", 64), ("valid", 16), ("test", 6)):
            lines = (DEMO_DIR / f"{split}.jsonl").read_text().splitlines()[:n]
            (target / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        shutil.copy(DEMO_DIR / "vocab.txt", target / "vocab.txt")


def test_every_readme_command_runs_scaled_down(tmp_path):
    root = tmp_path / "checkout"
    _scratch_checkout(root)
    base_env = {**subprocess_env(), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "NPROC": "1"}  # fmt: skip
    base_env.pop("CI", None)
    text = README.read_text(encoding="utf-8")
    state: dict[str, str] = {}
    commands = readme_commands(text)
    assert len(commands) >= 10, commands
    for words in commands:
        env, argv, what = scaled(words, state)
        start = time.monotonic()
        done = run_command(argv, cwd=root, env={**base_env, **env}, timeout=300)
        shown = " ".join(words)
        print(f"{time.monotonic() - start:5.1f} s  {what}: {shown}")
        assert done.returncode == 0, f"{shown}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        if what == "check":
            assert "arguments OK" in done.stdout, shown
        if not state and "configs/demo.yaml" in argv and argv[1] == "scripts/train.sh":
            # the run the README calls diffusion_models/RUN
            (run,) = (root / "diffusion_models").glob("diffuseq_demo_*")
            assert ":" not in run.name
            state["run"] = run.name
        if "--resume_checkpoint" in argv and what == "run":
            newest = sorted((root / "diffusion_models" / state["run"]).glob("ema_*.pt"))[-1]
            state["checkpoint"] = newest.name
            assert json.loads((newest.parent / "latest.json").read_text())
        if "--text" in argv:
            assert "source: " in done.stdout, shown
    assert {"run", "checkpoint"} <= set(state)
    for code in readme_python(text):
        code = code.replace("diffusion_models/RUN", f"diffusion_models/{state['run']}")
        script = code + "\nprint('python-block-ok')\n"
        done = run_command([sys.executable, "-c", script], cwd=root, env=base_env, timeout=300)
        assert done.returncode == 0 and "python-block-ok" in done.stdout, done.stderr[-3000:]

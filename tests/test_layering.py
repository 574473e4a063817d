"""The layering rules of docs/ARCHITECTURE.md, checked on the source (AST, no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffuseq"

#: What the pure math (diffusion/, sampling/) must never import.
ORCHESTRATION = (
    "diffuseq.training.trainer",
    "diffuseq.cli",
    "diffuseq.runtime.dist",
    "diffuseq.runtime.logger",
    "diffuseq.store.checkpoint",
    "diffuseq.decoding.job",
)
TORCHRUN_ENV = {
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (PACKAGE / folder).rglob("*.py"))


def _imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # ``from diffuseq.runtime import dist`` imports the module diffuseq.runtime.dist
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _violations(paths: list[Path], forbidden: tuple[str, ...], root: Path = PACKAGE) -> list[str]:
    return [
        f"{path.relative_to(root.parent).as_posix()}:{line} imports {name}"
        for path in paths
        for line, name in _imported(path, root)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_math_imports_no_orchestration():
    paths = _modules("diffusion", "sampling")
    assert len(paths) >= 10  # the rule is checked on real files
    assert _violations(paths, ORCHESTRATION) == []


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: a file under diffusion/ importing dist or the trainer is reported."""
    root = tmp_path / "diffuseq"
    fake = root / "diffusion" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "from diffuseq.runtime import dist\nfrom ..training.trainer import Trainer\nimport torch\n"
    )
    assert _violations([fake], ORCHESTRATION, root) == [
        "diffuseq/diffusion/bad.py:1 imports diffuseq.runtime.dist",
        "diffuseq/diffusion/bad.py:2 imports diffuseq.training.trainer",
        "diffuseq/diffusion/bad.py:2 imports diffuseq.training.trainer.Trainer",
    ]


@pytest.mark.parametrize("path", _modules("."), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_dist_reads_torchrun_environment(path):
    if path.name == "dist.py":
        return
    text = path.read_text(encoding="utf-8")
    reads = [
        f"{path.name} reads {name}"
        for name in TORCHRUN_ENV
        if f'"{name}"' in text and ("environ" in text or "getenv" in text)
    ]
    assert reads == []


@pytest.mark.parametrize("path", _modules("."), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_cli_parses_argv(path):
    if path.parent.name == "cli":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and (node.attr in ("parse_args", "parse_known_args") or node.attr == "argv")
    ]
    assert calls == [], f"{path.name} parses argv at lines {calls}"

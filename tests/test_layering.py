"""The rules of docs/ARCHITECTURE.md, checked on the source (AST, no imports run).

* The pure math (``diffusion/``, ``sampling/``, ``families/``) imports no orchestration.
* No module under ``diffuseq/`` is over :data:`MAX_LINES` lines.
* No import cycles among the ``diffuseq`` modules.
* Only ``runtime/dist.py`` reads torchrun's environment; only ``cli/*`` parse argv.

Each rule has a test that its checker sees a violation (on files written to ``tmp_path``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffuseq"

#: The pure math: the processes, the decoding algorithms and the model families (what a
#: family builds, its loss, how it samples). They take the model as an argument.
MATH = ("diffusion", "sampling", "discrete", "families")
#: What the pure math must never import (any module of these packages, lazily or not, even
#: under ``if TYPE_CHECKING:``): the training loop, the command lines, the run-time services
#: (process group, logger), the run store (checkpoints, run and model folders), the decode and
#: evaluation jobs.
ORCHESTRATION = (
    "diffuseq.training",
    "diffuseq.cli",
    "diffuseq.runtime",
    "diffuseq.store",
    "diffuseq.decoding",
    "diffuseq.evaluation",
)
#: Exceptions to :data:`ORCHESTRATION`. ``runtime.progress`` draws the samplers' inner-loop
#: bars (``sampling/common.py``): it is a display adapter over tqdm that imports nothing from
#: diffuseq, reads no rank (the caller passes ``enabled``) and writes only to the stream it is
#: given, so it adds no orchestration to the math (``test_allowed_modules_are_leaves``).
ALLOWED_IN_MATH = ("diffuseq.runtime.progress",)

MAX_LINES = 450

TORCHRUN_ENV = {
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def _modules(*folders: str, root: Path = PACKAGE) -> list[Path]:
    return sorted(p for folder in folders for p in (root / folder).rglob("*.py"))


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(
    path: Path, root: Path, *, in_functions: bool = True, type_checking: bool = True
) -> list[tuple[int, str]]:
    """``(line, module)`` for the imports of a file, relative imports resolved.

    ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a module). With
    ``in_functions=False`` the imports inside function bodies (lazy ones) are left out, with
    ``type_checking=False`` those under ``if TYPE_CHECKING:``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
            return
        if not in_functions and isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        ):
            return
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            children: Iterable[ast.AST] = node.orelse
        else:
            children = ast.iter_child_nodes(node)
        for child in children:
            visit(child)

    visit(tree)
    return found


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ---------------------------------------------------------------------------------- layering
def _violations(
    paths: list[Path],
    forbidden: tuple[str, ...],
    root: Path = PACKAGE,
    allowed: tuple[str, ...] = ALLOWED_IN_MATH,
) -> list[str]:
    return [
        f"{path.relative_to(root.parent).as_posix()}:{line} imports {name}"
        for path in paths
        for line, name in _imported(path, root)
        if _matches(name, forbidden) and not _matches(name, allowed)
    ]


def test_math_imports_no_orchestration():
    paths = _modules(*MATH)
    assert len(paths) >= 15  # the rule is checked on real files
    assert _violations(paths, ORCHESTRATION) == []


def test_allowed_modules_are_leaves():
    """What the math may import from :data:`ORCHESTRATION` imports nothing of diffuseq itself."""
    for name in ALLOWED_IN_MATH:
        path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
        assert [n for _, n in _imported(path, PACKAGE) if _matches(n, ("diffuseq",))] == []


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: a file under diffusion/ importing dist, the trainer or any module of
    the run store is reported, lazily or not; the progress display is allowed."""
    root = tmp_path / "diffuseq"
    fake = root / "diffusion" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "from diffuseq.runtime import dist\n"
        "from ..training.trainer import Trainer\n"
        "import torch\n"
        "from diffuseq.runtime.progress import progress\n"
        "def f():\n"
        "    import diffuseq.store.checkpoint_format\n"
    )
    assert _violations([fake], ORCHESTRATION, root) == [
        "diffuseq/diffusion/bad.py:1 imports diffuseq.runtime",
        "diffuseq/diffusion/bad.py:1 imports diffuseq.runtime.dist",
        "diffuseq/diffusion/bad.py:2 imports diffuseq.training.trainer",
        "diffuseq/diffusion/bad.py:2 imports diffuseq.training.trainer.Trainer",
        "diffuseq/diffusion/bad.py:6 imports diffuseq.store.checkpoint_format",
    ]


# ---------------------------------------------------------------------------------- size
def _too_long(paths: list[Path], root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    return [
        f"{path.relative_to(root.parent).as_posix()}: {n} lines (at most {limit})"
        for path in paths
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > limit
    ]


def test_no_module_over_the_line_cap():
    assert _too_long(_modules(".")) == []


def test_the_line_cap_check_sees_a_long_module(tmp_path):
    root = tmp_path / "diffuseq"
    root.mkdir()
    (root / "short.py").write_text("x = 1\n" * MAX_LINES)
    (root / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert _too_long(_modules(".", root=root), root) == [
        f"diffuseq/long.py: {MAX_LINES + 1} lines (at most {MAX_LINES})"
    ]


# ---------------------------------------------------------------------------------- cycles
def _import_graph(root: Path, *, in_functions: bool) -> dict[str, set[str]]:
    """Module -> the diffuseq modules importing it runs.

    Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, except those of the
    importer's own packages (they are already being imported when it runs). Imports under
    ``if TYPE_CHECKING:`` never run and are left out.
    """
    paths = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        targets = set()
        for _, name in _imported(path, root, in_functions=in_functions, type_checking=False):
            parts = name.split(".")
            prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            targets |= {p for p in prefixes if p in paths and p not in own}
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.add(tuple(sorted([v, *component])))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_when_importing():
    """The imports that run when a module is imported (module level, class bodies, ``try``)
    form no cycle: lazy imports inside functions and ``if TYPE_CHECKING:`` ones do not count
    here (they run later or never)."""
    assert _cycles(_import_graph(PACKAGE, in_functions=False)) == set()


def test_no_dependency_cycles():
    """Counting lazy imports too (a function-level import is still a dependency; only
    ``if TYPE_CHECKING:`` imports are left out), no two modules depend on each other."""
    assert _cycles(_import_graph(PACKAGE, in_functions=True)) == set()


def test_the_cycle_check_sees_a_cycle(tmp_path):
    root = tmp_path / "diffuseq"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from diffuseq import b\n",
        "b.py": "from . import c\n",
        "c.py": "import diffuseq.a\n",  # a -> b -> c -> a
        "sub/__init__.py": "from diffuseq.sub.x import X\n",  # a package importing its module
        "sub/x.py": "from diffuseq.sub import y\nX = 1\n",
        "sub/y.py": "def f():\n    from diffuseq import lazy\n",  # y -> lazy, lazily
        "lazy.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import diffuseq.d\n"
        "from diffuseq.sub import y\n",  # lazy -> y
        "d.py": "import diffuseq.lazy\n",  # d -> lazy, lazy -> d only for type checkers
    }
    for name, text in files.items():
        (root / name).write_text(text)
    cycle = ("diffuseq.a", "diffuseq.b", "diffuseq.c")
    assert _cycles(_import_graph(root, in_functions=False)) == {cycle}
    assert _cycles(_import_graph(root, in_functions=True)) == {
        cycle,
        # importing diffuseq.sub.y runs diffuseq/sub/__init__.py, which imports sub.x first
        ("diffuseq.lazy", "diffuseq.sub", "diffuseq.sub.x", "diffuseq.sub.y"),
    }


# ---------------------------------------------------------------------------------- env, argv
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

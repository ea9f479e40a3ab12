"""The layers of the package and who may import whom (issue 13), read from the source of every
module (imports inside functions count too: they are dependencies all the same).

    core      the mathematics: symmetries, targets, architectures, methods, loss, metrics
    analysis  HMC, neural MCMC, observables and their errors, reference curves   (uses core)
    harness   configuration, planning, training, running, executors, the store  (uses core, analysis)
    outputs   tables, plots, progress                                          (uses the above)
    cli       the commands                                                      (uses everything)

``errors``, the plugin mechanism (``registry``, ``plugins``) are shared by all; the built-in
plugins (``symmetries/``, ``targets/``, ``architectures/``, ``methods/``) are mathematics and use only core and
analysis.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sesamo_bench

ROOT = Path(sesamo_bench.__file__).resolve().parent
REPO = ROOT.parent
SHARED = {"errors", "registry", "plugins"}
#: layer -> the layers it may import (besides itself and SHARED)
ALLOWED = {
    "core": set(),
    "analysis": {"core"},
    "harness": {"core", "analysis"},
    "outputs": {"core", "analysis", "harness"},
    "cli": {"core", "analysis", "harness", "outputs", "api"},
    "api": {"core", "analysis", "harness", "outputs"},
    "plugin": {"core", "analysis"},
    "errors": set(),
    "registry": set(),
    "__main__": {"cli"},  # python -m sesamo_bench: the command line
}
LAYERS = {"core", "analysis", "harness", "outputs", "cli"}


def _layer_of_file(path: Path) -> str:
    try:
        rel = path.relative_to(ROOT)
    except ValueError:
        return "plugin"  # symmetries/, targets/, architectures/, methods/ of the repository
    head = rel.parts[0]
    if head in {"symmetries", "targets", "architectures", "methods"}:
        return "plugin"
    if len(rel.parts) == 1:
        return rel.stem
    return head


def _imported(path: Path) -> set[str]:
    """The sesamo_bench sub-modules (first component below the package) a file imports."""
    rel_pkg = path.relative_to(ROOT).parts[:-1] if path.is_relative_to(ROOT) else None
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "sesamo_bench" and len(parts) > 1:
                    out.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "sesamo_bench":
                    continue
                names = parts[1:2] or [a.name for a in node.names]
            else:
                if rel_pkg is None:
                    continue
                base = list(rel_pkg[: len(rel_pkg) - (node.level - 1)])
                parts = base + ((node.module or "").split(".") if node.module else [])
                names = parts[:1] or [a.name for a in node.names]
            out.update(names)
    return out


def _files() -> list[Path]:
    files = sorted(ROOT.rglob("*.py"))
    for sub in ("symmetries", "targets", "architectures", "methods"):
        files += sorted((REPO / sub).glob("*.py")) if (REPO / sub).is_dir() else []
    return [f for f in files if "native" not in f.parts or f.name == "__init__.py"]


def _module_name(path: Path) -> str:
    try:
        return ".".join(path.relative_to(ROOT).with_suffix("").parts)
    except ValueError:
        return ".".join(path.relative_to(REPO).with_suffix("").parts)


FILES = _files()


def test_the_tree_shows_the_layers():
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").is_file(), layer
        assert (ROOT / layer / "__init__.py").read_text().lstrip().startswith(('r"""', '"""')), layer
    flat = {p.stem for p in ROOT.glob("*.py")}
    assert flat <= {"__init__", "__main__", "api", "errors", "registry", "plugins"}, flat


@pytest.mark.parametrize("path", FILES, ids=_module_name)
def test_imports_follow_the_layers(path):
    layer = _layer_of_file(path)
    if layer in ("__init__", "plugins"):
        return  # the facade and the registries (they name the plugin base classes)
    allowed = ALLOWED[layer] | {layer} | SHARED
    if layer in ("errors",):
        allowed = set()
    if layer == "registry":
        allowed = {"errors"}
    bad = {m for m in _imported(path) if (m in LAYERS or m in {"api"}) and m not in allowed}
    assert not bad, f"{_module_name(path)} ({layer}) imports {sorted(bad)}; {layer} may use {sorted(allowed)}"


def test_the_rule_would_catch_a_violation(tmp_path):
    # the checker itself: a core module importing the harness is reported
    fake = ROOT / "core" / "_layer_probe.py"
    try:
        fake.write_text("def f():\n    from ..harness import store\n")
        assert "harness" in _imported(fake)
        assert "harness" not in ALLOWED[_layer_of_file(fake)]
    finally:
        fake.unlink()


# ---------------------------------------------------------------------------------------------
# no import circles, inside a layer either (issue 28)
# ---------------------------------------------------------------------------------------------
def _modules_imported(path: Path, known: set[str]) -> set[str]:
    """The package modules (dotted names below sesamo_bench, as in :func:`_module_name`) that
    ``path`` imports, at the top or inside functions."""
    me = _module_name(path).split(".")
    pkg = me if path.name == "__init__.py" else me[:-1]
    if pkg and pkg[-1] == "__init__":
        pkg = pkg[:-1]
    out: set[str] = set()

    def add(parts: list[str], names: list[str]) -> None:
        for name in names:  # `from . import store` names a module; `from .store import X` the module
            if ".".join([*parts, name]) in known:
                out.add(".".join([*parts, name]))
        if ".".join(parts) in known:
            out.add(".".join(parts))

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "sesamo_bench":
                    add(parts[1:], [])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "sesamo_bench":
                    continue
                parts = parts[1:]
            else:
                if not path.is_relative_to(ROOT):
                    continue
                below = (node.module or "").split(".") if node.module else []
                parts = list(pkg[: len(pkg) - (node.level - 1)]) + below
            add(parts, [a.name for a in node.names])
    out.discard(".".join(me))
    return {m for m in out if not m.endswith("__init__")}


def _circles() -> list[list[str]]:
    known = {_module_name(p).removesuffix(".__init__") for p in FILES}
    graph = {_module_name(p).removesuffix(".__init__"): _modules_imported(p, known) for p in FILES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    # the package's facade (``sesamo_bench/__init__``) and ``plugins`` name what they hand on; a
    # package ``__init__`` importing its own modules is not a circle of the code
    assert _circles() == []


def test_the_circle_check_would_catch_one():
    a, b = ROOT / "harness" / "_circle_a.py", ROOT / "harness" / "_circle_b.py"
    FILES.extend([a, b])
    try:
        a.write_text("def f():\n    from . import _circle_b\n")
        b.write_text("from ._circle_a import f\n")
        assert ["harness._circle_a", "harness._circle_b"] in _circles()
    finally:
        FILES.remove(a)
        FILES.remove(b)
        a.unlink()
        b.unlink()

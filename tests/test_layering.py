"""The floors of docs/architecture.md, kept true: every import of a recsys module (deferred ones
inside functions included, found with ``ast``, not by importing) points down a floor, no two
packages on one floor import each other, and no two files import each other, directly or around
a longer loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recsys"

# floor of each top-level part of recsys; a module may import its own floor or lower ones.
# Floor 0 holds single modules (checked for cycles like every file); on the other floors the
# packages of one floor may not import each other.
FLOORS: dict[str, int] = {
    "recsys": 0, "errors": 0, "utils": 0, "schema": 0, "console": 0, "config_errors": 0,
    "checkpoint": 0, "metrics": 0,
    "data": 1,
    "features": 2,
    "models": 3,
    "retrieval": 4,   # tasks/ and retrieval/: one storey in the design, imported in one direction
    "tasks": 5,       # only (tasks.retrieval trains retrieval's two-tower model)
    "tuning": 6, "reports": 6,
    "commands": 7,
    "cli": 8,         # the console entry point: an alias of commands
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The recsys module ``name`` refers to (``recsys.a.b.Name`` -> ``recsys.a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int]]:
    """(imported recsys module, line) of every import statement in ``module``, at any depth."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                pkg = pkg if is_pkg else pkg[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]  # a submodule or a name in `base`
        for n in names:
            if n.split(".")[0] == "recsys":
                target = resolve(n)
                if target and target != module:
                    out.append((target, node.lineno))
    return out


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "recsys"


GRAPH = {m: imports(m) for m in MODULES}


def test_every_part_of_recsys_has_a_floor():
    assert sorted({part(m) for m in MODULES} - set(FLOORS)) == []


def test_no_import_points_up_a_floor_or_across_one():
    bad = []
    for m, targets in GRAPH.items():
        for t, line in targets:
            a, b = part(m), part(t)
            if a == b:
                continue
            if FLOORS[b] > FLOORS[a] or (FLOORS[b] == FLOORS[a] and FLOORS[a] > 0):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line} imports {t} "
                           f"(floor {FLOORS[a]} {a} -> floor {FLOORS[b]} {b})")
    assert bad == [], "\n".join(sorted(set(bad)))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_file_imports_itself_around_a_loop():
    graph = {m: {t for t, _ in targets} for m, targets in GRAPH.items()}
    assert _cycles(graph) == []


def test_no_two_packages_import_each_other():
    graph: dict[str, set[str]] = {}
    for m, targets in GRAPH.items():
        for t, _ in targets:
            if part(m) != part(t):
                graph.setdefault(part(m), set()).add(part(t))
    assert _cycles(graph) == []


def test_the_checker_sees_deferred_and_relative_imports(tmp_path, monkeypatch):
    """The scanner itself: an import inside a function and a relative import are both edges."""
    pkg = tmp_path / "recsys"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from recsys.tasks.x import y\n")
    (pkg / "data" / "b.py").write_text("from .a import f\n")
    (pkg / "tasks").mkdir()
    (pkg / "tasks" / "__init__.py").write_text("")
    (pkg / "tasks" / "x.py").write_text("y = 1\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "MODULES", {module_name(p): p for p in pkg.rglob("*.py")})
    assert imports("recsys.data.a") == [("recsys.tasks.x", 2)]
    assert imports("recsys.data.b") == [("recsys.data.a", 1)]


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_the_architecture_map_names_every_floor(doc):
    text = (ROOT / doc).read_text()
    for name in FLOORS:
        if name not in ("recsys", "cli"):
            assert f"{name}" in text, f"{doc} does not mention {name}"


def test_one_auc_implementation():
    """Every AUC recsys logs or reports comes from recsys.metrics: no module imports another
    library's AUC (torchmetrics' auroc, scikit-learn's roc_auc_score) or defines its own."""
    offenders = []
    for module, path in MODULES.items():
        if module == "recsys.metrics":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            else:
                continue
            offenders += [f"{module}:{node.lineno} {n}" for n in names
                          if "auroc" in n.lower() or "roc_auc" in n.lower().replace("recsys.metrics.roc_auc", "")]
    assert not offenders, offenders

"""Imports point down the layers (issue 23): no package imports one above it, lazily or not."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mkn"
# lowest first; data is a leaf beside models
LAYERS = ("models", "data", "attribution", "interventions", "runs", "localization",
          "experiments", "report", "jobs", "cli")


def package_imports() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the files, every ``from mkn.X`` counted,
    inside functions too."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        package = parts[0]
        if package == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mkn."):
                target = node.module.split(".")[1]
                if target != package:
                    found.setdefault((package, target), []).append(str(path.relative_to(SRC)))
    return found


def test_every_import_points_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = {pair: files for pair, files in package_imports().items()
              if pair[0] in rank and pair[1] in rank and rank[pair[1]] > rank[pair[0]]}
    assert not upward, upward
    assert set(rank) >= {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"
                         } | {"cli"}


def module_imports() -> dict[str, set[str]]:
    """Module -> the mkn modules it imports (``from mkn.a.b import c`` counts ``mkn.a.b.c``
    where that is a module, else ``mkn.a.b``), lazy imports included."""
    modules = {".".join(("mkn", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(
        ".__init__") for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("mkn", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(
            ".__init__")
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mkn"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
    return graph


def test_no_module_imports_itself_through_others():
    """No file cycle (e.g. generic.py <-> locate.py, issue 23), package __init__ files aside
    (they gather what is below them)."""
    graph = {m: {t for t in targets if t != m} for m, targets in module_imports().items()}
    packages = {m for m in graph if (SRC.parent / (m.replace(".", "/")) / "__init__.py").exists()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [t for t in graph[start] if t not in packages]
        while todo:
            node = todo.pop()
            if node in seen or node in packages or node not in graph:
                continue
            seen.add(node)
            todo += graph[node]
        return seen

    cycles = sorted(m for m in graph if m not in packages and m in reach(m))
    assert not cycles, cycles

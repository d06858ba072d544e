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

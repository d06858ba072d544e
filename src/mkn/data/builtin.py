"""The built-in default fact set shipped with the package (``mkn/data/builtin/facts.jsonl``).

Well-known geography facts (capitals, official languages, currencies, continents, cities) in 8
languages (en, zh, ja, ko, ru, fr, de, es), each with 2-3 natural templates per language, chosen
so that the default model (Gemma 3 270M) knows many of them; ``benchmarks/builtin_accuracy.py``
measures how many, and ``docs/DATA.md`` lists the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from mkn.data.schema import FactSet, read_facts, select


def builtin_path() -> Path:
    """Path of the shipped ``facts.jsonl``."""
    return Path(str(resources.files("mkn.data").joinpath("builtin", "facts.jsonl")))


def builtin_facts(languages: Sequence[str] | None = None, limit: int | None = None,
                  seed: int | None = None) -> FactSet:
    """The built-in facts, aligned across ``languages`` (default: all), in file order."""
    facts = read_facts(builtin_path())
    facts.source = "builtin"
    return select(facts, languages, limit, seed)

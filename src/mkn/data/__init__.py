"""Fact data: one schema, readers for mLAMA and BMLAMA layouts, and a built-in fact set.

>>> from mkn.data import load_facts
>>> facts = load_facts("mlama:paraphrased-mlama-6", languages=["en", "ja"], limit=20)
>>> facts[0].prompts("ja")          # [X] filled in, [Y] kept
>>> facts.skipped, facts.unaligned  # what reading left out (see docs/DATA.md)

See :mod:`mkn.data.schema` for the schema and ``docs/DATA.md`` for the sources.
"""

from mkn.data.bmlama import read_bmlama
from mkn.data.builtin import builtin_facts, builtin_path
from mkn.data.loader import DATA_ENV, data_root, load_facts, resolve_data_path
from mkn.data.mlama import read_mlama
from mkn.data.schema import (
    OBJECT,
    SUBJECT,
    DataError,
    Fact,
    FactLanguage,
    FactSet,
    Skipped,
    in_turn,
    read_facts,
    select,
    write_facts,
)

__all__ = ["DATA_ENV", "OBJECT", "SUBJECT", "DataError", "Fact", "FactLanguage", "FactSet",
           "Skipped", "builtin_facts", "builtin_path", "data_root", "in_turn", "load_facts",
           "read_bmlama", "read_facts", "read_mlama", "resolve_data_path", "select",
           "write_facts"]

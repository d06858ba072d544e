"""The report's page model (cells, tables, plots, texts, sections) and the formatting of
values in them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

REPORT_NAME = "report.html"
RUN_FILES = ("config.json", "summary.json", "mkn-run.json")  # not experiment results
MAX_ROWS = 300  # rows per table; the rest is counted in a note
MAX_NEURONS = 12  # neurons listed per table cell
MAX_PAIRS = 6  # degenerate pairs listed per table cell
DPI = 100
AGNOSTIC = "agnostic"
SOFT_AGNOSTIC = "agnostic-soft"


# ----------------------------------------------------------------------------- page model


@dataclass
class Cell:
    """A table cell: ``text`` (escaped), an optional second line ``sub``, a CSS class and a
    link (``href``, relative to the page)."""

    text: str
    cls: str = ""
    sub: str = ""
    href: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    row_classes: list[str] = field(default_factory=list)
    caption: str = ""
    kind: str = "table"


@dataclass
class Plot:
    title: str
    src: str  # data:image/png;base64,...
    caption: str = ""
    kind: str = "plot"


@dataclass
class Text:
    text: str
    cls: str = ""  # "note" for an omission or a problem
    kind: str = "text"


@dataclass
class Pre:
    summary: str
    text: str
    kind: str = "pre"


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)
    level: int = 2


# ----------------------------------------------------------------------------- formatting


def _fmt(value: Any) -> str:
    """A number or value as short text: 3 significant digits, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _pct(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else f"{part}/{whole}"


def _neuron(n: Sequence) -> str:
    return f"L{n[0]}:{n[1]}"


def _neuron_list(neurons: Sequence, limit: int = MAX_NEURONS) -> str:
    shown = " ".join(_neuron(n) for n in neurons[:limit])
    more = len(neurons) - limit
    return shown + (f" ... +{more} more" if more > 0 else "")


def _cells(values: Iterable) -> list[Cell]:
    return [v if isinstance(v, Cell) else Cell(_fmt(v)) for v in values]


def _capped(rows: list, what: str) -> tuple[list, list[Text]]:
    if len(rows) <= MAX_ROWS:
        return rows, []
    return rows[:MAX_ROWS], [Text(f"First {MAX_ROWS} of {len(rows)} {what} shown.", "note")]


def _number(value: Any) -> float:
    """``value`` as a float for a plot; missing values become NaN (no bar drawn)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)



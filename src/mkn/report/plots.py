"""The report's plots: matplotlib figures (Agg, no pyplot state) drawn with data-safe settings
and a font fallback for every script, returned as inline PNG :class:`Plot` blocks."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from mkn.report.blocks import DPI, Plot, _fmt, _number

# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float, ncols: int = 1):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# Fonts tried glyph by glyph (matplotlib's per-glyph fallback): Latin, Cyrillic and Greek from
# DejaVu, then the Noto families of the scripts in our data (Debian: fonts-noto-core,
# fonts-noto-cjk, which `make test` installs). Families not installed are left out.
FONT_FALLBACK = ("DejaVu Sans", "Noto Sans", "Noto Sans CJK JP", "Noto Sans Devanagari",
                 "Noto Sans Thai", "Noto Sans Arabic", "Noto Sans Hebrew")


@functools.cache
def font_families() -> tuple[str, ...]:
    """The families of :data:`FONT_FALLBACK` that are installed (fonts installed after
    matplotlib built its font cache are registered here)."""
    from matplotlib import font_manager

    def installed() -> set[str]:
        return {font.name for font in font_manager.fontManager.ttflist}

    if not set(FONT_FALLBACK) <= installed():
        for path in font_manager.findSystemFonts():
            name = Path(path).name
            if name.startswith(("NotoSans-", "NotoSansCJK-", "NotoSansDevanagari-",
                                "NotoSansThai-", "NotoSansArabic-", "NotoSansHebrew-")):
                with contextlib.suppress(Exception):  # a font file matplotlib cannot read
                    font_manager.fontManager.addfont(path)
    return tuple(f for f in FONT_FALLBACK if f in installed())


def _colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _grouped_bars(ax, groups: Sequence[str], series: dict[str, Sequence], ylabel: str,
                  title: str, annotate: bool = True, errors: dict | None = None,
                  unit_range: bool = False, emphasis: str | None = None,
                  log: bool = False, changes: bool = False) -> None:
    """Bars of every series side by side in each group; missing values are marked n/a.

    ``errors`` maps a series to its ``[lower, upper]`` error lengths; ``unit_range`` fixes the
    y axis to [0, 1] (rates); ``log`` draws positive values (probabilities, ratios spanning
    orders of magnitude) on a log axis; ``changes`` (relative changes, from -1 up to any size)
    switches to a symmetric log axis, linear within [-1, 1], when some change exceeds 10 (x11)
    so that a 14,000% bar does not flatten the others; the series named ``emphasis`` is drawn
    dark. The legend is the figure's (see :func:`_legend`).
    """
    n = max(len(series), 1)
    width = 0.8 / n
    colors = _colors(n)
    if emphasis in series:
        colors[list(series).index(emphasis)] = "0.2"
    tops = []
    for k, (name, values) in enumerate(series.items()):
        xs = [g + (k - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [_number(v) for v in values]
        yerr = errors.get(name) if errors else None
        upper = list(yerr[1]) if yerr is not None else [0.0] * len(ys)
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width, label=str(name),
               color=colors[k], yerr=yerr, capsize=3 if yerr is not None else 0)
        for x, y, up in zip(xs, ys, upper, strict=True):
            if math.isnan(y):
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            top = y + up if y >= 0 else y
            tops.append(top)
            if annotate and len(groups) * n <= 24:
                ax.text(x, top, f"{y:.2g}", ha="center", va="bottom" if y >= 0 else "top",
                        fontsize=7)
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="0.3", linewidth=0.8)
    if log and tops and min(tops) > 0:
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
    elif changes and tops and max(abs(t) for t in tops) > 10:
        ax.set_yscale("symlog", linthresh=1.0)
        _plain_ticks(ax.yaxis)
        ax.set_ylabel(f"{ylabel} (symmetric log scale)")
    elif unit_range:
        ax.set_ylim(0, 1.1)
    elif tops:
        low, high = min(min(tops), 0), max(max(tops), 0)
        span = (high - low) or 1.0
        ax.set_ylim(low - 0.1 * span * (low < 0), high + 0.1 * span)
    ax.grid(axis="y", alpha=0.3)


def _plain_ticks(axis) -> None:
    """Tick labels as plain numbers (10, 0.01, 1e+06): matplotlib's log formatters emit
    mathtext (``$\\mathdefault{10^{1}}$``), which the reports' data-safe settings
    (``text.parse_math`` off) would show as raw text."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend(fig: Figure, ax) -> None:
    """One legend for the whole figure, below the plots (never over the bars)."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) > 1:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
                   fontsize=8, frameon=False)


def _with_rc(make: Callable[..., Any]) -> Callable[..., Any]:
    """Draw with data-safe settings: no mathtext parsing of labels such as ``$x$``."""
    def wrapped(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False, "font.size": 9,
                                    "font.family": list(font_families()) or ["sans-serif"]}):
            return make(*args, **kwargs)
    wrapped.__name__ = make.__name__
    wrapped.__doc__ = make.__doc__
    return wrapped


@_with_rc
def plot_layers(per_language: dict[str, dict]) -> Plot:
    """Knowledge neurons per layer, one line per language (summed over the facts)."""
    fig, (ax,) = _figure(10.5, 3.8)
    languages = list(per_language)
    for lang, color in zip(languages, _colors(len(languages)), strict=True):
        histogram = per_language[lang].get("layer_histogram") or []
        facts = per_language[lang].get("facts", "?")
        ax.plot(range(len(histogram)), histogram, marker="o", markersize=4, color=color,
                label=f"{lang} ({facts} facts)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("layer")
    ax.set_ylabel("knowledge neurons (sum over facts)")
    ax.set_title("Knowledge neurons by layer and language")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if languages:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot("Knowledge neurons by layer", _png(fig),
                "Number of knowledge neurons in each layer, summed over the facts of each "
                "language.")


@_with_rc
def plot_overlap(overlap: dict[str, dict[str, float]]) -> Plot:
    """Language x language heatmap of the mean Jaccard overlap of knowledge-neuron sets."""
    languages = list(overlap)
    size = min(6.5, max(3.5, 0.5 * len(languages) + 2.5))
    fig, (ax,) = _figure(size + 1.2, size)
    values = [[_number(overlap[a].get(b)) for b in languages] for a in languages]
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, "n/a" if math.isnan(value) else f"{value:.2f}", ha="center",
                    va="center", fontsize=8, color="black" if value > 0.6 else "white")
    ax.set_xticks(range(len(languages)), languages)
    ax.set_yticks(range(len(languages)), languages)
    ax.set_xlabel("language")
    ax.set_ylabel("language")
    ax.set_title("Overlap of knowledge neurons (mean Jaccard over facts)")
    fig.colorbar(image, ax=ax, label="mean Jaccard index", shrink=0.85)
    return Plot("Cross-language overlap", _png(fig),
                "Jaccard index of the knowledge-neuron sets of two languages, averaged over the "
                "facts located in both.")


@_with_rc
def plot_agnostic(histogram: Sequence[int], soft_histogram: Sequence[int],
                  soft_fraction: float | None) -> Plot:
    """Layer histogram of language-agnostic neurons and of the soft version."""
    fig, (ax,) = _figure(10.5, 3.6)
    soft = ("soft (in at least a fraction "
            f"{_fmt(soft_fraction)} of the languages)" if soft_fraction is not None
            else "soft (in a fraction of the languages)")
    layers = [str(i) for i in range(max(len(histogram), len(soft_histogram)))]
    _grouped_bars(ax, layers, {"language-agnostic (in every language)": list(histogram),
                               soft: list(soft_histogram)},
                  "neurons (sum over facts)", "Language-agnostic neurons by layer",
                  annotate=False)
    ax.set_xlabel("layer")
    _legend(fig, ax)
    return Plot("Language-agnostic neurons by layer", _png(fig),
                "Neurons that are knowledge neurons of a fact in every language (and, soft, in "
                "enough of them), counted per layer over the facts.")



def curve_medians(items: list[dict], method: str, sizes: Sequence[int], mode: str, key: str,
                  language: str | None = None) -> list[float | None]:
    """Median of ``key`` (selectivity, specificity) over items at each size."""
    out = []
    for k in sizes:
        values = [i["curves"][method][str(k)][mode][key] for i in items
                  if (language is None or i["language"] == language)
                  and str(k) in i["curves"].get(method, {})
                  and i["curves"][method][str(k)][mode][key] is not None]
        out.append(statistics.median(values) if values else None)
    return out


def _log_sizes(ax, sizes: Sequence[int]) -> None:
    """A log x axis labelled with the sizes themselves (no minor tick labels)."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(list(sizes), [str(k) for k in sizes])


@_with_rc
def plot_size_curves(result: dict, key: str = "selectivity", mode: str = "suppress") -> Plot:
    """Median ``key`` of the top-k sets against k (log axis), one line per method, one panel
    for all languages and one per language."""
    items, sizes, methods = result["items"], result["sizes"], result["methods"]
    languages = sorted({i["language"] for i in items})
    panels = [None, *languages]
    fig, axes = _figure(3.2 * len(panels) + 1, 3.4, ncols=len(panels))
    for ax, language in zip(axes, panels, strict=True):
        for color, method in zip(_colors(len(methods)), methods, strict=True):
            ys = curve_medians(items, method, sizes, mode, key, language)
            xs = [k for k, y in zip(sizes, ys, strict=True) if y is not None]
            ax.plot(xs, [y for y in ys if y is not None], marker="o", label=method,
                    color="0.5" if method == "random" else color,
                    linestyle="--" if method == "random" else "-")
        _log_sizes(ax, sizes)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xlabel("k (top-k neurons)")
        ax.set_title("all languages" if language is None else language)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"median {key} ({mode})")
    _legend(fig, axes[0])
    return Plot(f"Methods at equal size: {key} ({mode})", _png(fig),
                f"Median {key} of the top-k neurons of each method when they are {mode}ed "
                "(x0/x2), against k; 'random' is a random ranking. Higher is better; methods "
                "are compared at the same k.")




CONTROL_SERIES = (("effect", "the set"), ("random_effect", "random set (same layers)"),
                  ("matched_effect", "magnitude-matched set"),
                  ("unrelated_effect", "unrelated facts (other relations)"),
                  ("same_relation_effect", "same-relation facts"))


@_with_rc
def plot_controls(rows: Sequence[tuple[str, str, dict]], first: str) -> Plot:
    """Each effect beside its controls: one group per ``(label, intervention, control
    summary)`` row (:func:`mkn.experiments.common.control_summary`), a bar per control the
    experiment measured, with its 95% interval over facts; a group resting on fewer than 5
    facts is marked "(! n facts)"."""
    from mkn.experiments.common import few_facts

    keys = [(key, name) for key, name in CONTROL_SERIES
            if any((summary.get(key) or {}).get("value") is not None for *_, summary in rows)]
    groups = []
    for label, mode, summary in rows:
        facts = (summary.get("effect") or {}).get("facts")
        groups.append(f"{label}\n{mode}{few_facts(facts)}")
    series, errors = {}, {}
    for key, name in keys:
        values, low, high = [], [], []
        for *_, summary in rows:
            entry = summary.get(key) or {}
            value, ci = entry.get("value"), entry.get("ci95")
            values.append(value)
            low.append(max(value - ci[0], 0) if value is not None and ci else 0)
            high.append(max(ci[1] - value, 0) if value is not None and ci else 0)
        series[name], errors[name] = values, [low, high]
    fig, axes = _figure(max(5.0, 1.6 * len(rows) + 2), 3.8)
    _grouped_bars(axes[0], groups, series, "median relative change of p(gold)",
                  "Effect beside its controls (95% CI over facts)", annotate=False,
                  errors=errors, emphasis="the set", changes=True)
    axes[0].set_xlabel(first)
    _legend(fig, axes[0])
    return Plot("Effect beside its controls", _png(fig),
                "The set's median relative change of p(gold) beside the same change for random "
                "sets of its shape, magnitude-matched sets and the facts it should leave alone, "
                "where the experiment measured them; an effect is a result only where it stands "
                "clear of its controls.")

"""One self-contained HTML page summing up a run directory.

:func:`write_report` reads what a run directory holds and writes one HTML file:

- the run's configuration (``config.json``: model, data, languages, method, steps, seed, limit)
  and its cost (``timings.jsonl``: seconds per fact and language);
- from ``mkn locate`` records (``neurons.jsonl``, ``language_agnostic.jsonl``,
  ``degenerate.jsonl``, ``summary.json``): knowledge neurons per layer and language, the
  language x language overlap (mean Jaccard), the layer histogram of language-agnostic (and soft)
  neurons, a table of facts (the ones the model gets wrong are marked), of language-agnostic
  neurons per fact and of degenerate neuron pairs per fact and language;
- what the model knows (``knowledge.jsonl``): items probed, located and skipped per language;
- from ``mkn experiment`` results (``*.json`` in the directory or in ``experiments/``): one
  section per experiment with before/after bar charts and the numbers, every effect beside its
  controls (a random set of the same size per layer, unrelated facts of other relations:
  selectivity and specificity with 95% intervals).

Whatever is missing is left out with a short note; a file that cannot be read is named in a note
and never stops the report. Plots are PNG from matplotlib (``Figure`` objects, Agg, no pyplot
state) inlined as ``data:`` URIs; the page has no script and loads nothing from elsewhere. Every
text that comes from the data is HTML-escaped (jinja2 with autoescaping on).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
from matplotlib.figure import Figure

from mkn.experiments.common import CONTROL_HEADER, control_row, fmt_ci, knowledge_line
from mkn.localization.stats import knowledge_counts, localization_stats
from mkn.report.pages import PAGES, fact_href
from mkn.runs.directory import write_atomic
from mkn.runs.store import read_jsonl

REPORT_NAME = "report.html"
EXPERIMENTS = ("localization-quality", "size-curves", "shared-sets", "cross-lingual-editing",
               "fact-checking", "enhancement", "injection", "audits")
RUN_FILES = ("config.json", "summary.json")
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
                  log: bool = False) -> None:
    """Bars of every series side by side in each group; missing values are marked n/a.

    ``errors`` maps a series to its ``[lower, upper]`` error lengths; ``unit_range`` fixes the
    y axis to [0, 1] (rates); ``log`` draws positive values (probabilities, ratios spanning
    orders of magnitude) on a log axis; the series named ``emphasis`` is drawn dark. The legend
    is the figure's (see :func:`_legend`).
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
    elif unit_range:
        ax.set_ylim(0, 1.1)
    elif tops:
        low, high = min(min(tops), 0), max(max(tops), 0)
        span = (high - low) or 1.0
        ax.set_ylim(low - 0.1 * span * (low < 0), high + 0.1 * span)
    ax.grid(axis="y", alpha=0.3)


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


# ----------------------------------------------------------------------------- run data


@dataclass
class Experiment:
    path: str  # relative to the run directory
    setup: dict
    result: dict

    @property
    def name(self) -> str:
        return str(self.setup.get("experiment", "unknown"))


@dataclass
class RunData:
    directory: Path
    config: dict | None = None
    neurons: list[dict] = field(default_factory=list)
    agnostic: list[dict] = field(default_factory=list)
    degenerate: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    knowledge: list[dict] = field(default_factory=list)
    summary: dict | None = None
    summary_note: str = ""
    experiments: list[Experiment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def has_locate(self) -> bool:
        return bool(self.neurons or self.agnostic or self.degenerate)


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path.name}: could not be read ({error})")
        return None


def _read_records(directory: Path, name: str, done: set[str] | None,
                  problems: list[str]) -> list[dict]:
    path = directory / f"{name}.jsonl"
    try:
        records = read_jsonl(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problems.append(f"{path.name}: could not be read ({error})")
        return []
    bad = [r for r in records if not isinstance(r, dict)]
    if bad:
        problems.append(f"{path.name}: {len(bad)} records are not JSON objects (ignored)")
    records = [r for r in records if isinstance(r, dict)]
    if done is not None:  # records of a unit not marked done belong to an interrupted fact
        unfinished = [r for r in records if "unit" in r and r["unit"] not in done]
        if unfinished:
            problems.append(f"{path.name}: {len(unfinished)} records of unfinished facts "
                            "(interrupted run) left out")
        records = [r for r in records if not ("unit" in r and r["unit"] not in done)]
    return records


def _n_layers(data: RunData) -> int:
    configured = (data.config or {}).get("n_layers")
    if isinstance(configured, int) and configured > 0:
        return configured
    layers = [int(n[0]) for r in data.neurons for n in r.get("neurons", [])]
    layers += [int(n[0]) for r in data.agnostic
               for key in ("neurons", "soft_neurons") for n in r.get(key, [])]
    return 1 + max(layers, default=0)


def load_run(run_dir: Path) -> RunData:
    """Everything the report uses from ``run_dir``; unreadable parts become ``problems``."""
    directory = Path(run_dir)
    data = RunData(directory)
    problems = data.problems
    if (directory / "config.json").exists():
        config = _read_json(directory / "config.json", problems)
        data.config = config if isinstance(config, dict) else None
    done = None
    if (directory / "done.jsonl").exists():
        done = {r.get("unit") for r in _read_records(directory, "done", None, problems)}
    data.neurons = _read_records(directory, "neurons", done, problems)
    data.agnostic = _read_records(directory, "language_agnostic", done, problems)
    data.degenerate = _read_records(directory, "degenerate", done, problems)
    data.timings = _read_records(directory, "timings", done, problems)
    data.knowledge = _read_records(directory, "knowledge", done, problems)
    summary_path = directory / "summary.json"
    if summary_path.exists():
        summary = _read_json(summary_path, problems)
        if isinstance(summary, dict):
            data.summary = summary
    facts = {r.get("fact_id") for r in data.neurons}
    if data.summary is not None and data.neurons and data.summary.get("facts") != len(facts):
        data.summary_note = (f"summary.json counts {data.summary.get('facts')} facts but the "
                             f"records hold {len(facts)}: statistics recomputed from the records.")
        data.summary = None
    elif data.summary is None and data.neurons:
        data.summary_note = "No summary.json: statistics computed from the records."
    if data.summary is None and data.neurons:
        try:
            data.summary = localization_stats(data.neurons, data.agnostic, data.degenerate,
                                              _n_layers(data), data.timings, data.knowledge)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            problems.append(f"statistics could not be computed from the records ({error!r})")
    data.experiments = _load_experiments(directory, problems)
    return data


def _load_experiments(directory: Path, problems: list[str]) -> list[Experiment]:
    experiments = []
    for folder in (directory, directory / "experiments"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if folder == directory and path.name in RUN_FILES:
                continue
            content = _read_json(path, problems)
            relative = str(path.relative_to(directory))
            if not (isinstance(content, dict) and isinstance(content.get("setup"), dict)
                    and isinstance(content.get("result"), dict)):
                if content is not None:
                    problems.append(f"{relative}: not an experiment result (no setup/result), "
                                    "ignored")
                continue
            experiments.append(Experiment(relative, content["setup"], content["result"]))
    order = {name: i for i, name in enumerate(EXPERIMENTS)}
    return sorted(experiments, key=lambda e: (order.get(e.name, len(order)), e.path))


# ----------------------------------------------------------------------------- sections


def _config_section(data: RunData) -> Section:
    section = Section("config", "Run configuration")
    config = data.config
    if config is None:
        section.blocks.append(Text("No config.json in this directory.", "note"))
        return section
    locate = config.get("locate") if isinstance(config.get("locate"), dict) else {}
    languages = config.get("languages")
    rows = [
        ("model", config.get("model")),
        ("data", config.get("data")),
        ("languages", ", ".join(map(str, languages)) if isinstance(languages, list)
         else languages),
        ("method", locate.get("method", config.get("method"))),
        ("integration steps", locate.get("steps", config.get("steps"))),
        ("seed", config.get("seed")),
        ("limit", config.get("limit")),
        ("facts", config.get("facts")),
        ("dtype", config.get("dtype")),
        ("backend", config.get("backend")),
        ("thresholds", json.dumps(locate["thresholds"], ensure_ascii=False)
         if locate.get("thresholds") else None),
        ("degenerate neurons", locate.get("degenerate")),
        ("skipped data records", len(config["skipped"]) if isinstance(config.get("skipped"),
                                                                      list) else None),
    ]
    section.blocks.append(Table(["setting", "value"],
                                [_cells([k, v]) for k, v in rows if v is not None]))
    section.blocks.append(Pre("full config.json", json.dumps(config, indent=2,
                                                             ensure_ascii=False)))
    return section


def _known_by_fact(data: RunData) -> dict[str, dict[str, bool]]:
    known: dict[str, dict[str, bool]] = defaultdict(dict)
    for record in data.neurons:
        known[str(record.get("fact_id"))][str(record.get("language"))] = bool(
            record.get("known"))
    return known


def _overview_section(data: RunData) -> Section:
    section = Section("overview", "Overview and cost")
    summary = data.summary
    if data.summary_note:
        section.blocks.append(Text(data.summary_note, "note"))
    if summary is None:
        section.blocks.append(Text("No localization records (neurons.jsonl) in this directory: "
                                   "nothing was located here.", "note"))
    else:
        agnostic = summary.get("language_agnostic", {})
        degenerate = summary.get("degenerate", {})
        facts = summary.get("facts", 0)
        section.blocks.append(Text(
            f"{facts} facts in {len(summary.get('per_language', {}))} languages. "
            f"Language-agnostic neurons: {_pct(agnostic.get('facts_with_any', 0), facts)} facts "
            f"have some (mean {_fmt(agnostic.get('mean_neurons'))} per fact, soft "
            f"{_fmt(agnostic.get('mean_soft_neurons'))}). Degenerate pairs in "
            f"{_pct(degenerate.get('with_pairs', 0), degenerate.get('records', 0))} "
            f"fact-languages (mean {_fmt(degenerate.get('mean_pairs'))} pairs)."))
        seconds: dict[str, list[float]] = defaultdict(list)
        for t in data.timings:
            if isinstance(t.get("seconds"), int | float):
                seconds[str(t.get("language"))].append(float(t["seconds"]))
        rows = []
        for lang, s in summary.get("per_language", {}).items():
            secs = seconds.get(lang, [])
            rows.append(_cells([lang, s.get("facts"),
                                _pct(s.get("known", 0), s.get("facts", 0)),
                                s.get("mean_neurons"),
                                statistics.fmean(secs) if secs else None]))
        section.blocks.append(Table(["language", "facts", "known by the model",
                                     "mean knowledge neurons", "mean seconds / fact"], rows,
                                    caption="Per language"))
        section.blocks += _knowledge_blocks(data)
    all_seconds = [float(t["seconds"]) for t in data.timings
                   if isinstance(t.get("seconds"), int | float)]
    if all_seconds:
        section.blocks.append(Table(
            ["fact-language pairs", "mean seconds", "median seconds", "max seconds",
             "total"],
            [_cells([len(all_seconds), statistics.fmean(all_seconds),
                     statistics.median(all_seconds), max(all_seconds),
                     _duration(sum(all_seconds))])],
            caption="Cost: seconds per fact and language (timings.jsonl)"))
    elif data.has_locate:
        section.blocks.append(Text("No timings.jsonl: cost unknown.", "note"))
    return section


def _knowledge_blocks(data: RunData) -> list:
    """What the model knows: items probed, located and skipped per language."""
    counts = knowledge_counts(data.knowledge)
    if not counts:
        return [Text("No knowledge.jsonl: this run does not say which items the model knows.",
                     "note")]
    criterion = ((data.config or {}).get("locate") or {}).get("known", "auto")
    rows = [_cells([lang, c["items"], c["located"], c["skipped"]])
            for lang, c in counts.items()]
    return [Table(["language", "items probed", "located (known)", "skipped (not known)"], rows,
                  caption=f"Only knowledge the model has: items known by {criterion} are "
                          "located, the others are skipped and counted here")]


def _controls_table(rows: Iterable[tuple[str, str, dict]], first: str) -> Table:
    """Effects beside their controls: (label, intervention, control summary) rows."""
    return Table([first, *CONTROL_HEADER],
                 [_cells([label, *control_row(mode, summary)]) for label, mode, summary in rows],
                 caption="Effect beside its controls: a random set of the same size per layer, "
                         "unrelated facts of other relations (relative change of p(gold); "
                         "selectivity = effect - random, specificity = effect - unrelated, "
                         "oriented so that higher is better)")


def _knowledge_text(result: dict, rest: str = "the others are not measured") -> list:
    knowledge = result.get("knowledge")
    return [Text(knowledge_line(knowledge, rest))] if isinstance(knowledge, dict) else []


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _neurons_section(data: RunData) -> Section | None:
    summary = data.summary
    if summary is None:
        return None
    section = Section("neurons", "Knowledge neurons")
    per_language = summary.get("per_language") or {}
    if per_language:
        section.blocks.append(plot_layers(per_language))
    overlap = summary.get("overlap_jaccard") or {}
    if len(overlap) >= 2:
        section.blocks.append(plot_overlap(overlap))
    else:
        section.blocks.append(Text("One language only: no cross-language overlap.", "note"))
    section.blocks += _facts_table(data)
    section.blocks.append(Table(["pages"], [[Cell("every neuron of the run: the facts, "
                                                  "relations and languages it serves",
                                                  href=f"{PAGES}/neurons.html")]]))
    return section


def _facts_table(data: RunData) -> list:
    by_fact: dict[str, dict[str, dict]] = defaultdict(dict)
    relation: dict[str, str] = {}
    for record in data.neurons:
        fact = str(record.get("fact_id"))
        by_fact[fact][str(record.get("language"))] = record
        relation[fact] = str(record.get("relation", ""))
    languages = sorted({lang for langs in by_fact.values() for lang in langs})
    rows, classes = [], []
    for fact, langs in by_fact.items():
        wrong = [lang for lang, r in langs.items() if not r.get("known")]
        cells = [Cell(fact, sub="wrong in " + ", ".join(wrong) if wrong else "",
                      href=fact_href(fact)), Cell(relation[fact])]
        for lang in languages:
            r = langs.get(lang)
            if r is None:
                cells.append(Cell("-"))
                continue
            probs = [p for p in r.get("probs", []) if isinstance(p, int | float)]
            known = bool(r.get("known"))
            cells.append(Cell(("known: " if known else "wrong: ") + str(r.get("target", "")),
                              "" if known else "bad",
                              f"p(gold) {_fmt(statistics.fmean(probs)) if probs else '-'}, "
                              f"{len(r.get('neurons', []))} neurons"))
        rows.append(cells)
        classes.append("wrong" if wrong else "")
    shown, notes = _capped(rows, "facts")
    return [Table(["fact", "relation", *languages], shown, classes[:len(shown)],
                  caption="Facts: the gold object per language, whether the model predicts it "
                          "(greedy, on more than half of the queries), mean p(gold) and the "
                          "number of knowledge neurons. Rows of facts the model gets wrong in "
                          "some language are marked."), *notes]


def _agnostic_section(data: RunData) -> Section | None:
    if not data.agnostic and data.summary is None:
        return None
    section = Section("agnostic", "Language-agnostic neurons")
    summary = (data.summary or {}).get("language_agnostic") or {}
    histogram = summary.get("layer_histogram") or []
    soft = summary.get("soft_layer_histogram") or []
    fractions = {r.get("soft_fraction") for r in data.agnostic}
    if any(histogram) or any(soft):
        section.blocks.append(plot_agnostic(histogram, soft,
                                            fractions.pop() if len(fractions) == 1 else None))
    else:
        section.blocks.append(Text("No language-agnostic neuron in any fact.", "note"))
    if not data.agnostic:
        section.blocks.append(Text("No language_agnostic.jsonl: no table per fact.", "note"))
        return section
    rows, classes = [], []
    for r in data.agnostic:
        languages = [str(x) for x in r.get("languages", [])]
        known = [str(x) for x in r.get("known_in", [])]
        wrong = [lang for lang in languages if lang not in known]
        neurons = r.get("neurons", [])
        rows.append([Cell(str(r.get("fact_id")), sub="wrong in " + ", ".join(wrong)
                          if wrong else ""),
                     Cell(str(r.get("relation", ""))),
                     Cell(", ".join(known) or "none", "" if not wrong else "bad"),
                     Cell(str(len(neurons))), Cell(str(len(r.get("soft_neurons", [])))),
                     Cell(_neuron_list(neurons) if neurons else "-", "mono")])
        classes.append("wrong" if wrong else "")
    shown, notes = _capped(rows, "facts")
    section.blocks.append(Table(
        ["fact", "relation", "known in", "agnostic", "soft", "language-agnostic neurons "
         "(layer:index)"], shown, classes[:len(shown)],
        caption="Per fact: neurons that are knowledge neurons in every language (and how many "
                "in the soft version). Facts the model gets wrong in some language are marked."))
    section.blocks += notes
    return section


def _degenerate_section(data: RunData) -> Section | None:
    if not data.degenerate:
        if data.has_locate:
            return Section("degenerate", "Degenerate neurons",
                           [Text("No degenerate.jsonl records (search disabled or no data).",
                                 "note")])
        return None
    section = Section("degenerate", "Degenerate neurons")
    known = _known_by_fact(data)
    rows, classes = [], []
    for r in data.degenerate:
        fact, lang = str(r.get("fact_id")), str(r.get("language"))
        is_known = known.get(fact, {}).get(lang)
        pairs = r.get("pairs", [])
        listed = "; ".join(f"({_neuron(a)}, {_neuron(b)})" for a, b in pairs[:MAX_PAIRS])
        if len(pairs) > MAX_PAIRS:
            listed += f" ... +{len(pairs) - MAX_PAIRS} more"
        rows.append([Cell(fact), Cell(lang),
                     Cell("?" if is_known is None else ("yes" if is_known else "no (wrong)"),
                          "bad" if is_known is False else ""),
                     Cell(str(len(r.get("candidates", [])))),
                     Cell(str(len(r.get("potential", [])))), Cell(str(len(pairs))),
                     Cell(listed or "-", "mono")])
        classes.append("wrong" if is_known is False else "")
    shown, notes = _capped(rows, "fact-languages")
    section.blocks.append(Table(
        ["fact", "language", "known", "candidates", "potential", "pairs",
         "degenerate pairs (layer:index)"], shown, classes[:len(shown)],
        caption="Per fact and language: candidate neurons searched, potential degenerate "
                "neurons, and the pairs found (AMIG Algorithm 1). Rows where the model gets "
                "the fact wrong are marked."))
    section.blocks += notes
    return section


# ----------------------------------------------------------------------------- experiments


def _setup_text(setup: dict) -> str:
    facts = setup.get("facts")
    parts = [f"model {_fmt(setup.get('model'))}", f"data {_fmt(setup.get('data'))}",
             f"languages {_fmt(setup.get('languages'))}",
             f"{len(facts) if isinstance(facts, list) else '?'} facts "
             f"(limit {_fmt(setup.get('limit'))})", f"seed {_fmt(setup.get('seed'))}",
             f"method {_fmt(setup.get('method'))}", f"{_fmt(setup.get('steps'))} steps"]
    if setup.get("date"):
        parts.append(f"run {setup['date']}")
    return "Setup: " + ", ".join(parts) + "."


@_with_rc
def _localization_quality(result: dict) -> list:
    summary = result["summary"]
    methods = [m for m, s in summary.items() if isinstance(s, dict)]
    fig, axes = _figure(11, 3.8, ncols=2)
    medians = [summary[m].get("median_sr") for m in methods]
    low, high = [], []
    for m, med in zip(methods, medians, strict=True):
        ci = summary[m].get("median_sr_ci95")
        ok = ci is not None and med is not None
        low.append(max(med - ci[0], 0) if ok else 0)
        high.append(max(ci[1] - med, 0) if ok else 0)
    _grouped_bars(axes[0], methods, {"median SR": medians}, "success ratio (SR, AMIG Eq. 11)",
                  "Median SR per method (95% bootstrap CI)",
                  errors={"median SR": [low, high]})
    positive = [v for v in medians if isinstance(v, int | float) and v > 0]
    if positive and max(positive) > 50 * min(positive):
        axes[0].set_yscale("log")
    axes[0].set_xlabel("method")
    _grouped_bars(axes[1], methods, {
        "suppress (x0)": [summary[m].get("median_suppress_related") for m in methods],
        "enhance (x2)": [summary[m].get("median_enhance_related") for m in methods]},
        "median relative change of p(gold)", "Related queries: suppress / enhance")
    axes[1].set_xlabel("method")
    _legend(fig, axes[1])
    rows = []
    for m in methods:
        s = summary[m]
        ci = s.get("median_sr_ci95")
        rows.append(_cells([m, s.get("items"), s.get("without_neurons"),
                            s.get("median_neurons"), s.get("median_sr"),
                            f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else None, s.get("mean_sr"),
                            s.get("median_suppress_related"), s.get("median_enhance_related"),
                            s.get("win_share")]))
    controls = [(m, mode, summary[m]["controls"][mode]) for m in methods
                if "controls" in summary[m] for mode in ("suppress", "enhance")]
    return [Plot("Localization quality", _png(fig),
                 "SR = |d_rel/d_unrel| (enhance) + |d_rel/d_unrel| (suppress): higher means the "
                 "neurons move their fact more than an unrelated one."),
            Table(["method", "items", "no neurons", "median #neurons", "median SR", "95% CI",
                   "mean SR", "median d_rel suppress", "median d_rel enhance",
                   f"win share (of {_fmt(summary.get('compared_items'))})"], rows),
            *([_controls_table(controls, "method")] if controls else []),
            *_knowledge_text(result)]


@_with_rc
def _cross_lingual_editing(result: dict) -> list:
    summary = result["summary"]
    sources = [s for s, v in summary.items() if isinstance(v, dict)]
    targets = list(next((v.get("suppress") or {} for v in summary.values()
                         if isinstance(v, dict)), {}))
    named = {AGNOSTIC: "language-agnostic" + (" (soft)" if result.get("soft") else ""),
             SOFT_AGNOSTIC: "language-agnostic (soft)"}
    labels = {s: named.get(s, f"{s} neurons") for s in sources}
    fig, axes = _figure(11, 4, ncols=2)
    for ax, mode, title in ((axes[0], "suppress", "Suppress (x0)"),
                            (axes[1], "enhance", "Enhance (x2)")):
        _grouped_bars(ax, targets, {labels[s]: [(summary[s].get(mode) or {}).get(t)
                                                for t in targets] for s in sources},
                      "median relative change of p(gold)", f"{title}: change per language",
                      emphasis=labels.get(AGNOSTIC))
        ax.set_xlabel("language of the queries")
    _legend(fig, axes[0])
    rows = []
    for s in sources:
        for mode in ("suppress", "enhance"):
            v = summary[s]
            rows.append(_cells([labels[s], mode,
                                f"{_fmt(v.get('facts', 0) - v.get('without_neurons', 0))}/"
                                f"{_fmt(v.get('facts'))}",
                                *[(v.get(mode) or {}).get(t) for t in targets]]))
    return [Plot("Cross-lingual editing", _png(fig),
                 "Median relative change of p(gold) in each language when one neuron set is "
                 "suppressed or enhanced: language-agnostic neurons should move every language, "
                 "one language's neurons mostly that language."),
            Table(["neurons of", "intervention", "facts with neurons",
                   *[f"d p(gold) {t}" for t in targets]], rows),
            *([_controls_table([(labels[s], mode, summary[s]["controls"][mode])
                                for s in sources for mode in ("suppress", "enhance")],
                               "neurons of")]
              if all("controls" in summary[s] for s in sources) else []),
            *_knowledge_text(result)]


@_with_rc
def _fact_checking(result: dict) -> list:
    summary = result["summary"]
    scopes = [s for s, v in summary.items() if isinstance(v, dict)]
    judges = {"degenerate_neurons": "degenerate-neuron judge",
              "random_neurons": "random-neuron judge (control)", "model_judge": "model judge"}
    judges = {j: label for j, label in judges.items()
              if any(j in summary[s] for s in summary if isinstance(summary[s], dict))}
    fig, axes = _figure(12, 3.8, ncols=3)
    for ax, metric in zip(axes, ("precision", "recall", "f1"), strict=True):
        _grouped_bars(ax, scopes, {label: [(summary[s].get(j) or {}).get(metric)
                                           for s in scopes] for j, label in judges.items()},
                      metric if metric != "f1" else "F1", f"{metric.capitalize()}"
                      if metric != "f1" else "F1", unit_range=True)
        ax.set_xlabel("languages")
    _legend(fig, axes[0])
    rows = []
    for s in scopes:
        for j, label in judges.items():
            m = summary[s].get(j) or {}
            rows.append(_cells([s, label, m.get("n"), m.get("precision"), m.get("recall"),
                                m.get("f1"), m.get("accuracy")]))
    notes = [Text(f"{_fmt(result.get('train_facts'))} train facts, "
                  f"{_fmt(result.get('test_facts'))} test facts; relations skipped (fewer than "
                  f"2 facts): {_fmt(result.get('skipped_relations')) or 'none'}.")]
    return [*notes, Plot("Fact-checking", _png(fig),
                         "Precision, recall and F1 of judging (query, candidate) pairs true: "
                         "degenerate knowledge neurons vs the model's own greedy prediction."),
            Table(["languages", "judge", "pairs", "precision", "recall", "F1", "accuracy"],
                  rows), *_knowledge_text(result, "the others are not used for training")]


@_with_rc
def _enhancement(result: dict) -> list:
    s = result["summary"]
    fig, axes = _figure(10, 3.6, ncols=2)
    _grouped_bars(axes[0], ["weak language\n(own queries)", "unrelated facts\n(same language)"],
                  {"before": [s.get("accuracy_before"), s.get("unrelated_accuracy_before")],
                   "after": [s.get("accuracy_after"), s.get("unrelated_accuracy_after")]},
                  "accuracy (greedy = gold)", "Accuracy before / after enhancing",
                  unit_range=True)
    _grouped_bars(axes[1], ["weak language\n(own queries)"],
                  {"before": [s.get("median_p_before")], "after": [s.get("median_p_after")]},
                  "median p(gold) (log scale)", "p(gold) before / after enhancing",
                  log=True)
    _legend(fig, axes[0])
    text = (f"{_fmt(s.get('weak_fact_languages'))} (fact, weak language) pairs, "
            f"{_fmt(s.get('without_neurons'))} without shared neurons; "
            f"{_fmt(result.get('ineligible_facts'))} facts right or wrong in every language; "
            f"enhancement factor x{_fmt(result.get('factor'))}.")
    rows = [_cells(["weak language (own queries)", s.get("accuracy_before"),
                    s.get("accuracy_after"), s.get("median_p_before"), s.get("median_p_after")]),
            _cells(["unrelated facts (same language)", s.get("unrelated_accuracy_before"),
                    s.get("unrelated_accuracy_after"), None, None])]
    return [Text(text), Plot("Enhancement", _png(fig),
                             "Enhancing the neurons shared by the languages where the model "
                             "knows the fact, measured in the language where it does not."),
            Table(["queries", "accuracy before", "accuracy after", "median p(gold) before",
                   "median p(gold) after"], rows),
            *([_controls_table([("shared neurons", "enhance", s["controls"])], "neurons of")]
              if "controls" in s else []),
            *_knowledge_text(result, "strong languages are the known ones, weak ones the "
                                     "others")]


@_with_rc
def _injection(result: dict) -> list:
    s = result["summary"]
    source = result.get("source", "?")
    portability = s.get("portability") or {}
    groups = [f"reliability\n({source})", f"generalization\n({source})",
              *[f"portability\n({lang})" for lang in portability], "locality"]
    top1 = [s.get("reliability_top1"), s.get("generalization_top1"),
            *[(v or {}).get("top1") for v in portability.values()], s.get("locality")]
    efficacy = [s.get("reliability_efficacy"), s.get("generalization_efficacy"),
                *[(v or {}).get("efficacy") for v in portability.values()], None]
    fig, (ax,) = _figure(max(8, 1.3 * len(groups) + 3), 3.8)
    _grouped_bars(ax, groups, {"new object top-1 (locality: unrelated top-1 unchanged)": top1,
                               "p(new) > p(old)": efficacy}, "rate",
                  "Knowledge injection: edit success", unit_range=True)
    _legend(fig, ax)
    rows = [_cells(["reliability", source, s.get("reliability_top1"),
                    s.get("reliability_efficacy")]),
            _cells(["generalization (paraphrases)", source, s.get("generalization_top1"),
                    s.get("generalization_efficacy")]),
            *[_cells(["portability (transfer)", lang, (v or {}).get("top1"),
                      (v or {}).get("efficacy")]) for lang, v in portability.items()],
            _cells(["locality (unrelated top-1 unchanged)", "all", s.get("locality"), None])]
    control = s.get("random") or {}
    if control:
        rows += [_cells([f"control: random set, reliability ({_fmt(control.get('edits'))} "
                         "edits)", source, control.get("reliability_top1"),
                         control.get("reliability_efficacy")]),
                 _cells(["control: random set, portability", "others",
                         control.get("portability_top1"), control.get("portability_efficacy")])]
    skipped = result.get("skipped") or []
    return [Text(f"{_fmt(s.get('edits'))} edits through the knowledge neurons of {source}; "
                 f"{len(skipped)} facts skipped."),
            Plot("Knowledge injection", _png(fig),
                 "Counterfactual edits of the source language's knowledge neurons: reliability "
                 "on the edit query, generalization to paraphrases, portability to other "
                 "languages, locality on unrelated facts."),
            Table(["metric", "language", "new object top-1", "p(new) > p(old)"], rows),
            *_knowledge_text(result, "portability is measured where the fact is known")]


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


def _size_curves(result: dict) -> list:
    s, methods = result["summary"], result["methods"]
    curves = ("suppress_selectivity", "suppress_specificity")
    rows = [_cells([m, *[fmt_ci(s[m]["area"][c]["all"]) for c in curves]]) for m in methods]
    return [plot_size_curves(result, "selectivity"), plot_size_curves(result, "specificity"),
            Table(["method", "area: suppression selectivity", "area: suppression specificity"],
                  rows, caption="Areas under the curves (mean height over the k grid), "
                                "median [95% CI] over items"),
            *_knowledge_text(result)]


@_with_rc
def _shared_sets(result: dict) -> list:
    s, sizes, rankings = result["summary"], result["sizes"], result["rankings"]
    fig, axes = _figure(11, 3.6, ncols=2)
    for ax, key, label in ((axes[0], "selectivity", "mean selectivity over languages"),
                           (axes[1], "moved", "share of languages moved")):
        for color, name in zip(_colors(len(rankings)), rankings, strict=True):
            ys = [s[name][str(k)]["suppress"][key]["value"] for k in sizes]
            ax.plot(sizes, [_number(y) for y in ys], marker="o", label=name, color=color)
        _log_sizes(ax, sizes)
        ax.set_xlabel("k (top-k shared neurons)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    rows = [_cells([pair, *[fmt_ci(entry[str(k)]) for k in sizes]])
            for pair, entry in s["paired"].items()]
    return [Plot("Language-agnostic sets at equal size", _png(fig),
                 "Suppressing the top-k neurons of each cross-language ranking in every "
                 "language the model knows the fact in: selectivity averaged over languages, and "
                 "the share of languages whose p(gold) halves (and beats random sets)."),
            Table(["pair (suppression selectivity)", *[f"k={k}" for k in sizes]], rows,
                  caption="Share of facts where the first ranking beats the second (ties half)"),
            *_knowledge_text(result)]


def _audits(result: dict) -> list:
    s = result["summary"]
    rows = [_cells([kind.replace("_", " "), s["jaccard"][kind]["n"], fmt_ci(s["jaccard"][kind])])
            for kind in s["jaccard"]]
    sym = s["symmetry"]
    symmetry = [_cells([key.replace("_", " "), fmt_ci(value)]) for key, value in sym.items()
                if isinstance(value, dict)]
    return [Table(["pairs of knowledge-neuron sets", "pairs", "Jaccard, median [95% CI]"], rows,
                  caption="Paraphrase invariance (Niu et al. 2024)"),
            Table(["measure", "median [95% CI]"], symmetry,
                  caption=f"Bijective symmetry: {sym['pairs']} items known in both directions"),
            *_knowledge_text(result)]


EXPERIMENT_VIEWS: dict[str, tuple[str, Callable[[dict], list]]] = {
    "localization-quality": ("Localization quality (ig vs amig vs matrice)",
                             _localization_quality),
    "cross-lingual-editing": ("Cross-lingual editing", _cross_lingual_editing),
    "fact-checking": ("Fact-checking with degenerate neurons", _fact_checking),
    "enhancement": ("Enhancement of weak languages", _enhancement),
    "injection": ("Knowledge injection", _injection),
    "size-curves": ("Methods at equal size (deletion / insertion curves)", _size_curves),
    "shared-sets": ("Language-agnostic sets at equal size (MATRICE's claim)", _shared_sets),
    "audits": ("Audits of the knowledge-neuron thesis", _audits),
}


def _experiment_sections(data: RunData) -> list[Section]:
    if not data.experiments:
        return [Section("experiments", "Experiments",
                        [Text("No experiment results (*.json from mkn experiment) in this "
                              "directory or its experiments/ folder.", "note")])]
    sections = [Section("experiments", "Experiments",
                        [Text(f"{len(data.experiments)} result file(s).")])]
    for number, experiment in enumerate(data.experiments, 1):
        title, view = EXPERIMENT_VIEWS.get(experiment.name,
                                           (f"Experiment {experiment.name}", None))
        section = Section(f"experiment-{number}", title, level=3)
        section.blocks.append(Text(f"{experiment.path}. {_setup_text(experiment.setup)}"))
        summary = experiment.result.get("summary")
        if view is None or not isinstance(summary, dict):
            if view is None:
                section.blocks.append(Text(f"Unknown experiment {experiment.name!r}: its "
                                           "summary is shown as stored.", "note"))
            else:
                section.blocks.append(Text("The result has no summary.", "note"))
            section.blocks.append(Pre("summary", json.dumps(summary, indent=2,
                                                            ensure_ascii=False)))
        else:
            section.blocks += _guarded(lambda view=view, experiment=experiment:
                                       view(experiment.result), title)
        sections.append(section)
    return sections


def _guarded(build: Callable[[], list], what: str) -> list:
    """The blocks of ``build()``, or a note if the data do not have the expected shape."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        return [Text(f"{what}: could not be drawn, the data have an unexpected shape "
                     f"({type(error).__name__}: {error}).", "note")]


def _section_or_note(build: Callable[[], Section | None], section_id: str,
                     title: str) -> Section | None:
    try:
        return build()
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        return Section(section_id, title, [Text(
            f"This section could not be drawn, the data have an unexpected shape "
            f"({type(error).__name__}: {error}).", "note")])


# ----------------------------------------------------------------------------- page


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("mkn.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def build_sections(data: RunData) -> list[Section]:
    """The sections of the report of ``data``, in page order."""
    sections = [_section_or_note(lambda: _config_section(data), "config", "Run configuration"),
                _section_or_note(lambda: _overview_section(data), "overview",
                                 "Overview and cost")]
    for build, section_id, title in ((_neurons_section, "neurons", "Knowledge neurons"),
                                     (_agnostic_section, "agnostic", "Language-agnostic neurons"),
                                     (_degenerate_section, "degenerate", "Degenerate neurons")):
        section = _section_or_note(lambda build=build: build(data), section_id, title)
        if section is not None:
            sections.append(section)
    sections += _experiment_sections(data)
    return sections


def _render(data: RunData, title: str, sections: list[Section], home: str | None) -> str:
    from mkn import __version__ as version

    return _environment().get_template("report.html").render(
        title=title, directory=str(data.directory.resolve()), sections=sections,
        problems=data.problems if home is None else [], home=home,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=version)


def render_report(run_dir: Path, data: RunData | None = None) -> str:
    """The report of ``run_dir`` as an HTML string (see :func:`write_report`)."""
    data = data or load_run(Path(run_dir))
    return _render(data, f"mkn report: {data.directory.resolve().name}", build_sections(data),
                   None)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the HTML report of the run directory ``run_dir``; returns its path.

    ``run_dir`` is a directory written by ``mkn locate`` (``config.json``, ``neurons.jsonl``,
    ``language_agnostic.jsonl``, ``degenerate.jsonl``, ``timings.jsonl``, ``summary.json``)
    and/or holding ``mkn experiment`` results (``*.json`` with ``setup`` and ``result``, in
    ``run_dir`` or ``run_dir/experiments/``). Everything present is reported; a missing input
    leaves its section out with a short note, an unreadable file is named in a note at the top.
    Without ``summary.json`` the statistics are computed from the records. Records of facts not
    marked done in ``done.jsonl`` (an interrupted run) are left out.

    The page (default ``run_dir/report.html``; ``out`` elsewhere, parent folders created) is a
    file that works offline: plots are inline base64 PNG, there is no JavaScript and no
    reference to any external resource; every text taken from the data is HTML-escaped. Next
    to it, ``report/`` holds a page per fact and per neuron (:mod:`mkn.report.pages`), linked
    both ways and from the index's facts table.

    Raises ``NotADirectoryError`` if ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is not a directory (expected a run directory "
                                 "from mkn locate or mkn experiment)")
    from mkn.report.pages import write_pages

    out = Path(out) if out is not None else run_dir / REPORT_NAME
    data = load_run(run_dir)
    page = render_report(run_dir, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    if data.neurons:
        write_pages(data, out.parent, lambda title, sections, home: _render(
            data, f"mkn: {title}", sections, home), home=out.name)
    write_atomic(out, page)
    return out

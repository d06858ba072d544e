"""The HTML report of a run directory: the page assembled from its parts.

The report is split as it reads: :mod:`~mkn.report.data` (what is read from the run),
:mod:`~mkn.report.blocks` (cells, tables, plots, sections), :mod:`~mkn.report.plots`,
:mod:`~mkn.report.sections` (localization), :mod:`~mkn.report.experiment_views` (one view per
experiment), :mod:`~mkn.report.pages` (a page per fact and per neuron) and the jinja2 template.

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
state) inlined as ``data:`` URIs; the page's only script is ``templates/tables.js`` (sorting and
filtering tables, allowed by its SHA-256 in the Content-Security-Policy), and it loads nothing
from elsewhere. Every
text that comes from the data is HTML-escaped (jinja2 with autoescaping on).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import markupsafe

from mkn.report.blocks import REPORT_NAME, Section
from mkn.report.data import RunData, load_run
from mkn.report.experiment_views import _experiment_sections, _section_or_note
from mkn.report.pages import PAGES
from mkn.report.sections import (
    _agnostic_section,
    _config_section,
    _degenerate_section,
    _neurons_section,
    _overview_section,
)
from mkn.runs.directory import check_ours, write_atomic

GENERATOR = '<meta name="generator" content="mkn'  # in every page mkn writes (the template)

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


@functools.cache
def _script() -> tuple[markupsafe.Markup, str]:
    """The pages' one inline script (sortable, filterable tables) and its CSP hash: the policy
    allows this script and no other."""
    text = (Path(__file__).parent / "templates" / "tables.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode("ascii")
    return markupsafe.Markup(text), f"sha256-{digest}"


def _render(data: RunData, title: str, sections: list[Section], home: str | None) -> str:
    from mkn import __version__ as version

    script, script_hash = _script()
    return _environment().get_template("report.html").render(
        title=title, directory=str(data.directory.resolve()), sections=sections,
        problems=data.problems if home is None else [], home=home,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=version,
        script=script, script_hash=script_hash)


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
    replace = "choose another --out, or delete it yourself to have mkn write it"
    check_ours(out, GENERATOR, replace)
    check_ours(out.parent / PAGES / "neurons.html", GENERATOR, replace)
    data = load_run(run_dir)
    if not (data.has_locate or data.knowledge or data.experiments or data.summary):
        raise ValueError(f"{run_dir} holds no mkn results (no neurons.jsonl, knowledge.jsonl "
                         "or experiment JSON): nothing to report, nothing written")
    page = render_report(run_dir, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    if data.neurons:
        write_pages(data, out.parent, lambda title, sections, home: _render(
            data, f"mkn: {title}", sections, home), home=out.name)
    write_atomic(out, page)
    return out

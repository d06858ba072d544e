"""The sections of the report about localization: configuration, overview and cost, what the
model knows, knowledge neurons, language-agnostic and degenerate neurons."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable

from mkn.experiments.common import CONTROL_HEADER, control_row, knowledge_line
from mkn.localization.stats import knowledge_counts
from mkn.report.blocks import (
    MAX_PAIRS,
    Cell,
    Pre,
    Section,
    Table,
    Text,
    _capped,
    _cells,
    _fmt,
    _neuron,
    _neuron_list,
    _pct,
)
from mkn.report.data import RunData
from mkn.report.pages import PAGES, fact_href
from mkn.report.plots import plot_agnostic, plot_controls, plot_layers, plot_overlap

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
    if summary is None and data.experiments:  # an experiment locates inside its own run
        names = ", ".join(dict.fromkeys(e.name for e in data.experiments))
        section.blocks.append(Text(
            f"An experiment run ({names}): the neurons each experiment located and intervened "
            "on are in its section below (with their controls), not in a neurons.jsonl of "
            "this directory.", "note"))
    elif summary is None:
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


def controls_blocks(rows: Iterable[tuple[str, str, dict]], first: str) -> list:
    """The effects beside their controls, drawn (:func:`plot_controls`) and tabulated."""
    rows = list(rows)
    return [plot_controls(rows, first), _controls_table(rows, first)]


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



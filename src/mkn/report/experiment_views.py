"""One view per experiment: its plots, tables and controls, from its saved result."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from mkn.experiments.common import few_facts, fmt_ci
from mkn.experiments.injection import NEIGHBOUR_HEADER, neighbour_rows
from mkn.report.blocks import (
    AGNOSTIC,
    SOFT_AGNOSTIC,
    Plot,
    Pre,
    Section,
    Table,
    Text,
    _capped,
    _cells,
    _fmt,
    _number,
)
from mkn.report.data import RunData
from mkn.report.plots import (
    _colors,
    _figure,
    _grouped_bars,
    _legend,
    _log_sizes,
    _plain_ticks,
    _png,
    _with_rc,
    plot_size_curves,
)
from mkn.report.sections import _knowledge_text, controls_blocks

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
        _plain_ticks(axes[0].yaxis)
    axes[0].set_xlabel("method")
    _grouped_bars(axes[1], methods, {
        "suppress (x0)": [summary[m].get("median_suppress_related") for m in methods],
        "enhance (x2)": [summary[m].get("median_enhance_related") for m in methods]},
        "median relative change of p(gold)", "Related queries: suppress / enhance",
        changes=True)
    axes[1].set_xlabel("method")
    _legend(fig, axes[1])
    rows = []
    for m in methods:
        s = summary[m]
        ci = s.get("median_sr_ci95")
        rows.append(_cells([m, s.get("items"), s.get("without_neurons"),
                            s.get("median_neurons"), s.get("median_sr"),
                            f"[{_fmt(ci[0])}, {_fmt(ci[1])}]{few_facts(s.get('facts'))}"
                            if ci else None, s.get("mean_sr"),
                            s.get("median_suppress_related"),
                            s.get("median_enhance_related")]))
    controls = [(m, mode, summary[m]["controls"][mode]) for m in methods
                if "controls" in summary[m] for mode in ("suppress", "enhance")]
    return [Plot("Localization quality", _png(fig),
                 "SR = |d_rel/d_unrel| (enhance) + |d_rel/d_unrel| (suppress): higher means the "
                 "neurons move their fact more than an unrelated one."),
            Table(["method", "items", "no neurons", "median #neurons", "median SR", "95% CI",
                   "mean SR", "median d_rel suppress", "median d_rel enhance"], rows),
            *(controls_blocks(controls, "method") if controls else []),
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
                      emphasis=labels.get(AGNOSTIC), changes=True)
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
            *(controls_blocks([(labels[s], mode, summary[s]["controls"][mode])
                               for s in sources for mode in ("suppress", "enhance")],
                              "neurons of")
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
            *(controls_blocks([("shared neurons", "enhance", s["controls"])], "neurons of")
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
            *_injection_locality(result),
            *_knowledge_text(result, "portability is measured where the fact is known")]


def _injection_locality(result: dict) -> list:
    """The change of p(gold) of the edited fact's same-relation and other-relation neighbours,
    per edited set (results from before it was measured have none)."""
    rows = neighbour_rows(result)
    if not rows:
        return []
    return [Table(NEIGHBOUR_HEADER, [_cells(row) for row in rows],
                  caption="Locality: median relative change of p(gold) of other known facts "
                          "(0: untouched, -1: gone), 95% interval over facts")]


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


def _tracing_vs_neurons(result: dict) -> list:
    s = result["summary"]
    names = {"agreement": f"agreement: Spearman(tracing MLP profile, {result.get('method')} "
                          "neurons per layer)",
             "unrelated_agreement": "control: the same trace vs an unrelated fact's neurons",
             "specificity": "specificity = agreement - control",
             "agreement_at_prediction": "agreement with the MLP trace at the prediction "
                                        "position",
             "attention_share": "attention share of the indirect effect (Geva et al. 2023)"}
    rows = [_cells([label, (s.get(key) or {}).get("facts"), fmt_ci(s.get(key))])
            for key, label in names.items()]
    return [Table(["measure (median over items)", "facts", "median [95% CI]"], rows,
                  caption=f"Causal tracing (ROME) beside the knowledge neurons: {s['items']} "
                          f"items, {s.get('flat', 0)} without a ranking to compare"),
            *_knowledge_text(result)]


def _localization_vs_editing(result: dict) -> list:
    s = result["summary"]
    rows = []
    for name in ("tracing", "neuron_share", "attribution_mass"):
        label = name.replace("_", " ")
        rows.append(_cells([f"Spearman(edit gain, {label})", fmt_ci(s.get(f"rho_{name}"))]))
        rows.append(_cells([f"largest {label} = best layer to edit (chance "
                            f"{_fmt(s.get('chance_best_layer'))})",
                            fmt_ci(s.get(f"best_{name}_agrees"))]))
    rows.append(_cells([f"efficacy, top-{result.get('k')} neurons per layer",
                        fmt_ci(s.get("efficacy"))]))
    rows.append(_cells(["control: random neurons of the same layer",
                        fmt_ci(s.get("random_efficacy"))]))
    return [Table(["measure", "median or mean [95% CI]"], rows,
                  caption=f"Does localization predict where editing works (Hase et al. 2023)? "
                          f"{s['items']} items, each edited at every layer"),
            *_knowledge_text(result)]


def _query_consistency(result: dict) -> list:
    s = result["summary"]
    names = {"consistency": "query consistency (mean Jaccard of a fact's paraphrase sets)",
             "consistent_share": "share of consistent items",
             "selectivity_consistent": "suppression selectivity, consistent items",
             "selectivity_inconsistent": "suppression selectivity, inconsistent items",
             "selectivity_difference": "difference (consistent - inconsistent)",
             "spearman": "Spearman (consistency, selectivity)"}
    rows = [_cells([label, (s.get(key) or {}).get("facts"), fmt_ci(s.get(key))])
            for key, label in names.items()]
    groups = s["group_facts"]
    return [Table(["measure", "facts", "value [95% CI]"], rows,
                  caption=f"Query consistency (Chen et al. 2025): {len(result['items'])} items "
                          f"with two or more queries; {groups['consistent']} consistent and "
                          f"{groups['inconsistent']} inconsistent facts"),
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
    "tracing-vs-neurons": ("Causal tracing vs knowledge neurons", _tracing_vs_neurons),
    "localization-vs-editing": ("Localization vs editing (Hase et al.)",
                                _localization_vs_editing),
    "query-consistency": ("Query consistency and editing (Chen et al. 2025)",
                          _query_consistency),
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
        section.blocks += _guarded(lambda experiment=experiment: _sets_table(
            experiment.result, experiment.setup), f"{title}: sets")
        sections.append(section)
    return sections


def _sets_table(result: dict, setup: dict) -> list:
    """The neuron sets the experiment intervened on, per item, language and set, with how
    many control draws each was measured against (``mkn export``'s experiment_items has every
    draw's set)."""
    from mkn.report.export import item_long_rows

    languages = set(setup.get("languages") or [])
    rows, draws = [], {}
    for number, item in enumerate(result.get("items") or []):
        if not isinstance(item, dict):
            continue
        for row in item_long_rows(item, languages):
            key = (number, row["language"], row["set"], row["mode"])
            if row["control"] == "none" and row["neurons"]:
                rows.append((key, item.get("fact_id"), row))
            elif row["control"] not in (None, "none"):
                draws.setdefault(key, Counter())[row["control"]] += 1
    if not rows:
        return []
    table = []
    for key, fact_id, row in rows:
        neurons = json.loads(row["neurons"])
        shown = ", ".join(f"({layer}, {index})" for layer, index in neurons[:12])
        controls = ", ".join(f"{count} {name.replace('_', ' ')}"
                             for name, count in sorted(draws.get(key, {}).items()))
        table.append(_cells([fact_id, row["language"], row["set"], row["mode"], len(neurons),
                             shown + (f" and {len(neurons) - 12} more" if len(neurons) > 12
                                      else ""), controls]))
    shown_rows, notes = _capped(table, "sets")
    return [Table(["fact", "language", "set", "intervention", "size", "neurons (layer, index)",
                   "controls measured"], shown_rows,
                  caption="The neuron sets this experiment suppressed, enhanced or edited, per "
                          "item (mkn export: every control draw's set too)"), *notes]


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



"""Experiment 2: cross-lingual editing with language-agnostic vs single-language neurons.

For each fact, suppress (x0) or enhance (x2) one neuron set and measure the relative change of
p(gold) on the fact's queries in *every* language the model knows it in. Neuron sets: the
language-agnostic neurons (AMIG: the intersection over languages), the soft language-agnostic
neurons (knowledge neurons in at least a fraction ``q`` of the languages: with many languages
the strict intersection is often empty) and each language's own knowledge neurons (en->zh,
zh->en and every other pair). The claim under test: editing the language-agnostic neurons moves
the fact in all languages, editing one language's neurons moves it mostly in that language.

Every change is shown beside its controls (:mod:`mkn.interventions.controls`): in each target
language, random sets with as many neurons per layer (``draws`` draws) on the same queries,
``unrelated`` facts of other relations and as many other facts of the *same* relation known in
that language (its locality: where relation neurons do their damage). With relation neurons
left out (the default) each language's set is the fact's *fact set*; the fact's *relation set*
(the relation neurons its sets held, in any language) is edited too, as its own source.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

from mkn.experiments.common import (
    CONTROL_HEADER,
    Progress,
    control_row,
    control_summary,
    knowledge_line,
    locate_known,
    markdown_table,
    neighbourhood,
    queries,
)
from mkn.experiments.metrics import clustered_interval, interval
from mkn.interventions.controls import (
    DEFAULT_DRAWS,
    DEFAULT_UNRELATED,
    CleanProbs,
    ControlledEffect,
    measure_sets,
    random_sets,
    stable_seed,
)
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.models.loading import LanguageModel

AGNOSTIC = "agnostic"
SOFT_AGNOSTIC = "agnostic-soft"
RELATION_SET = "relation-set"
MODES = ("suppress", "enhance")
PHASES = 2  # progress ticks per fact: locating, then measuring


@dataclass
class EditEverywhere:
    """One neuron set suppressed or enhanced, measured in every language beside its controls:
    the set over each language's own and unrelated queries, and each random set shaped like
    it over the own queries."""

    neurons: list
    mode: str
    own: dict[str, list]
    controls: dict[str, list[list]]
    drawn: list[list]
    same_relation: dict[str, list[list]] = field(default_factory=dict)

    def jobs(self) -> list:
        """The jobs ``(neurons, mode, queries)`` to measure (``measure_sets``)."""
        languages = list(self.own)
        jobs = [(self.neurons, self.mode, self.own[lang]) for lang in languages]
        jobs += [(self.neurons, self.mode, qs) for lang in languages for qs in self.controls[lang]]
        jobs += [(r, self.mode, self.own[lang]) for r in self.drawn for lang in languages]
        jobs += [(self.neurons, self.mode, qs) for lang in languages
                 for qs in self.same_relation.get(lang, [])]
        return jobs

    def read(self, changes: Iterator[float]) -> dict[str, dict]:
        """``{language: ControlledEffect dict}`` from the changes of :meth:`jobs`, in order."""
        languages = list(self.own)
        effects = {lang: next(changes) for lang in languages}
        unrelated = {lang: [next(changes) for _ in self.controls[lang]] for lang in languages}
        drawn: dict[str, list[float]] = {lang: [] for lang in languages}
        for _ in self.drawn:
            for lang in languages:
                drawn[lang].append(next(changes))
        kin = {lang: [next(changes) for _ in self.same_relation.get(lang, [])]
               for lang in languages}
        return {lang: ControlledEffect.record(self.mode, self.neurons, effects[lang],
                                              drawn[lang], unrelated[lang],
                                              self.drawn, same_relation=kin[lang]).to_dict()
                for lang in languages}


def measure_everywhere(lm: LanguageModel, edits: list[EditEverywhere],
                       clean: CleanProbs) -> list[dict[str, dict]]:
    """Every edit of ``edits`` in one batched pass; per edit ``{language: effect dict}``."""
    changes = iter(measure_sets(lm, [job for edit in edits for job in edit.jobs()], clean))
    return [edit.read(changes) for edit in edits]


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, draws: int = DEFAULT_DRAWS, unrelated: int = DEFAULT_UNRELATED,
        progress: Progress | None = None, cache: AttributionCache | None = None,
        known: KnownItems | None = None, generic: GenericNeurons | None = None) -> dict:
    if len(languages) < 2:
        raise ValueError("cross-lingual editing needs at least 2 languages")
    known, located = locate_known(lm, facts, languages, config, progress, cache, known,
                                  generic)
    clean = CleanProbs(lm)
    items, single_language = [], []
    for fact in facts:
        result = located[fact.id]
        targets = list(result.languages)
        if len(targets) < 2:
            single_language.append(fact.id)
            if progress:
                progress(fact.id)
            continue
        sources = {lang: result.languages[lang].neurons for lang in targets}
        sources[AGNOSTIC] = result.language_agnostic
        sources[SOFT_AGNOSTIC] = result.soft_language_agnostic
        sources[RELATION_SET] = sorted({n for lang in targets
                                        for n in result.languages[lang].relation})
        own = {lang: queries(fact, lang) for lang in targets}
        around = neighbourhood(fact, facts, targets, unrelated, seed, known)
        controls = {lang: around[lang]["other_relation"] for lang in targets}
        kin = {lang: around[lang]["same_relation"] for lang in targets}
        edits = {(source, mode): EditEverywhere(
            neurons, mode, own, controls,
            random_sets(neurons, lm.n_neurons, draws, stable_seed(seed, fact.id, source, mode)),
            kin)
            for source, neurons in sources.items() if neurons for mode in MODES}
        measured = dict(zip(edits, measure_everywhere(lm, list(edits.values()), clean),
                            strict=True))
        for source, neurons in sources.items():
            item = {"fact_id": fact.id, "source": source, "neurons": len(neurons),
                    "targets": targets}
            for mode in MODES if neurons else ():
                effects = measured[(source, mode)]
                item[mode] = {lang: e["effect"] for lang, e in effects.items()}
                item[f"{mode}_controls"] = effects
            items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "summary": summarize(items, languages, seed),
            "soft_fraction": config.agnostic_fraction, "knowledge": known.to_summary(),
            "known_in_fewer_than_two": single_language, "draws": draws, "unrelated": unrelated}


def summarize(items: list[dict], languages: list[str], seed: int = 0) -> dict:
    """Per source set and mode: the median relative change in each target language, and the
    controls pooled over target languages."""
    summary = {}
    for source in [*languages, AGNOSTIC, SOFT_AGNOSTIC, RELATION_SET]:
        rows = [i for i in items if i["source"] == source]
        measured = [i for i in rows if "suppress" in i]
        summary[source] = {
            "facts": len(rows), "without_neurons": len(rows) - len(measured),
            **{mode: {lang: _median([i[mode][lang] for i in measured if lang in i[mode]])
                      for lang in languages} for mode in MODES},
            "controls": {mode: control_summary([(i["fact_id"], e) for i in measured
                                                for e in i[f"{mode}_controls"].values()], seed)
                         for mode in MODES},
        }
    return summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table(result: dict) -> str:
    summary = result["summary"]
    languages = [s for s in summary if s not in (AGNOSTIC, SOFT_AGNOSTIC, RELATION_SET)]
    rows, controls = [], []
    for source, s in summary.items():
        for mode in MODES:
            rows.append([source, mode, f"{s['facts'] - s['without_neurons']}/{s['facts']}",
                         *[s[mode][lang] for lang in languages]])
            controls.append([source, *control_row(mode, s["controls"][mode])])
    header = ["neurons of", "intervention", "facts with neurons",
              *[f"d p(gold) {lang}" for lang in languages]]
    skipped = len(result.get("known_in_fewer_than_two", []))
    return (markdown_table(header, rows)
            + f"\n\nThe same edits beside a random set of the same size per layer "
              f"({result['draws']} draws), {result['unrelated']} unrelated facts of other "
              "relations and as many of the same relation (locality), pooled over target "
              f"languages ({RELATION_SET}: the relation neurons left out of the fact's "
              "sets):\n\n"
            + markdown_table(["neurons of", *CONTROL_HEADER], controls)
            + f"\n\n{knowledge_line(result['knowledge'])} {skipped} facts known in fewer than "
              "two languages are not edited.")


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """Per fact, the mean relative change of p(gold) over target languages, for the
    language-agnostic sets (strict and soft, in every language) and for single-language sets in
    *other* languages (cross) and in their own language (self); medians with intervals over
    facts."""
    agnostic_sets = (AGNOSTIC, SOFT_AGNOSTIC)
    by_fact: dict[str, dict[str, dict]] = {}
    for item in result["items"]:
        by_fact.setdefault(item["fact_id"], {})[item["source"]] = item
    out = {}
    for mode in ("suppress", "enhance"):
        agnostic: dict[str, list[float]] = {name: [] for name in agnostic_sets}
        cross, own = [], []
        for sources in by_fact.values():
            for name in agnostic_sets:
                item = sources.get(name)
                if item and mode in item:
                    agnostic[name].append(statistics.fmean(item[mode].values()))
            singles = [(s, i) for s, i in sources.items()
                       if s not in (*agnostic_sets, RELATION_SET) and mode in i]
            if singles:
                others = [i[mode][t] for s, i in singles for t in languages
                          if t != s and t in i[mode]]  # known target languages only
                if others:
                    cross.append(statistics.fmean(others))
                own.append(statistics.fmean(i[mode][s] for s, i in singles))
        out[mode] = {"agnostic_all_languages": interval(agnostic[agnostic_sets[0]], seed=seed),
                     "soft_agnostic_all_languages": interval(agnostic[agnostic_sets[1]],
                                                             seed=seed),
                     "single_other_languages": interval(cross, seed=seed),
                     "single_own_language": interval(own, seed=seed)}
        controls = {name: [(i["fact_id"], e) for i in result["items"] if i["source"] == name
                           and f"{mode}_controls" in i for e in i[f"{mode}_controls"].values()]
                    for name in agnostic_sets}
        out[mode]["controls"] = {
            name: {key: clustered_interval([(f, e[key]) for f, e in rows if e[key] is not None],
                                           seed=seed) for key in ("selectivity", "specificity")}
            for name, rows in controls.items()}
    return out

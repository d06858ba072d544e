"""Experiment 7: language-agnostic sets at equal size (MATRICE on its own claim).

MATRICE (Cao et al. 2024) is for finding a better *language-agnostic* set: neurons that hold a
fact in every language, found with uncertainty across paraphrases and languages. For each fact
the model knows in at least two languages, neurons are ranked by a cross-language score and the
top ``k`` are suppressed (x0) or enhanced (x2) in *every* known language, beside the controls of
:mod:`mkn.interventions.controls` (random sets of the same shape, unrelated facts of other
relations, per language). Rankings:

- ``matrice``: its multilingual score ``M - lambda * S`` over the languages' ``s^l``
  (:mod:`mkn.localization.matrice`);
- ``amig`` / ``ig``: the minimum over languages of each language's mean IG normalized by its
  maximum (a neuron ranks high only where it is high in every language);
- the ablations that come free from the same attributions: ``matrice-lambda0`` (no uncertainty
  penalty) and ``matrice-uniform`` (uniform query and language weights); and one documented
  variant, ``matrice-min``: the minimum over languages of ``s^l`` (the per-language uncertainty
  bound kept, the cross-language weighting replaced by AMIG's "high in every language");
- ``amig-source``: the top of *one* language's AMIG ranking (the fact's first known language,
  the source), the single-language set AMIG's cross-lingual claim compares against: shared
  sets should move the *other* languages more than the source language's own set does.

Generic neurons of any of the fact's languages are left out of every ranking. The claim under
test: at equal ``k``, MATRICE's shared set moves the fact in more languages, more selectively,
than AMIG's. Per method and ``k``: the per-fact mean selectivity and specificity over the known
languages, and the share of languages *moved* (suppression lowers p(gold) by more than half,
and more than the random sets do), with medians and intervals over facts; and MATRICE vs AMIG
paired per fact (share of facts where its mean selectivity is higher; ties count half).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch

from mkn.experiments.common import (
    Progress,
    fmt_ci,
    generic_for,
    knowledge_line,
    markdown_table,
    parse_ranking,
    probe_known,
    queries,
    unrelated_facts,
)
from mkn.experiments.cross_lingual_editing import EditEverywhere, measure_everywhere
from mkn.experiments.metrics import curve_area, interval, paired_outcome
from mkn.interventions.controls import (
    DEFAULT_DRAWS,
    DEFAULT_UNRELATED,
    CleanProbs,
    random_sets,
    stable_seed,
)
from mkn.localization import matrice
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import (
    AttributionCache,
    LocateConfig,
    locate_fact,
    top_neurons,
)
from mkn.localization.relations import LeftOut
from mkn.models.loading import LanguageModel

RANKINGS = ("matrice", "amig", "ig", "matrice-lambda0", "matrice-uniform", "matrice-min",
            "amig-source")  # the default; any registered method and METHOD-source are accepted
SIZES = (1, 2, 5, 10, 20)
MODES = ("suppress", "enhance")
MOVED = -0.5  # a language is moved when suppression lowers p(gold) by more than half
PHASES = 1


def min_normalized(scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The minimum over languages of each language's scores divided by their maximum."""
    return torch.stack([matrice.normalize(s.float()) for s in scores.values()]).min(0).values


def _located(lm, fact, languages, config, cache, known, generic, **update):
    return locate_fact(lm, fact, languages, config.model_copy(update={"degenerate": False,
                                                                      **update}),
                       cache, known, generic)


def cross_language_scores(lm: LanguageModel, fact, languages: list[str], config: LocateConfig,
                          rankings: Sequence[str], cache: AttributionCache,
                          known: KnownItems, generic) -> dict[str, torch.Tensor]:
    """The cross-language score of every ranking for ``fact`` (attributions from ``cache``)."""
    scores: dict[str, torch.Tensor] = {}
    for name in rankings:
        base, ablation = parse_ranking(name)
        if ablation == "source":
            result = _located(lm, fact, languages, config, cache, known,
                              generic_for(generic, base), method=base)
            scores[name] = next(iter(result.languages.values())).scores
            continue
        update = {"method": base}
        if ablation == "lambda0":
            update["matrice_lambda"] = 0.0
        elif ablation == "uniform":
            update["matrice_uniform"] = True
        result = _located(lm, fact, languages, config, cache, known, generic_for(generic, base),
                          **update)
        per_language = {lang: r.scores for lang, r in result.languages.items()}
        if base == "matrice" and ablation != "min":
            scores[name] = result.combined_scores
        else:
            scores[name] = min_normalized(per_language)
    return scores


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, rankings: tuple[str, ...] = RANKINGS, sizes: tuple[int, ...] = SIZES,
        draws: int = DEFAULT_DRAWS, unrelated: int = DEFAULT_UNRELATED,
        measure_queries: int = 0, progress: Progress | None = None,
        cache: AttributionCache | None = None, known: KnownItems | None = None,
        generic: GenericNeurons | Mapping[str, GenericNeurons] | None = None) -> dict:
    for name in rankings:
        parse_ranking(name)  # a bad name fails before any work
    sizes = tuple(sorted({k for k in sizes if 1 <= k <= lm.n_neurons // 2}))
    if not sizes:
        raise ValueError(f"sizes must be between 1 and {lm.n_neurons // 2}")
    known = probe_known(lm, facts, languages, config, known)
    cache = {} if cache is None else cache
    clean = CleanProbs(lm)
    items, single = [], []
    for fact in facts:
        targets = known.languages_of(fact.id)
        if len(targets) < 2:
            single.append(fact.id)
            if progress:
                progress(fact.id)
            continue
        scores = cross_language_scores(lm, fact, languages, config, rankings, cache, known,
                                       generic)
        exclude = set()
        for name in {parse_ranking(n)[0] for n in rankings}:
            exclude |= LeftOut.of(generic_for(generic, name)).excluded(fact.relation)
        own = {lang: queries(fact, lang)[:measure_queries or None] for lang in targets}
        controls = {lang: [queries(g, lang)[:1] for g in unrelated_facts(
            fact, facts, lang, unrelated, seed, known)] for lang in targets}
        edits = {}
        for name in rankings:
            ranked = top_neurons(scores[name], sizes[-1], exclude)
            for k in sizes:
                for mode in MODES:
                    neurons = ranked[:k]
                    edits[(name, k, mode)] = EditEverywhere(
                        neurons, mode, own, controls,
                        random_sets(neurons, lm.n_neurons, draws,
                                    stable_seed(seed, fact.id, mode)))
        measured = measure_everywhere(lm, list(edits.values()), clean)
        item: dict = {"fact_id": fact.id, "languages": targets, "source": targets[0],
                      "sets": {}}
        for (name, k, mode), effects in zip(edits, measured, strict=True):
            item["sets"].setdefault(name, {}).setdefault(str(k), {})[mode] = effects
        items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "rankings": list(rankings), "sizes": list(sizes),
            "known_in_fewer_than_two": single, "draws": draws, "unrelated": unrelated,
            "summary": summarize(items, rankings, sizes, seed),
            "knowledge": known.to_summary()}


def fact_numbers(effects: Mapping[str, dict], leave_out: str | None = None) -> dict:
    """Over a fact's languages (but ``leave_out``): mean selectivity and specificity, and the
    share of languages moved."""
    values = [e for lang, e in effects.items() if lang != leave_out]
    specific = [e["specificity"] for e in values if e["specificity"] is not None]
    moved = [e["effect"] < MOVED and e["effect"] < (e["random_effect"] or 0.0) for e in values]
    return {"selectivity": statistics.fmean(e["selectivity"] for e in values),
            "specificity": statistics.fmean(specific) if specific else None,
            "moved": sum(moved) / len(moved)}


def summarize(items: list[dict], rankings: Sequence[str], sizes: Sequence[int],
              seed: int = 0) -> dict:
    """Per ranking, k and mode: medians over facts with intervals; and matrice vs amig."""
    summary: dict = {}
    for name in rankings:
        summary[name] = {}
        for k in sizes:
            summary[name][str(k)] = {}
            for mode in MODES:
                per_fact = [fact_numbers(i["sets"][name][str(k)][mode]) for i in items]
                summary[name][str(k)][mode] = {
                    key: interval([f[key] for f in per_fact if f[key] is not None],
                                  statistics.median if key != "moved" else statistics.fmean,
                                  seed)
                    for key in ("selectivity", "specificity", "moved")}
    summary["paired"] = {f"{a} > {b}": {str(k): interval(
        [paired_outcome(_selectivity(i, a, k, a == "amig-source" or b == "amig-source"),
                        _selectivity(i, b, k, a == "amig-source" or b == "amig-source"))
         for i in items], statistics.fmean, seed) for k in sizes}
        for a, b in PAIRS if a in rankings and b in rankings}
    return summary


PAIRS = (("matrice", "amig"), ("matrice-min", "amig"), ("matrice", "ig"),
         ("matrice", "matrice-lambda0"), ("matrice", "matrice-uniform"),
         ("amig", "amig-source"), ("matrice", "amig-source"))


def _selectivity(item: dict, name: str, k: int, other_languages: bool) -> float:
    """A fact's mean suppression selectivity over its languages (over the languages other than
    the source one when ``other_languages``)."""
    return fact_numbers(item["sets"][name][str(k)]["suppress"],
                        item["source"] if other_languages else None)["selectivity"]


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """Per ranking, the area over k of the per-fact mean suppression selectivity (and the share
    of languages moved); paired per fact on those areas (ties half); intervals over facts."""
    items, sizes, rankings = result["items"], result["sizes"], result["rankings"]

    def area(item: dict, name: str, key: str = "selectivity", others: bool = False) -> float:
        return curve_area([fact_numbers(item["sets"][name][str(k)]["suppress"],
                                        item["source"] if others else None)[key]
                           for k in sizes])

    out: dict = {"area": {name: {key: interval([area(i, name, key) for i in items],
                                               statistics.median, seed)
                                 for key in ("selectivity", "moved")} for name in rankings},
                 "paired": {}}
    for a, b in PAIRS:
        if a in rankings and b in rankings:
            others = "amig-source" in (a, b)
            out["paired"][f"{a} > {b}"] = interval(
                [paired_outcome(area(i, a, others=others), area(i, b, others=others))
                 for i in items],
                statistics.fmean, seed)
    return out


def table(result: dict) -> str:
    s, sizes = result["summary"], result["sizes"]
    rows = []
    for name in result["rankings"]:
        for mode in MODES:
            rows.append([name, mode, *[fmt_ci(s[name][str(k)][mode]["selectivity"])
                                       for k in sizes]])
    moved = [[name, *[fmt_ci(s[name][str(k)]["suppress"]["moved"]) for k in sizes]]
             for name in result["rankings"]]
    paired = [[pair, *[fmt_ci(entry[str(k)]) for k in sizes]]
              for pair, entry in s["paired"].items()]
    header = [f"k={k}" for k in sizes]
    return ("Per fact, the mean selectivity over its known languages of the top-k shared set "
            "(median over facts [95% CI]):\n\n"
            + markdown_table(["ranking", "intervention", *header], rows)
            + "\n\nShare of a fact's languages moved by suppressing the top-k shared set (p(gold) "
              "down by more than half and more than random sets; mean over facts):\n\n"
            + markdown_table(["ranking", *header], moved)
            + "\n\nPaired per fact (suppression selectivity; share of facts where the first "
              "beats the second, ties half):\n\n" + markdown_table(["pair", *header], paired)
            + f"\n\n{len(result['items'])} facts known in two or more languages; "
              f"{len(result['known_in_fewer_than_two'])} known in fewer are left out. "
            + knowledge_line(result["knowledge"]))

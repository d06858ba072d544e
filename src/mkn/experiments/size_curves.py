"""Experiment 6: methods compared at equal size (deletion and insertion curves).

For each (fact, language) item the model knows and each method, rank the neurons by the
method's score (``ig``/``amig``: the mean IG over the language's attributed queries;
``matrice``: its uncertainty lower bound ``s^l``; generic neurons left out), and suppress (x0) or
enhance (x2) the top ``k`` for every ``k`` of ``sizes`` (default 1, 2, 5, 10, 20, 50, 100). A
``random`` ranking (a seeded permutation of all neurons) is the floor. Every set is measured
beside its controls (:mod:`mkn.interventions.controls`): random sets with as many neurons per
layer (``draws`` draws) on the same queries, and ``unrelated`` facts of other relations known in
the same language; so each item has a selectivity and a specificity curve per method.

This is the deletion / insertion evaluation of attribution methods (the "most relevant first"
perturbation curves of Samek et al. 2017, "Evaluating the visualization of what a deep neural
network has learned", and the deletion/insertion metrics of Petsiuk et al. 2018, RISE), applied
to neurons: methods are compared at the same k, not at the sizes their thresholds happen to
give. The summary number of a curve is its normalized area (:func:`curve_area`: the mean height
of the curve over the k grid, trapezoids between neighbouring sizes, i.e. k on the roughly
logarithmic axis of the grid), with bootstrap 95% intervals over facts, pooled and per language.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from mkn.experiments.common import (
    Progress,
    control_summary,
    fmt_ci,
    generic_for,
    knowledge_line,
    markdown_table,
    probe_known,
    queries,
    unrelated_facts,
)
from mkn.experiments.metrics import clustered_interval, curve_area, paired_outcome
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
from mkn.localization.locate import AttributionCache, LocateConfig, locate_fact, top_neurons
from mkn.localization.relations import LeftOut
from mkn.models.loading import LanguageModel

METHODS = ("ig", "amig", "matrice")
RANDOM = "random"
SIZES = (1, 2, 5, 10, 20, 50, 100)
MODES = ("suppress", "enhance")
PHASES = 1  # progress ticks per fact


def random_ranking(n_layers: int, n_neurons: int, k: int, seed: str) -> list[tuple[int, int]]:
    """The top ``k`` of a seeded random permutation of every neuron."""
    rng = random.Random(stable_seed(seed, "random-ranking"))
    return [(i // n_neurons, i % n_neurons) for i in rng.sample(range(n_layers * n_neurons), k)]


def item_curves(lm: LanguageModel, rankings: Mapping[str, list], own: list, controls: list[list],
                sizes: Sequence[int], clean: CleanProbs, draws: int, seed: str) -> dict:
    """``{method: {k: {mode: ControlledEffect dict}}}`` for one item, every set, unrelated fact
    and random draw in one batched pass."""
    jobs, layout = [], []
    for method, ranking in rankings.items():
        for k in sizes:
            neurons = ranking[:k]
            if len(neurons) < k:
                continue
            for mode in MODES:
                drawn = random_sets(neurons, lm.n_neurons, draws, f"{seed}/{mode}")
                layout.append((method, k, mode, len(jobs), neurons, drawn))
                jobs += [(neurons, mode, own), *[(neurons, mode, c) for c in controls],
                         *[(r, mode, own) for r in drawn]]
    changes = measure_sets(lm, jobs, clean)
    out: dict = {}
    for method, k, mode, at, neurons, drawn_sets in layout:
        unrelated = changes[at + 1:at + 1 + len(controls)]
        drawn = changes[at + 1 + len(controls):at + 1 + len(controls) + draws]
        out.setdefault(method, {}).setdefault(str(k), {})[mode] = ControlledEffect.record(
            mode, neurons, changes[at], drawn, unrelated, drawn_sets).to_dict()
    return out


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, methods: tuple[str, ...] = METHODS, sizes: tuple[int, ...] = SIZES,
        draws: int = DEFAULT_DRAWS, unrelated: int = DEFAULT_UNRELATED,
        measure_queries: int = 0, progress: Progress | None = None,
        cache: AttributionCache | None = None, known: KnownItems | None = None,
        generic: GenericNeurons | Mapping[str, GenericNeurons] | None = None) -> dict:
    """Curves of every known item; ``measure_queries`` > 0 measures the first N queries of a
    fact (default: all)."""
    sizes = tuple(sorted(set(sizes)))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive numbers of neurons, got {sizes}")
    # a random set of the same shape must fit beside the set in one layer
    skipped_sizes = [k for k in sizes if k > lm.n_neurons // 2]
    sizes = tuple(k for k in sizes if k <= lm.n_neurons // 2)
    if not sizes:
        raise ValueError(f"every size is above half a layer ({lm.n_neurons // 2} neurons)")
    known = probe_known(lm, facts, languages, config, known)
    cache = {} if cache is None else cache
    clean = CleanProbs(lm)
    items = []
    for fact in facts:
        located = {m: locate_fact(lm, fact, languages,
                                  config.model_copy(update={"method": m, "degenerate": False}),
                                  cache, known, generic_for(generic, m)) for m in methods}
        for lang in known.languages_of(fact.id):
            item_seed = str(stable_seed(seed, fact.id, lang))
            rankings = {}
            for method in methods:
                exclude = LeftOut.of(generic_for(generic, method)).excluded(fact.relation)
                rankings[method] = top_neurons(located[method].languages[lang].scores,
                                               sizes[-1], exclude)
            rankings[RANDOM] = random_ranking(lm.n_layers, lm.n_neurons, sizes[-1], item_seed)
            own = queries(fact, lang)[:measure_queries or None]
            controls = [queries(g, lang)[:1] for g in unrelated_facts(fact, facts, lang,
                                                                      unrelated, seed, known)]
            items.append({"fact_id": fact.id, "language": lang,
                          "control_facts": len(controls),
                          "ranked": {m: [list(n) for n in r] for m, r in rankings.items()},
                          "curves": item_curves(lm, rankings, own, controls, sizes, clean,
                                                draws, item_seed)})
        if progress:
            progress(fact.id)
    names = (*methods, RANDOM)
    return {"items": items, "sizes": list(sizes), "skipped_sizes": skipped_sizes,
            "methods": list(names),
            "summary": summarize(items, names, sizes, languages, seed),
            "knowledge": known.to_summary(), "draws": draws, "unrelated": unrelated}


def _curve(item: dict, method: str, sizes: Sequence[int], mode: str, key: str) -> list | None:
    """One item's curve of ``key`` (selectivity or specificity) over ``sizes``, or None."""
    by_k = item["curves"].get(method, {})
    values = [by_k.get(str(k), {}).get(mode, {}).get(key) for k in sizes]
    return None if any(v is None for v in values) else values


def summarize(items: list[dict], methods: Sequence[str], sizes: Sequence[int],
              languages: Sequence[str], seed: int = 0) -> dict:
    """Per method: per k and mode the controls summary (pooled), and the areas under the
    selectivity and specificity curves, pooled and per language, with intervals over facts."""
    summary: dict = {}
    for method in methods:
        per_k = {str(k): {mode: control_summary(
            [(i["fact_id"], i["curves"][method][str(k)][mode]) for i in items
             if str(k) in i["curves"].get(method, {})], seed) for mode in MODES}
            for k in sizes}
        areas: dict = {}
        for mode in MODES:
            for key in ("selectivity", "specificity"):
                pairs = [(i["fact_id"], i["language"], curve_area(curve)) for i in items
                         if (curve := _curve(i, method, sizes, mode, key)) is not None]
                areas[f"{mode}_{key}"] = {
                    "all": clustered_interval([(f, a) for f, _, a in pairs], seed=seed),
                    **{lang: clustered_interval([(f, a) for f, la, a in pairs if la == lang],
                                                seed=seed) for lang in languages}}
        summary[method] = {"per_k": per_k, "area": areas}
    return summary


def table(result: dict) -> str:
    s, sizes = result["summary"], result["sizes"]
    methods = result["methods"]
    curve_rows = [[method, mode, *[s[method]["per_k"][str(k)][mode]["selectivity"]["value"]
                                   for k in sizes]]
                  for mode in MODES for method in methods]
    spec_rows = [[method, mode, *[s[method]["per_k"][str(k)][mode]["specificity"]["value"]
                                  for k in sizes]]
                 for mode in MODES for method in methods]
    languages = [lang for lang in next(iter(s.values()))["area"]["suppress_selectivity"]
                 if lang != "all"]
    area_rows = [[method, f"{mode} {key}", fmt_ci(s[method]["area"][f"{mode}_{key}"]["all"]),
                  *[fmt_ci(s[method]["area"][f"{mode}_{key}"][lang]) for lang in languages]]
                 for mode in MODES for key in ("selectivity", "specificity")
                 for method in methods]
    header = ["method", "intervention", *[f"k={k}" for k in sizes]]
    return ("Median selectivity (effect minus a random set of the same size per layer) of the "
            "top-k neurons:\n\n" + markdown_table(header, curve_rows)
            + "\n\nMedian specificity (effect on the fact minus effect on unrelated facts of "
              "other relations):\n\n" + markdown_table(header, spec_rows)
            + "\n\nArea under the curves (mean height over the k grid) with 95% intervals over "
              "facts, pooled and per language:\n\n"
            + markdown_table(["method", "curve", "all languages", *languages], area_rows)
            + f"\n\n{len(result['items'])} items; {result['draws']} random draws and "
              f"{result['unrelated']} unrelated facts per set. "
            + knowledge_line(result["knowledge"]))


PAIRS = (("amig", "ig"), ("matrice", "amig"), ("matrice", "ig"), ("amig", RANDOM))


def _win(a: list | None, b: list | None) -> float | None:
    """:func:`paired_outcome` of the two curves' areas (a method without a curve on the item,
    too few neurons, loses it)."""
    return paired_outcome(None if a is None else curve_area(a),
                          None if b is None else curve_area(b))


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """Pooled curve areas per method, and paired shares per item (the share of items where one
    method's curve area beats another's; ties count half; a method without a curve on an item
    loses it), intervals over facts."""
    sizes, methods = result["sizes"], result["methods"]
    out: dict = {"area": {m: {curve: result["summary"][m]["area"][curve]["all"]
                              for curve in ("suppress_selectivity", "suppress_specificity")}
                          for m in methods}, "paired": {}}
    for a, b in PAIRS:
        if a not in methods or b not in methods:
            continue
        out["paired"][f"{a} > {b}"] = {}
        for key in ("selectivity", "specificity"):
            wins = [(i["fact_id"], w) for i in result["items"]
                    if (w := _win(_curve(i, a, sizes, "suppress", key),
                                  _curve(i, b, sizes, "suppress", key))) is not None]
            out["paired"][f"{a} > {b}"][f"suppress_{key}"] = clustered_interval(
                wins, lambda v: sum(v) / len(v), seed)
    return out

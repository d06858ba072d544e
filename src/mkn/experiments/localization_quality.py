"""Experiment 1: localization quality (AMIG Eq. 11), ``ig`` (B-KN) vs ``amig`` vs ``matrice``.

For each fact and language the model knows it in, suppress (x0) and enhance (x2) the fact's
knowledge neurons found by each method and measure the relative change of p(gold) on the fact's
own queries, beside its controls (:mod:`mkn.interventions.controls`): random sets with as many
neurons in each layer (``draws`` seeded draws), as many *magnitude-matched* random sets (same
layers, neurons of similar clean activation magnitude on the fact's first query:
:func:`mkn.interventions.controls.magnitude_matched_sets`), ``unrelated`` facts of other
relations and up to ``unrelated`` other facts of the *same* relation in the same language, giving
*selectivity*, *specificity* and *relation specificity* (the effect beyond the same relation's
facts: high only for a set that stores this fact, not its relation) per item. AMIG's success
ratio stays:

    SR = |d_rel / d_unrel| (enhance) + |d_rel / d_unrel| (suppress)

with ``d_unrel`` measured, as AMIG does, on one random other fact of the sample (seeded).

Reported per method: median SR with a bootstrap 95% interval, the mean, the share of items on
which it has the highest SR, and median effect, controls, selectivity and specificity per
intervention with intervals that resample facts. AMIG drops outliers (suppression changes > 20,
enhancement > 250); we keep every item and report medians. Items where a method finds no neuron
get no numbers for that method and are counted.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence

from mkn.experiments.common import (
    CONTROL_HEADER,
    Progress,
    control_row,
    control_summary,
    generic_for,
    knowledge_line,
    markdown_table,
    probe_known,
    queries,
    same_relation_facts,
    unrelated_facts,
)
from mkn.experiments.metrics import clustered_interval, paired_outcome, success_ratio
from mkn.interventions.controls import (
    DEFAULT_DRAWS,
    DEFAULT_UNRELATED,
    CleanProbs,
    ControlledEffect,
    clean_activations,
    magnitude_matched_sets,
    measure_sets,
    random_sets,
    stable_seed,
)
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import AttributionCache, LocateConfig, locate_fact
from mkn.models.loading import LanguageModel

METHODS = ("ig", "amig", "matrice")
MODES = ("suppress", "enhance")
PHASES = 1  # progress ticks per fact


def measure(lm: LanguageModel, neurons: list, own: list, sr_unrelated: list,
            controls: list[list], clean: CleanProbs, draws: int, seed: str,
            same_relation: Sequence[list] = (), activations=None) -> dict:
    """One method's numbers on one item: per mode the controlled effect, and SR (every set,
    unrelated fact, same-relation fact and random draw of both modes in one batched pass).
    ``activations`` (the clean neurons of the fact's first query) add magnitude-matched random
    draws (:func:`magnitude_matched_sets`) beside the layer-matched ones."""
    jobs, layout, sets = [], {}, {}
    for mode in MODES:
        drawn = random_sets(neurons, lm.n_neurons, draws, f"{seed}/{mode}")
        matched = ([] if activations is None else
                   magnitude_matched_sets(neurons, activations, draws, f"{seed}/{mode}"))
        layout[mode], sets[mode] = len(jobs), (drawn, matched)
        jobs += [(neurons, mode, own), (neurons, mode, sr_unrelated),
                 *[(neurons, mode, c) for c in controls], *[(r, mode, own) for r in drawn],
                 *[(r, mode, own) for r in matched],
                 *[(neurons, mode, c) for c in same_relation]]
    changes = measure_sets(lm, jobs, clean)
    entry: dict = {"neurons": len(neurons)}
    n_matched = 0 if activations is None else draws
    for mode, at in layout.items():
        effect, sr_change = changes[at], changes[at + 1]
        rest = iter(changes[at + 2:])
        control_changes = [next(rest) for _ in controls]
        random_effects = [next(rest) for _ in range(draws)]
        matched_effects = [next(rest) for _ in range(n_matched)]
        relation_changes = [next(rest) for _ in same_relation]
        entry[f"{mode}_related"], entry[f"{mode}_unrelated"] = effect, sr_change
        entry[mode] = ControlledEffect.record(
            mode, neurons, effect, random_effects, control_changes, sets[mode][0],
            matched_effects, sets[mode][1], relation_changes).to_dict()
    entry["sr"] = success_ratio(entry["enhance_related"], entry["enhance_unrelated"],
                                entry["suppress_related"], entry["suppress_unrelated"])
    return entry


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, methods: tuple[str, ...] = METHODS, draws: int = DEFAULT_DRAWS,
        unrelated: int = DEFAULT_UNRELATED, progress: Progress | None = None,
        cache: AttributionCache | None = None, known: KnownItems | None = None,
        generic: GenericNeurons | Mapping[str, GenericNeurons] | None = None) -> dict:
    if len(facts) < 2:
        raise ValueError("localization quality needs at least 2 facts (one as the unrelated)")
    known = probe_known(lm, facts, languages, config, known)
    cache = {} if cache is None else cache
    clean = CleanProbs(lm)
    items = []
    for fact in facts:
        sr_rng = random.Random(stable_seed(seed, fact.id, "sr-unrelated"))
        sr_other = sr_rng.choice([g for g in facts if g.id != fact.id])
        located = {m: locate_fact(lm, fact, languages,
                                  config.model_copy(update={"method": m, "degenerate": False}),
                                  cache, known, generic_for(generic, m))
                   for m in methods}
        for lang in known.languages_of(fact.id):
            controls = unrelated_facts(fact, facts, lang, unrelated, seed, known)
            kin = same_relation_facts(fact, facts, lang, unrelated, seed, known)
            own = queries(fact, lang)
            activations = clean_activations(lm, own[0], clean)
            item = {"fact_id": fact.id, "language": lang, "unrelated_fact": sr_other.id,
                    "control_facts": [g.id for g in controls],
                    "same_relation_facts": [g.id for g in kin]}
            for method in methods:
                neurons = located[method].languages[lang].neurons
                item[method] = (measure(lm, neurons, own, queries(sr_other, lang),
                                        [queries(g, lang) for g in controls], clean, draws,
                                        str(stable_seed(seed, fact.id, lang)),
                                        [queries(g, lang) for g in kin], activations)
                                if neurons else {"neurons": 0, "sr": None})
            items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "methods": list(methods), "summary": summarize(items, methods, seed),
            "knowledge": known.to_summary(), "draws": draws, "unrelated": unrelated}


def summarize(items: list[dict], methods: tuple[str, ...], seed: int = 0) -> dict:
    summary = {}
    for method in methods:
        srs = [i[method]["sr"] for i in items if i[method]["sr"] is not None]
        summary[method] = {
            "items": len(srs), "without_neurons": len(items) - len(srs),
            "facts": len({i["fact_id"] for i in items if i[method]["sr"] is not None}),
            "median_sr": statistics.median(srs) if srs else None,
            "median_sr_ci95": clustered_interval(  # resampling facts, as every interval does
                [(i["fact_id"], i[method]["sr"]) for i in items
                 if i[method]["sr"] is not None], seed=seed)["ci95"] if srs else None,
            "mean_sr": statistics.fmean(srs) if srs else None,
            "median_neurons": statistics.median(i[method]["neurons"] for i in items)
            if items else None,
            "median_suppress_related": _median(items, method, "suppress_related"),
            "median_enhance_related": _median(items, method, "enhance_related"),
            "controls": {mode: control_summary([(i["fact_id"], i[method][mode]) for i in items
                                                if mode in i[method]], seed)
                         for mode in MODES},
        }
    summary["pairwise"] = {f"{a} > {b}": pairwise(items, a, b)
                           for a, b in PAIRS if a in methods and b in methods}
    return summary


PAIRS = (("amig", "ig"), ("matrice", "amig"), ("matrice", "ig"))


def pair_outcome(item: dict, a: str, b: str) -> float | None:
    """1 when ``a`` has the higher SR on ``item``, 0 when ``b`` has, 0.5 for a tie; a method
    that finds no neurons loses to one that does (None when neither does)."""
    return paired_outcome(item[a]["sr"], item[b]["sr"])


def pairwise(items: list[dict], a: str, b: str) -> dict:
    """Strict wins, ties and losses of ``a`` against ``b`` over items (no three-way split)."""
    outcomes = [o for o in (pair_outcome(i, a, b) for i in items) if o is not None]
    return {"wins": outcomes.count(1.0), "ties": outcomes.count(0.5),
            "losses": outcomes.count(0.0), "items": len(outcomes)}


def _median(items: list[dict], method: str, key: str) -> float | None:
    values = [i[method][key] for i in items if key in i[method]]
    return statistics.median(values) if values else None


def table(result: dict, methods: tuple[str, ...] | None = None) -> str:
    s = result["summary"]
    methods = methods or tuple(result.get("methods") or METHODS)
    rows = []
    for m in methods:
        ci = s[m]["median_sr_ci95"]
        rows.append([m, s[m]["items"], s[m]["without_neurons"], s[m]["median_neurons"],
                     s[m]["median_sr"], f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else None,
                     s[m]["mean_sr"]])
    sr = markdown_table(["method", "items", "no neurons", "median #neurons", "median SR",
                         "95% CI (facts resampled)", "mean SR"], rows)
    pairs = s.get("pairwise") or {}
    if pairs:
        sr += "\n\nPairwise on SR (a method with no neurons on an item loses it):\n\n" + \
            markdown_table(["pair", "items", "wins", "ties", "losses"],
                           [[pair, p["items"], p["wins"], p["ties"], p["losses"]]
                            for pair, p in pairs.items()])
    controls = markdown_table(["method", *CONTROL_HEADER],
                              [[m, *control_row(mode, s[m]["controls"][mode])]
                               for m in methods for mode in MODES])
    return (f"{sr}\n\nEffects (relative change of p(gold)) beside a random set of the same "
            f"size per layer ({result['draws']} draws), as many magnitude-matched random sets "
            f"(same layers, similar clean activation), {result['unrelated']} unrelated facts "
            "of other relations and up to as many facts of the same relation (relation "
            "specificity: the effect beyond them; read it first to tell a fact's neurons from "
            f"its relation's):\n\n{controls}\n\n{knowledge_line(result['knowledge'])}")


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """Median SR per method and paired shares (a beats b; a tie counts half) over (fact,
    language) items, and per method and intervention the selectivity and specificity, with
    intervals that resample facts."""
    items = result["items"]
    methods = result.get("methods") or list(dict.fromkeys(
        key for item in items for key, value in item.items()
        if isinstance(value, dict) and "sr" in value))
    out = {"median_sr": {m: clustered_interval([(i["fact_id"], i[m]["sr"]) for i in items
                                                if i[m]["sr"] is not None], seed=seed)
                         for m in methods}, "paired": {},
           "controls": {m: {mode: {key: control_interval(items, m, mode, key, seed)
                                   for key in ("selectivity", "specificity",
                                               "matched_selectivity", "relation_specificity")}
                            for mode in ("suppress", "enhance")} for m in methods}}
    for a, b in PAIRS:
        if a in methods and b in methods:
            wins = [(i["fact_id"], o) for i in items
                    if (o := pair_outcome(i, a, b)) is not None]
            out["paired"][f"{a} > {b}"] = clustered_interval(wins, statistics.fmean, seed)
    return out




def control_interval(items: list[dict], method: str, mode: str, key: str, seed: int) -> dict:
    """Median of one control number (selectivity, specificity) of ``method`` over items."""
    return clustered_interval([(i["fact_id"], i[method][mode][key]) for i in items
                               if mode in i[method] and i[method][mode].get(key) is not None],
                              seed=seed)

"""Experiment 1: localization quality (AMIG Eq. 11), ``ig`` (B-KN) vs ``amig`` vs ``matrice``.

For each fact and language, suppress (x0) and enhance (x2) the fact's knowledge neurons found by
each method; measure the relative change of p(gold) on the fact's own queries (related) and on
an unrelated fact's queries (a random other fact of the sample, seeded), and score

    SR = |d_rel / d_unrel| (enhance) + |d_rel / d_unrel| (suppress).

Reported: median SR per method with a bootstrap 95% interval, the mean, and the share of
(fact, language) items on which each method has the highest SR. AMIG drops outliers
(suppression changes > 20, enhancement > 250); we keep every item and report medians instead.
Items where a method finds no neuron get no SR for that method and are counted, not dropped
silently.
"""

from __future__ import annotations

import random
import statistics

from mkn.experiments.common import (
    Progress,
    clean_probs,
    markdown_table,
    mean_relative_change,
    queries,
)
from mkn.experiments.metrics import bootstrap_ci, success_ratio, win_shares
from mkn.localization.locate import AttributionCache, LocateConfig, locate_fact
from mkn.models.loading import LanguageModel

METHODS = ("ig", "amig", "matrice")


PHASES = 1  # progress ticks per fact


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, methods: tuple[str, ...] = METHODS,
        progress: Progress | None = None, cache: AttributionCache | None = None) -> dict:
    if len(facts) < 2:
        raise ValueError("localization quality needs at least 2 facts (one as the unrelated)")
    rng = random.Random(seed)
    cache = {} if cache is None else cache
    items = []
    for fact in facts:
        unrelated = rng.choice([g for g in facts if g.id != fact.id])
        located = {m: locate_fact(lm, fact, languages,
                                  config.model_copy(update={"method": m, "degenerate": False}),
                                  cache)
                   for m in methods}
        for lang in languages:
            item = {"fact_id": fact.id, "language": lang, "unrelated_fact": unrelated.id}
            query_sets = {"related": queries(fact, lang), "unrelated": queries(unrelated, lang)}
            before = {kind: clean_probs(lm, qs) for kind, qs in query_sets.items()}
            for method in methods:
                neurons = located[method].languages[lang].neurons
                if not neurons:
                    item[method] = {"neurons": 0, "sr": None}
                    continue
                changes = {
                    f"{mode}_{kind}": mean_relative_change(lm, qs, neurons, mode,
                                                           before=before[kind])
                    for mode in ("enhance", "suppress") for kind, qs in query_sets.items()
                }
                sr = success_ratio(changes["enhance_related"], changes["enhance_unrelated"],
                                   changes["suppress_related"], changes["suppress_unrelated"])
                item[method] = {"neurons": len(neurons), "sr": sr, **changes}
            items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "summary": summarize(items, methods)}


def summarize(items: list[dict], methods: tuple[str, ...]) -> dict:
    summary = {}
    for method in methods:
        srs = [i[method]["sr"] for i in items if i[method]["sr"] is not None]
        summary[method] = {
            "items": len(srs), "without_neurons": len(items) - len(srs),
            "median_sr": statistics.median(srs) if srs else None,
            "median_sr_ci95": bootstrap_ci(srs) if srs else None,
            "mean_sr": statistics.fmean(srs) if srs else None,
            "median_neurons": statistics.median(i[method]["neurons"] for i in items),
            "median_suppress_related": _median(items, method, "suppress_related"),
            "median_enhance_related": _median(items, method, "enhance_related"),
        }
    complete = [i for i in items if all(i[m]["sr"] is not None for m in methods)]
    wins = win_shares({m: [i[m]["sr"] for i in complete] for m in methods})
    for method in methods:
        summary[method]["win_share"] = wins[method] if complete else None
    summary["compared_items"] = len(complete)
    return summary


def _median(items: list[dict], method: str, key: str) -> float | None:
    values = [i[method][key] for i in items if key in i[method]]
    return statistics.median(values) if values else None


def table(result: dict, methods: tuple[str, ...] = METHODS) -> str:
    s = result["summary"]
    rows = []
    for m in methods:
        ci = s[m]["median_sr_ci95"]
        rows.append([m, s[m]["items"], s[m]["without_neurons"], s[m]["median_neurons"],
                     s[m]["median_sr"], f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else None,
                     s[m]["mean_sr"], s[m]["median_suppress_related"],
                     s[m]["median_enhance_related"], s[m]["win_share"]])
    return markdown_table(["method", "items", "no neurons", "median #neurons", "median SR",
                           "95% CI", "mean SR", "median d_rel suppress", "median d_rel enhance",
                           f"wins (of {s['compared_items']})"], rows)

"""Experiment 4: knowledge enhancement across languages.

For facts the model gets wrong in one language (the *weak* one) but right in others, enhance
(x ``factor``) the language-agnostic neurons found from the languages it gets right (present in
at least a fraction ``q`` of them; one language's own neurons when only one is right) and
measure, in the weak language: accuracy (greedy prediction = gold) and p(gold) before/after; and
the cost: the same on the other facts of the sample (unrelated) in the weak language.
"""

from __future__ import annotations

import statistics

from mkn.attribution.api import predict_many
from mkn.experiments.common import Progress, locate_all, markdown_table, queries
from mkn.interventions.activation import enhance
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.localization.neurons import shared_neurons
from mkn.models.loading import LanguageModel

PHASES = 2  # progress ticks per fact: locating, then measuring


def _evaluate(lm: LanguageModel, qs) -> tuple[list[bool], list[float]]:
    predictions = predict_many(lm, qs)
    return [p.correct for p in predictions], [p.prob for p in predictions]


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, factor: float = 2.0, q: float = 0.5,
        progress: Progress | None = None, cache: AttributionCache | None = None) -> dict:
    located = locate_all(lm, facts, languages, config.model_copy(update={"degenerate": False}),
                         progress, cache)
    items, ineligible = [], 0
    for fact in facts:
        result = located[fact.id]
        strong = [lang for lang in languages if result.languages[lang].known]
        weak = [lang for lang in languages if not result.languages[lang].known]
        if not strong or not weak:
            ineligible += 1
        neurons = shared_neurons({lang: result.languages[lang].neurons for lang in strong}, q)
        for lang in weak if strong else []:
            item = {"fact_id": fact.id, "weak": lang, "strong": strong, "neurons": len(neurons)}
            if neurons:
                own = queries(fact, lang)
                others = [qr for g in facts if g.id != fact.id for qr in queries(g, lang)[:1]]
                item["before"] = _evaluate(lm, own)
                item["unrelated_before"] = _evaluate(lm, others)
                with enhance(lm, neurons, factor=factor):
                    item["after"] = _evaluate(lm, own)
                    item["unrelated_after"] = _evaluate(lm, others)
            items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "ineligible_facts": ineligible, "factor": factor,
            "summary": summarize(items)}


def _accuracy(items: list[dict], key: str) -> float | None:
    flags = [c for i in items for c in i[key][0]]
    return sum(flags) / len(flags) if flags else None


def _median_prob(items: list[dict], key: str) -> float | None:
    probs = [p for i in items for p in i[key][1]]
    return statistics.median(probs) if probs else None


def summarize(items: list[dict]) -> dict:
    measured = [i for i in items if "before" in i]
    return {
        "weak_fact_languages": len(items), "without_neurons": len(items) - len(measured),
        **{f"{what}_{when}": _accuracy(measured, key)
           for what, prefix in (("accuracy", ""), ("unrelated_accuracy", "unrelated_"))
           for when in ("before", "after") for key in [f"{prefix}{when}"]},
        **{f"median_p_{when}": _median_prob(measured, when) for when in ("before", "after")},
    }


def table(result: dict) -> str:
    s = result["summary"]
    rows = [["weak language (own queries)", s["accuracy_before"], s["accuracy_after"],
             s["median_p_before"], s["median_p_after"]],
            ["unrelated facts (same language)", s["unrelated_accuracy_before"],
             s["unrelated_accuracy_after"], None, None]]
    return (markdown_table(["queries", "accuracy before", "accuracy after",
                            "median p(gold) before", "median p(gold) after"], rows)
            + f"\n\n{s['weak_fact_languages']} (fact, weak language) pairs, "
              f"{s['without_neurons']} without shared neurons; "
              f"{result['ineligible_facts']} facts right or wrong in every language.")

"""Experiment 4: knowledge enhancement across languages.

For facts the model knows in some languages (the *strong* ones, :mod:`mkn.localization.knowledge`)
but not in another (the *weak* one), enhance (x ``factor``) the language-agnostic neurons found
from the strong languages (present in at least a fraction ``q`` of them; one language's own
neurons when only one is strong) and measure, in the weak language: whether the item becomes
*known* by the run's criterion (the same one that made it weak: gold first among the candidates
where the data has them, else greedy decoding; one criterion for knowing and for success),
accuracy (greedy prediction = gold, a second, stricter column) and p(gold) before/after; and the
cost: the same on the other facts of the sample (unrelated) in the weak language, at most ``cost``
of them (a sample seeded by the item when there are more: the cost of a study would otherwise
grow with the square of its facts). The relative
change of p(gold) is shown beside its controls (:mod:`mkn.interventions.controls`): random sets
with as many neurons per layer (``draws`` draws) and ``unrelated`` facts of other relations in
the weak language.
"""

from __future__ import annotations

import random
import statistics

from mkn.attribution.api import predict_many
from mkn.experiments.common import (
    CONTROL_HEADER,
    CleanPredictions,
    Progress,
    control_row,
    control_summary,
    knowledge_line,
    locate_all,
    markdown_table,
    queries,
    same_relation_facts,
    unrelated_facts,
)
from mkn.experiments.metrics import accuracy, clustered_interval
from mkn.interventions.activation import enhance
from mkn.interventions.controls import (
    DEFAULT_DRAWS,
    DEFAULT_UNRELATED,
    CleanProbs,
    controlled_effect,
    stable_seed,
)
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems, known_items, probe
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.localization.neurons import shared_neurons
from mkn.models.loading import LanguageModel

PHASES = 2  # progress ticks per fact: locating, then measuring
COST_FACTS = 32  # other facts whose accuracy an enhancement may cost, per item


def cost_queries(fact, facts: list, lang: str, cost: int, seed: int) -> list:
    """The first query in ``lang`` of every other fact that has one, or of ``cost`` of them
    (sampled, seeded by the item; in the sample's order) when there are more."""
    pool = [g for g in facts if g.id != fact.id and queries(g, lang)]
    if len(pool) > cost:
        chosen = set(random.Random(stable_seed(seed, fact.id, lang, "cost")).sample(
            range(len(pool)), cost))
        pool = [g for i, g in enumerate(pool) if i in chosen]
    return [queries(g, lang)[0] for g in pool]


def _evaluate(lm: LanguageModel, qs, clean: CleanPredictions | None = None
              ) -> tuple[list[bool], list[float]]:
    """Greedy correctness and p(gold) of ``qs`` (from ``clean`` when nothing is intervened on)."""
    predictions = clean(qs) if clean is not None else predict_many(lm, qs)
    return [p.correct for p in predictions], [p.prob for p in predictions]


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, factor: float = 2.0, q: float = 0.5, draws: int = DEFAULT_DRAWS,
        unrelated: int = DEFAULT_UNRELATED, progress: Progress | None = None,
        cache: AttributionCache | None = None, known: KnownItems | None = None,
        generic: GenericNeurons | None = None, cost: int = COST_FACTS) -> dict:
    if cost < 1:
        raise ValueError(f"enhancement: cost must be at least 1 fact, got {cost}")
    # strong = known under the run's criterion (with "any", marked known by "auto")
    criterion = "auto" if config.known == "any" else config.known
    known = known if known is not None and known.criterion == criterion else known_items(
        lm, facts, languages, criterion)
    known.require_some("strong (known) languages", advice=(
        "enhancement needs facts the model knows in some language, whatever --known says "
        "(with --known any its strong languages are still judged by auto); draw facts the "
        "model knows in at least one language (mkn probe shows which)"))
    located = locate_all(lm, facts, languages, config.model_copy(update={"degenerate": False,
                                                                         "known": criterion}),
                         progress, cache, known, generic)
    clean, clean_predictions = CleanProbs(lm), CleanPredictions(lm)
    items, ineligible = [], 0
    for fact in facts:
        result = located[fact.id]
        strong = list(result.languages)
        weak = list(result.skipped)
        if not strong or not weak:
            ineligible += 1
        neurons = shared_neurons({lang: result.languages[lang].neurons for lang in strong}, q)
        for lang in weak if strong else []:
            item = {"fact_id": fact.id, "weak": lang, "strong": strong, "neurons": len(neurons)}
            if neurons:
                own = queries(fact, lang)
                others = cost_queries(fact, facts, lang, cost, seed)
                item["before"] = _evaluate(lm, own, clean_predictions)
                item["unrelated_before"] = _evaluate(lm, others, clean_predictions)
                with enhance(lm, neurons, factor=factor):
                    item["after"] = _evaluate(lm, own)
                    item["unrelated_after"] = _evaluate(lm, others)
                    item["known_after"] = probe(lm, [fact], [lang])[(fact.id, lang)].known(
                        criterion)
                controls = [queries(g, lang) for g in unrelated_facts(fact, facts, lang,
                                                                      unrelated, seed)]
                kin = [queries(g, lang) for g in same_relation_facts(fact, facts, lang,
                                                                     unrelated, seed)]
                item["controls"] = controlled_effect(
                    lm, neurons, "enhance", own, controls, draws,
                    stable_seed(seed, fact.id, lang), factor, clean,
                    same_relation=kin).to_dict()
            items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "ineligible_facts": ineligible, "factor": factor,
            "summary": summarize(items, seed), "knowledge": known.to_summary(), "draws": draws,
            "unrelated": unrelated, "cost": cost}


def _accuracy(items: list[dict], key: str) -> float | None:
    flags = [c for i in items for c in i[key][0]]
    return sum(flags) / len(flags) if flags else None


def _median_prob(items: list[dict], key: str) -> float | None:
    probs = [p for i in items for p in i[key][1]]
    return statistics.median(probs) if probs else None


def summarize(items: list[dict], seed: int = 0) -> dict:
    measured = [i for i in items if "before" in i]
    return {
        "weak_fact_languages": len(items), "without_neurons": len(items) - len(measured),
        **{f"{what}_{when}": _accuracy(measured, key)
           for what, prefix in (("accuracy", ""), ("unrelated_accuracy", "unrelated_"))
           for when in ("before", "after") for key in [f"{prefix}{when}"]},
        **{f"median_p_{when}": _median_prob(measured, when) for when in ("before", "after")},
        "known_after": (statistics.fmean(i["known_after"] for i in measured)
                        if measured and all("known_after" in i for i in measured) else None),
        "controls": control_summary([(i["fact_id"], i["controls"]) for i in measured], seed),
    }


def table(result: dict) -> str:
    s = result["summary"]
    rows = [["weak language (own queries)", 0.0 if s.get("known_after") is not None else None,
             s.get("known_after"), s["accuracy_before"], s["accuracy_after"],
             s["median_p_before"], s["median_p_after"]],
            ["unrelated facts (same language)", None, None, s["unrelated_accuracy_before"],
             s["unrelated_accuracy_after"], None, None]]
    return (markdown_table(["queries", "known before", "known after (the run's criterion)",
                            "greedy accuracy before", "greedy accuracy after",
                            "median p(gold) before", "median p(gold) after"], rows)
            + f"\n\n{s['weak_fact_languages']} (fact, weak language) pairs, "
              f"{s['without_neurons']} without shared neurons; "
              f"{result['ineligible_facts']} facts known or unknown in every language.\n\n"
              f"Relative change of p(gold) in the weak language beside a random set of the same "
              f"size per layer ({result['draws']} draws) and {result['unrelated']} unrelated "
              "facts of other relations:\n\n"
            + markdown_table(CONTROL_HEADER, [control_row("enhance", s["controls"])])
            + "\n\n" + knowledge_line(result["knowledge"], "strong languages are the known ones, "
                                       "weak ones the others"))


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    measured = [i for i in result["items"] if "before" in i]

    def gain(key: str) -> list[tuple[str, float]]:
        return [(i["fact_id"], accuracy(i[f"{key}after"][0]) - accuracy(i[f"{key}before"][0]))
                for i in measured if i[f"{key}before"][0]]

    known_after = [(i["fact_id"], float(i["known_after"])) for i in measured
                   if "known_after" in i]
    return {"known_gain_weak_language": clustered_interval(known_after, statistics.fmean, seed),
            "accuracy_gain_weak_language": clustered_interval(gain(""), statistics.fmean, seed),
            "accuracy_change_unrelated": clustered_interval(gain("unrelated_"), statistics.fmean,
                                                            seed),
            **{key: clustered_interval([(i["fact_id"], i["controls"][key]) for i in measured
                                        if i.get("controls", {}).get(key) is not None],
                                       seed=seed)
               for key in ("selectivity", "specificity", "relation_specificity")}}

"""Experiment 9: per-fact query consistency, and whether it predicts editing success.

Chen et al. (ICLR 2025, "Knowledge Localization: Mission Not Accomplished? Enter Query
Localization!") split facts into *consistent* knowledge, whose queries (paraphrases) share their
knowledge neurons, and *inconsistent* knowledge, whose queries do not; only the first fits the
knowledge-localization assumption, and editing it through its neurons works better.

For each (fact, language) item the model knows with at least two attributed queries:

- *consistency*: the mean Jaccard overlap of the knowledge-neuron sets of every pair of its
  queries (generic and relation neurons left out, as everywhere);
- *consistent*: its consistency is above the 95th percentile of the overlap between the sets of
  two *different* facts of its relation in its language (what two facts share anyway: a
  threshold read from the data, never tuned on the outcome below);
- *editing success*: its language set suppressed (x0) on every query of the item, beside random
  sets of the same shape (:mod:`mkn.interventions.controls`): the selectivity.

Reported: the share of consistent items (interval over facts); the median selectivity of
consistent minus inconsistent items, and Spearman's rank correlation of consistency and
selectivity, each with a bootstrap interval that resamples facts. A part whose queries are one
per item (BMLAMA) has no consistency to measure.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence

from mkn.experiments.common import (
    Progress,
    fmt_ci,
    knowledge_line,
    locate_known,
    markdown_table,
    queries,
)
from mkn.experiments.metrics import clustered_interval, spearman
from mkn.interventions.controls import DEFAULT_DRAWS, CleanProbs, controlled_effect, stable_seed
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.localization.neurons import jaccard
from mkn.models.loading import LanguageModel

PHASES = 2  # progress ticks per fact: locating, then measuring
NULL_QUANTILE = 0.95  # consistent: above this quantile of the overlap of different facts
MIN_GROUP_FACTS = 3  # facts a group needs before the two groups are compared


def consistency(query_sets: Sequence[Sequence]) -> float | None:
    """Mean Jaccard over every pair of a fact's per-query neuron sets (None for fewer than 2)."""
    pairs = list(itertools.combinations(query_sets, 2))
    return statistics.fmean(jaccard(a, b) for a, b in pairs) if pairs else None


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (the nearest rank above: a value of the data)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, draws: int = DEFAULT_DRAWS, progress: Progress | None = None,
        cache: AttributionCache | None = None, known: KnownItems | None = None,
        generic: GenericNeurons | Mapping[str, GenericNeurons] | None = None) -> dict:
    known, located = locate_known(lm, facts, languages, config, progress, cache, known,
                                  generic)
    clean = CleanProbs(lm)
    items = []
    for fact in facts:
        for lang, r in located[fact.id].languages.items():
            value = consistency(r.query_neurons)
            if value is None:
                continue
            others = [jaccard(r.neurons, g.languages[lang].neurons)
                      for other, g in located.items()
                      if other != fact.id and g.relation == fact.relation
                      and lang in g.languages]
            item = {"fact_id": fact.id, "relation": fact.relation, "language": lang,
                    "queries": len(r.query_neurons), "consistency": value,
                    "between_facts": others, "neurons": len(r.neurons)}
            if r.neurons:
                item["suppression"] = controlled_effect(
                    lm, r.neurons, "suppress", queries(fact, lang), draws=draws,
                    seed=stable_seed(seed, fact.id, lang, "consistency"), clean=clean).to_dict()
            items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "draws": draws, "null_quantile": NULL_QUANTILE,
            "summary": summarize(items, seed), "knowledge": known.to_summary()}


def thresholds(items: Sequence[dict]) -> dict[tuple[str, str], float]:
    """Per (relation, language): the :data:`NULL_QUANTILE` quantile of the overlap between
    different facts' sets (the items' ``between_facts``)."""
    pools: dict[tuple[str, str], list[float]] = {}
    for item in items:
        pools.setdefault((item["relation"], item["language"]), []).extend(item["between_facts"])
    return {key: quantile(pool, NULL_QUANTILE) for key, pool in pools.items() if pool}


def _difference(pairs: Sequence[tuple[bool, float]]) -> float:
    """Median selectivity of consistent minus inconsistent items (0 when a replicate lacks a
    group: no difference can be seen)."""
    a = [v for c, v in pairs if c]
    b = [v for c, v in pairs if not c]
    return statistics.median(a) - statistics.median(b) if a and b else 0.0


def _correlation(pairs: Sequence[tuple[float, float]]) -> float:
    return spearman([x for x, _ in pairs], [y for _, y in pairs]) or 0.0


def summarize(items: Sequence[dict], seed: int = 0) -> dict:
    """The share of consistent items, and consistency against editing success (module
    docstring); a comparison with fewer than :data:`MIN_GROUP_FACTS` facts in a group is not
    made (None)."""
    cut = thresholds(items)
    judged = [(i, i["consistency"] > cut[(i["relation"], i["language"])]) for i in items
              if (i["relation"], i["language"]) in cut]
    measured = [(i, c) for i, c in judged if i.get("suppression", {}).get("selectivity")
                is not None]
    groups = {flag: {i["fact_id"] for i, c in measured if c == flag} for flag in (True, False)}
    comparable = all(len(g) >= MIN_GROUP_FACTS for g in groups.values())
    empty = {"value": None, "ci95": None, "n": 0, "facts": 0}
    return {
        "consistency": clustered_interval([(i["fact_id"], i["consistency"]) for i in items],
                                          seed=seed),
        "consistent_share": clustered_interval([(i["fact_id"], float(c)) for i, c in judged],
                                               statistics.fmean, seed),
        "thresholds": {f"{r}/{lang}": t for (r, lang), t in cut.items()},
        "items_without_threshold": len(items) - len(judged),
        "selectivity_consistent": clustered_interval(
            [(i["fact_id"], i["suppression"]["selectivity"]) for i, c in measured if c],
            seed=seed),
        "selectivity_inconsistent": clustered_interval(
            [(i["fact_id"], i["suppression"]["selectivity"]) for i, c in measured if not c],
            seed=seed),
        "selectivity_difference": clustered_interval(
            [(i["fact_id"], (c, i["suppression"]["selectivity"])) for i, c in measured],
            _difference, seed) if comparable else empty,
        "spearman": clustered_interval(
            [(i["fact_id"], (i["consistency"], i["suppression"]["selectivity"]))
             for i, _ in measured], _correlation, seed) if len(measured) >= 4 else empty,
        "group_facts": {"consistent": len(groups[True]), "inconsistent": len(groups[False])},
    }


def table(result: dict) -> str:
    s = result["summary"]
    rows = [["query consistency (mean Jaccard of a fact's paraphrase sets)",
             fmt_ci(s["consistency"])],
            [f"share of consistent items (above the {result['null_quantile']:g} quantile of "
             "two different facts' overlap)", fmt_ci(s["consistent_share"])],
            ["suppression selectivity, consistent items", fmt_ci(s["selectivity_consistent"])],
            ["suppression selectivity, inconsistent items",
             fmt_ci(s["selectivity_inconsistent"])],
            ["difference (consistent - inconsistent)", fmt_ci(s["selectivity_difference"])],
            ["Spearman (consistency, selectivity)", fmt_ci(s["spearman"])]]
    groups = s["group_facts"]
    return (markdown_table(["statistic", "value [95% CI] (n)"], rows)
            + f"\n\n{len(result['items'])} items with two or more attributed queries; facts per "
              f"group: {groups['consistent']} consistent, {groups['inconsistent']} "
              f"inconsistent ({MIN_GROUP_FACTS} each needed to compare them); "
              f"{s['items_without_threshold']} items without another fact of their relation "
              "and language (no threshold).\n\n" + knowledge_line(result["knowledge"]))


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """The summary's intervals (recomputed from the items)."""
    return {key: value for key, value in summarize(result["items"], seed).items()
            if isinstance(value, dict) and "value" in value}

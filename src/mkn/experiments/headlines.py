"""The study's headline statistics, computed from each experiment's raw result (its module's
``headline``) and recomputable from a saved study: with and without the items whose gold object
can be copied from the prompt, and the slim study (no raw results) that is committed."""

from __future__ import annotations

import statistics

from mkn.experiments import EXPERIMENTS
from mkn.experiments.metrics import clustered_interval


def headline(name: str, result: dict, languages: list[str], seed: int) -> dict:
    """The headline intervals of one experiment (its module's ``headline``; none for an
    experiment that defines none)."""
    compute = getattr(EXPERIMENTS[name], "headline", None)
    return {} if compute is None else compute(result, languages, seed)


def copyable_facts(part: dict) -> set[str] | None:
    """Facts of ``part`` with an item whose gold object can be copied from its prompt
    (:func:`mkn.localization.knowledge.copyable`, in the part's knowledge summary); None for a
    part probed before the flag."""
    knowledge = part.get("knowledge", {})
    if "copyable_items" not in knowledge:
        return None
    return {fact_id for fact_id, _ in knowledge["copyable_items"]}


def without_facts(result: dict, facts: set[str]) -> dict:
    """An experiment's raw ``result`` without the items and judgments of ``facts``."""
    return {key: [row for row in value if row.get("fact_id") not in facts]
            if key in ("items", "judgments") and isinstance(value, list) else value
            for key, value in result.items()}


# Whose headline is not a statistic of its raw items (the audit's summary is computed in the
# run): not recomputed without copyable items.
PRECOMPUTED = ("audits",)


def headlines(name: str, result: dict, languages: list[str], seed: int,
              copyable: set[str] | None) -> dict:
    """``headline`` of an experiment's raw ``result`` and, given the part's ``copyable`` facts
    (None: not flagged), ``headline_without_copyable``: the same statistics without them (not
    for :data:`PRECOMPUTED` experiments)."""
    out = {"headline": headline(name, result, languages, seed)}
    if copyable is not None and name not in PRECOMPUTED:
        out["headline_without_copyable"] = headline(name, without_facts(result, copyable),
                                                    languages, seed)
    return out


def layer_without_copyable(stats: dict, copyable: set[str] | None) -> None:
    """Add ``upper_third_excess_without_copyable`` to a method's localization ``stats`` (where
    it kept its per-item values and the part's facts are flagged)."""
    if "upper_third_items" in stats and copyable is not None:
        stats["upper_third_excess_without_copyable"] = clustered_interval(
            [tuple(pair) for pair in stats["upper_third_items"] if pair[0] not in copyable],
            statistics.fmean)


def refresh_headlines(study: dict) -> dict:
    """Recompute every headline from the experiments' saved raw results (the measurements are
    the run's; the statistics are this code's), in place, with the claims without copyable
    facts (:func:`headlines`, :func:`layer_without_copyable`)."""
    seed = study["config"].get("seed", 0)
    for part in study["parts"]:
        copyable = copyable_facts(part)
        part["copyable_facts"] = sorted(copyable or ())
        for name, experiment in part["experiments"].items():
            experiment.update(headlines(name, experiment["result"], part["part"]["languages"],
                                        seed, copyable))
        for stats in part["localization"].values():
            layer_without_copyable(stats, copyable)
    return study


def without_copyable(study: dict) -> dict | None:
    """``study`` with the headlines computed without copyable facts in place of the others
    (None when it has none: a study written before); the claims of :mod:`mkn.report.results`
    read from it are the claims without copyable items. An experiment or statistic with no
    such headline is left out (not measured)."""
    if not any("copyable_facts" in part for part in study["parts"]):
        return None
    parts = []
    for part in study["parts"]:
        experiments = {name: {**experiment, "headline": experiment["headline_without_copyable"]}
                       for name, experiment in part["experiments"].items()
                       if "headline_without_copyable" in experiment}
        localization = {method: {**stats, "upper_third_excess": stats.get(
            "upper_third_excess_without_copyable", {"value": None, "ci95": None, "n": 0})}
                        for method, stats in part["localization"].items()}
        parts.append({**part, "experiments": experiments, "localization": localization})
    return {**study, "parts": parts}


def without_raw_results(study: dict) -> dict:
    """``study`` without the experiments' per-item raw results: every number RESULTS.md shows
    (headlines and tables), in a file small enough to commit (docs/results/study.json); its
    headlines can be rendered again but not recomputed."""
    parts = [{**part, "experiments": {name: {k: v for k, v in experiment.items() if k != "result"}
                                      for name, experiment in part["experiments"].items()}}
             for part in study["parts"]]
    return {**study, "raw_results": False, "parts": parts}

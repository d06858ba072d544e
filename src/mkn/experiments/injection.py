"""Experiment 5: new (counterfactual) knowledge injection through the neurons of one language.

For each fact, pick a counterfactual object: the object of another fact of the same relation
(seeded), in every language. Edit the output vectors of the fact's knowledge neurons found in
the *source* language (Dai et al.'s edit: subtract the old object's unembedding, add the new
one's, norm-scaled) and measure, EasyEdit/ROME style:

- reliability: on the edit query, the new object ranks above the old one, p(new) > p(old)
  (efficacy: the criterion by which an item counts as known, rank among candidates), and, as a
  stricter second column, the new object is the greedy prediction;
- generalization: the same on the source language's other paraphrases, over the edits that took
  on their own query (the others are counted);
- portability (cross-lingual transfer): the same in every other language, with that language's
  label of the new object, over the edits that took;
- locality: the greedy first token of unrelated facts' queries is unchanged (the specificity
  control), and the relative change of p(gold) of ``neighbours`` other facts of the *same*
  relation and of *other* relations in every language (:mod:`mkn.interventions.locality`:
  ROME's neighbourhood score, where relation neurons do their damage).

The edit goes through the fact's knowledge-neuron set in the source language: its *fact set*
when relation neurons are left out (the default), and, where it has one, through its *relation
set* (the relation neurons it holds) as well, each with the same measures.

Only facts the model knows in the source language are edited (:mod:`mkn.localization.knowledge`),
and portability is measured in the languages it knows them in. Control: the same edit through
random sets with as many neurons in each layer (``draws`` seeded draws); its reliability and
portability say what any edit of that size would do.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from functools import partial

from mkn.attribution.api import predict_many
from mkn.experiments.common import (
    CleanPredictions,
    Progress,
    fmt_ci,
    knowledge_line,
    locate_known,
    markdown_table,
    neighbourhood,
    queries,
)
from mkn.experiments.metrics import accuracy, clustered_interval, interval
from mkn.interventions.controls import DEFAULT_DRAWS, CleanProbs, random_like, stable_seed
from mkn.interventions.locality import locality
from mkn.interventions.weights import edited, replace_object
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.models.loading import LanguageModel

PHASES = 2  # progress ticks per fact: locating, then measuring
NEIGHBOURS = 3  # facts of the same relation, and of other relations, per language (locality)
SETS = ("fact set", "relation set", "random set")


def edits_of(item: dict, kind: str) -> list[dict]:
    """The edits of one item through the fact set, its relation set or its random sets."""
    if kind == "fact set":
        return [item]
    if kind == "relation set":
        return [item["relation_set"]] if "relation_set" in item else []
    return item.get("random", [])


def neighbour_changes(items: list[dict], kind: str, group: str,
                      languages: list[str] | None = None) -> list[tuple[str, float]]:
    """``(fact_id, change)`` per edit of ``kind``: the mean change of p(gold) of its ``group``
    neighbours (``same_relation``, ``other_relation``) in ``languages`` (all when None)."""
    out = []
    for item in items:
        for edit in edits_of(item, kind):
            values = [v for lang, groups in edit.get("neighbours", {}).items()
                      if languages is None or lang in languages
                      for v in groups.get(group, []) if v is not None]
            if values:
                out.append((item["fact_id"], statistics.fmean(values)))
    return out


def counterfactual(fact, facts: list, rng: random.Random):
    """Another fact of the same relation with a different object in every language, or None."""
    pool = [g for g in facts if g.relation == fact.relation and g.id != fact.id
            and all(g.languages[lang].object != fact.languages[lang].object
                    for lang in fact.languages if lang in g.languages)]
    return rng.choice(pool) if pool else None


def _success(lm: LanguageModel, qs, new_objects: list[str]) -> list[dict]:
    if not qs:
        return []
    new_queries = [(prompt, new) for (prompt, _), new in zip(qs, new_objects, strict=True)]
    scored = predict_many(lm, [*new_queries, *qs])  # new and old objects in one batched pass
    news, olds = scored[:len(qs)], scored[len(qs):]
    return [{"prompt": prompt, "new_top1": p_new.correct, "efficacy": p_new.prob > p_old.prob,
             "p_new": p_new.prob} for (prompt, _), p_new, p_old in zip(qs, news, olds,
                                                                       strict=True)]


def measure_edit(lm: LanguageModel, edit, fact, other, source: str,
                  targets: list[str]) -> dict:
    """Reliability, generalization and portability of an applied edit."""
    src_queries = queries(fact, source)
    new = other.languages[source].object
    with edited(edit):
        return {"reliability": _success(lm, src_queries[:1], [new]),
                "generalization": _success(lm, src_queries[1:], [new] * (len(src_queries) - 1)),
                "portability": {lang: _success(lm, queries(fact, lang),
                                               [other.languages[lang].object]
                                               * len(queries(fact, lang)))
                                for lang in targets}}


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        source: str | None = None, seed: int = 0, lambda_old: float = 1.0,
        lambda_new: float = 1.0, draws: int = DEFAULT_DRAWS, progress: Progress | None = None,
        cache: AttributionCache | None = None, known: KnownItems | None = None,
        generic: GenericNeurons | None = None, neighbours: int = NEIGHBOURS) -> dict:
    source = source or languages[0]
    if source not in languages:
        raise ValueError(f"source language {source!r} is not among {languages}")
    known, located = locate_known(lm, facts, languages, config, progress, cache, known,
                                  generic)
    items, skipped = [], []
    clean, clean_predictions = CleanProbs(lm), CleanPredictions(lm)
    for fact in facts:
        other = counterfactual(fact, facts, random.Random(stable_seed(seed, fact.id, "new")))
        result = located[fact.id]
        neurons = result.languages[source].neurons if source in result.languages else []
        if other is None or not neurons:
            skipped.append({"fact_id": fact.id,
                            "reason": "no counterfactual of the same relation" if other is None
                            else f"not known in {source}" if source not in result.languages
                            else f"no knowledge neurons in {source}"})
            if progress:
                progress(fact.id)
            continue
        targets = [lang for lang in result.languages if lang != source]
        unrelated = [qr for g in facts if g.id not in (fact.id, other.id)
                     for lang in languages for qr in queries(g, lang)[:1]]
        before = [p.first_predicted_id for p in clean_predictions(unrelated)]
        edit_of = partial(replace_object, lm, prompt=queries(fact, source)[0][0],
                          old=fact.languages[source].object, new=other.languages[source].object,
                          lambda_old=lambda_old, lambda_new=lambda_new)
        edit = edit_of(neurons)
        item = {"fact_id": fact.id, "new_from": other.id, "neurons": len(neurons),
                "targets": targets, **measure_edit(lm, edit, fact, other, source, targets)}
        with edited(edit):
            item["locality"] = [p.first_predicted_id == b for p, b in
                                zip(predict_many(lm, unrelated), before, strict=True)]
        around = neighbourhood(fact, [g for g in facts if g.id != other.id], languages,
                               neighbours, seed, known)
        item["neighbours"] = locality(lm, edit, around, clean)
        relation_set = result.languages[source].relation
        if relation_set:  # the same edit through the relation neurons the set held
            kin = edit_of(relation_set)
            item["relation_set"] = {"neurons": len(relation_set),
                                    **measure_edit(lm, kin, fact, other, source, targets),
                                    "neighbours": locality(lm, kin, around, clean)}
        draw_rng = random.Random(stable_seed(seed, fact.id, "random-edit"))
        item["random"] = []
        for _ in range(draws):
            drawn = edit_of(random_like(neurons, lm.n_neurons, draw_rng))
            item["random"].append({**measure_edit(lm, drawn, fact, other, source, targets),
                                   "neighbours": locality(lm, drawn, around, clean)})
        items.append(item)
        if progress:
            progress(fact.id)
    return {"source": source, "items": items, "skipped": skipped, "draws": draws,
            "summary": summarize(items, [lang for lang in languages if lang != source], source,
                                 seed),
            "knowledge": known.to_summary()}


# One criterion for knowing and for success (issue 20): an item is known when the gold object
# ranks first among its candidates, so an edit succeeds on a query when the new object ranks
# above the old one, p(new) > p(old) ("efficacy"); greedy decoding of the whole new object
# ("new_top1") is the second, stricter column.
SUCCESS, GREEDY = "efficacy", "new_top1"


def took(edit: dict) -> bool:
    """The edit took on its own query: p(new) > p(old) there (:data:`SUCCESS`)."""
    return bool(edit["reliability"]) and bool(edit["reliability"][0][SUCCESS])


def _rate(rows: list[dict], key: str) -> float | None:
    return statistics.fmean(r[key] for r in rows) if rows else None


def neighbour_summary(items: list[dict], source: str, targets: list[str],
                      seed: int = 0) -> dict:
    """Median change of p(gold) of same-relation and other-relation neighbours, with a 95%
    interval over facts, per edited set, in the source language and in the others."""
    return {kind: {group: {where: clustered_interval(
                               neighbour_changes(items, kind, group, langs), seed=seed)
                           for where, langs in (("source", [source]), ("others", targets))}
                   for group in ("same_relation", "other_relation")}
            for kind in SETS}


def summarize(items: list[dict], targets: list[str], source: str | None = None,
              seed: int = 0) -> dict:
    def pooled(get) -> list[dict]:
        return [row for item in items for row in get(item)]

    randoms = [edit for item in items for edit in item.get("random", [])]

    def pooled_random(get) -> list[dict]:
        return [row for edit in randoms for row in get(edit)]

    taken = [i for i in items if took(i)]

    def pooled_taken(get) -> list[dict]:
        return [row for item in taken for row in get(item)]

    summary = {
        "edits": len(items),
        "edits_taken": len(taken),
        "reliability_top1": _rate(pooled(lambda i: i["reliability"]), "new_top1"),
        "reliability_efficacy": _rate(pooled(lambda i: i["reliability"]), "efficacy"),
        "generalization_top1": _rate(pooled_taken(lambda i: i["generalization"]), "new_top1"),
        "generalization_efficacy": _rate(pooled_taken(lambda i: i["generalization"]),
                                         "efficacy"),
        "locality": (statistics.fmean(x for i in items for x in i["locality"])
                     if any(i["locality"] for i in items) else None),
        "portability": {lang: {
            "top1": _rate(pooled_taken(lambda i, lang=lang: i["portability"].get(lang, [])),
                          "new_top1"),
            "efficacy": _rate(pooled_taken(lambda i, lang=lang: i["portability"].get(lang, [])),
                              "efficacy"),
        } for lang in targets},
        "random": {
            "edits": len(randoms),
            "reliability_top1": _rate(pooled_random(lambda e: e["reliability"]), "new_top1"),
            "reliability_efficacy": _rate(pooled_random(lambda e: e["reliability"]),
                                          "efficacy"),
            "portability_top1": _rate(pooled_random(
                transfer_rows), "new_top1"),
            "portability_efficacy": _rate(pooled_random(
                transfer_rows), "efficacy"),
        },
    }
    if source is not None:
        summary["neighbours"] = neighbour_summary(items, source, targets, seed)
        kin = [i["relation_set"] for i in items if "relation_set" in i]
        summary["relation_set"] = {
            "edits": len(kin),
            "reliability_efficacy": _rate([r for e in kin for r in e["reliability"]],
                                          "efficacy"),
            "portability_efficacy": _rate([r for e in kin for r in transfer_rows(e)],
                                          "efficacy")}
    return summary


def table(result: dict) -> str:
    s = result["summary"]
    rows = [["reliability", result["source"], s["reliability_top1"], s["reliability_efficacy"]],
            ["generalization (paraphrases)", result["source"], s["generalization_top1"],
             s["generalization_efficacy"]]]
    rows += [["portability (transfer)", lang, v["top1"], v["efficacy"]]
             for lang, v in s["portability"].items()]
    rows.append(["locality (unrelated top-1 unchanged)", "all", s["locality"], None])
    r = s["random"]
    rows.append([f"control: random set, reliability ({r['edits']} edits)", result["source"],
                 r["reliability_top1"], r["reliability_efficacy"]])
    rows.append(["control: random set, portability", "others", r["portability_top1"],
                 r["portability_efficacy"]])
    return (markdown_table(["metric", "language", "new object top-1", "p(new) > p(old)"], rows)
            + neighbour_table(result)
            + f"\n\n{s['edits']} edits, {s.get('edits_taken', s['edits'])} of them took on their "
              "own query (p(new) > p(old)); generalization and portability are over those only. "
              f"{len(result['skipped'])} facts skipped (see JSON). "
              f"Control rows: the same edit through random sets with as many neurons per layer "
              f"({result['draws']} draws per fact).\n\n"
            + knowledge_line(result["knowledge"], "portability is measured where the fact is "
                                                  "known"))


def neighbour_rows(result: dict) -> list[list]:
    """The locality rows ``[edited set, edits, languages, same-relation, other-relation]`` per
    edited set, in the source language and in the others (none for a result from before
    locality was measured)."""
    s = result["summary"]
    if "neighbours" not in s:
        return []
    edits = {"fact set": s["edits"], "relation set": s["relation_set"]["edits"],
             "random set": s["random"]["edits"]}
    return [[kind, edits[kind], result["source"] if where == "source" else "others",
             fmt_ci(groups["same_relation"][where]) or "-",
             fmt_ci(groups["other_relation"][where]) or "-"]
            for kind, groups in s["neighbours"].items() for where in ("source", "others")]


NEIGHBOUR_HEADER = ["edited set", "edits", "language", "same-relation facts",
                    "other-relation facts"]


def neighbour_table(result: dict) -> str:
    """The locality table: change of p(gold) of the edited fact's neighbours per edited set
    (empty for a result from before locality was measured)."""
    rows = neighbour_rows(result)
    if not rows:
        return ""
    kin = result["summary"]["relation_set"]
    return ("\n\nLocality: median relative change of p(gold) of other facts known in each "
            "language (0: untouched, -1: gone), 95% interval over facts; the relation set is "
            "edited where the fact's set held relation neurons "
            f"(reliability {_fmt(kin['reliability_efficacy'])}, portability "
            f"{_fmt(kin['portability_efficacy'])} by p(new) > p(old) over its "
            f"{kin['edits']} edits).\n\n" + markdown_table(NEIGHBOUR_HEADER, rows))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """Reliability over every edit; generalization and portability (transfer) only over the
    edits that took on their own query, with the count of those that did not; each by
    p(new) > p(old) and, as a second column, by greedy decoding."""
    items = result["items"]
    taken = [i for i in items if took(i)]

    def rate(edits: list[dict], rows_of: Callable[[dict], list], key: str) -> dict:
        per_edit = [accuracy([r[key] for r in rows_of(i)]) for i in edits if rows_of(i)]
        return interval(per_edit, statistics.fmean, seed)

    return {
        "edits": {"all": len(items), "took": len(taken), "did_not_take": len(items) - len(taken)},
        "reliability": rate(items, lambda i: i["reliability"], SUCCESS),
        "reliability_greedy": rate(items, lambda i: i["reliability"], GREEDY),
        "generalization": rate(taken, lambda i: i["generalization"], SUCCESS),
        "generalization_greedy": rate(taken, lambda i: i["generalization"], GREEDY),
        "portability": rate(taken, transfer_rows, SUCCESS),
        "portability_greedy": rate(taken, transfer_rows, GREEDY),
        "locality": interval([accuracy(i["locality"]) for i in items if i["locality"]],
                             statistics.fmean, seed),
        # p(gold) change of the edited fact's neighbours (fact-set edits, every language)
        "locality_same_relation": clustered_interval(
            neighbour_changes(items, "fact set", "same_relation"), seed=seed),
        "locality_other_relation": clustered_interval(
            neighbour_changes(items, "fact set", "other_relation"), seed=seed),
        # per edit that took: its portability minus that of random-set edits of the same shape
        "portability_over_random": interval(
            [_portability(i) - statistics.fmean(_portability(r) for r in i["random"])
             for i in taken if i.get("random") and _portability(i) is not None
             and all(_portability(r) is not None for r in i["random"])], statistics.fmean, seed),
    }


def transfer_rows(edit: dict) -> list[dict]:
    """The measured queries of every other language (portability), pooled."""
    return [r for rows in edit["portability"].values() for r in rows]


def _portability(edit: dict) -> float | None:
    """Share of the other languages' queries where the new object now ranks above the old one
    (:data:`SUCCESS`)."""
    rows = transfer_rows(edit)
    return accuracy([r[SUCCESS] for r in rows]) if rows else None

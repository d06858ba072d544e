"""Experiment 8: audits of the knowledge-neuron thesis (Niu et al., ICLR 2024, "What does the
knowledge neuron thesis have to do with knowledge?").

1. *Paraphrase invariance.* If a fact lives in a few neurons, the neurons found from different
   phrasings of the same fact are the same, and differ from other facts'. Jaccard overlap of
   knowledge-neuron sets (generic neurons left out):

   - ``paraphrases``: the per-query sets of one fact in one language, every pair of its queries;
   - ``languages``: the sets of one fact in two of its known languages, every pair;
   - ``same_relation``: two different facts of the same relation, same language;
   - ``other_relations``: two facts of different relations, same language.

   The thesis predicts paraphrases and languages far above same relation and other relations.
2. *Bijective symmetry.* For symmetric relations (P47 "shares border with", P530 "maintains
   diplomatic relations with"), (A, r, B) implies (B, r, A): the reversed fact is the same query
   with subject and object swapped (its candidates: the forward ones but A). Where the model
   knows both directions in a language: the Jaccard overlap of the two sets against the overlap
   of (A, r, B) with other facts of the relation; and whether suppressing the set of (A, r, B)
   lowers p(A | B, r) more than random sets of the same shape do (the reversed fact's
   selectivity), beside the fact's own effect.

Medians with bootstrap 95% intervals (pairs resampled by their first fact).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from mkn.data.schema import SUBJECT, Fact
from mkn.experiments.common import (
    Progress,
    fmt_ci,
    generic_for,
    knowledge_line,
    markdown_table,
    probe_known,
    queries,
)
from mkn.experiments.metrics import clustered_interval
from mkn.interventions.controls import (
    DEFAULT_DRAWS,
    CleanProbs,
    ControlledEffect,
    measure_sets,
    random_sets,
    stable_seed,
)
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems, known_items
from mkn.localization.locate import AttributionCache, FactResult, LocateConfig, locate_fact
from mkn.localization.neurons import jaccard
from mkn.models.loading import LanguageModel

SYMMETRIC = ("P47", "P530")
OVERLAPS = ("paraphrases", "languages", "same_relation", "other_relations")
PHASES = 1


def reversed_fact(fact: Fact) -> Fact | None:
    """(B, r, A) from (A, r, B): subject and object swapped in every language whose queries
    name the subject; None when no language does."""
    languages = {}
    for lang, view in fact.languages.items():
        if not all(SUBJECT in q for q in view.queries):
            continue
        candidates = [c for c in view.candidates if c not in (view.subject, view.object)]
        languages[lang] = view.model_copy(update={"subject": view.object,
                                                  "object": view.subject,
                                                  "candidates": candidates})
    if not languages:
        return None
    return fact.model_copy(update={"id": f"{fact.id}~reversed", "languages": languages,
                                   "meta": {**fact.meta, "reversed": fact.id}})


def overlaps(located: Mapping[str, FactResult]) -> dict[str, list[tuple[str, float]]]:
    """``{kind: [(fact_id, jaccard), ...]}`` for the four kinds of pairs (module docstring)."""
    out: dict[str, list[tuple[str, float]]] = {kind: [] for kind in OVERLAPS}
    results = list(located.values())
    for result in results:
        for r in result.languages.values():
            for a, b in itertools.combinations(r.query_neurons, 2):
                if a or b:
                    out["paraphrases"].append((result.fact_id, jaccard(a, b)))
        for a, b in itertools.combinations(result.languages.values(), 2):
            if a.neurons or b.neurons:
                out["languages"].append((result.fact_id, jaccard(a.neurons, b.neurons)))
    for first, second in itertools.combinations(results, 2):
        kind = "same_relation" if first.relation == second.relation else "other_relations"
        for lang in sorted(set(first.languages) & set(second.languages)):  # not hash order
            a, b = first.languages[lang].neurons, second.languages[lang].neurons
            if a or b:
                out[kind].append((first.fact_id, jaccard(a, b)))
    return out


def symmetry(lm: LanguageModel, facts: Sequence[Fact], languages: list[str],
             config: LocateConfig, located: Mapping[str, FactResult], known: KnownItems,
             cache: AttributionCache, generic, clean: CleanProbs, draws: int,
             seed: int) -> list[dict]:
    """One record per (symmetric fact, language) known in both directions."""
    pairs = [(f, r) for f in facts if f.relation in SYMMETRIC
             and (r := reversed_fact(f)) is not None]
    records = []
    for fact, back in pairs:
        candidates = [lang for lang in known.languages_of(fact.id) if lang in back.languages]
        if not candidates:
            continue
        back = back.restrict(candidates)
        backwards = known_items(lm, [back], candidates, config.known)
        both = backwards.languages_of(back.id)
        if not both:
            continue
        back_located = locate_fact(lm, back, both, config, cache, backwards, generic)
        for lang in both:
            forward = located[fact.id].languages[lang].neurons
            backward = back_located.languages[lang].neurons
            others = [jaccard(forward, g.languages[lang].neurons) for g in located.values()
                      if g.fact_id != fact.id and g.relation == fact.relation
                      and lang in g.languages]
            record = {"fact_id": fact.id, "language": lang, "forward": len(forward),
                      "backward": len(backward), "jaccard": jaccard(forward, backward),
                      "jaccard_same_relation": (sum(others) / len(others)) if others else None}
            if forward:
                own, reverse = queries(fact, lang), queries(back, lang)
                drawn = random_sets(forward, lm.n_neurons, draws,
                                    stable_seed(seed, fact.id, lang, "symmetry"))
                changes = measure_sets(lm, [(forward, "suppress", own),
                                            (forward, "suppress", reverse),
                                            *[(r, "suppress", reverse) for r in drawn]], clean)
                record["own_effect"] = changes[0]
                record["reversed"] = ControlledEffect.record("suppress", forward, changes[1],
                                                             changes[2:], (), drawn).to_dict()
            records.append(record)
    return records


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, draws: int = DEFAULT_DRAWS, progress: Progress | None = None,
        cache: AttributionCache | None = None, known: KnownItems | None = None,
        generic: GenericNeurons | Mapping[str, GenericNeurons] | None = None) -> dict:
    known = probe_known(lm, facts, languages, config, known)
    cache = {} if cache is None else cache
    generic = generic_for(generic, config.method)
    located = {}
    for fact in facts:
        located[fact.id] = locate_fact(lm, fact, languages,
                                       config.model_copy(update={"degenerate": False}), cache,
                                       known, generic)
        if progress:
            progress(fact.id)
    pairs = overlaps(located)
    symmetric = symmetry(lm, facts, languages, config.model_copy(update={"degenerate": False}),
                         located, known, cache, generic, CleanProbs(lm), draws, seed)
    return {"overlaps": {kind: [[f, v] for f, v in values] for kind, values in pairs.items()},
            "symmetry": symmetric, "draws": draws, "method": config.method,
            "summary": summarize(pairs, symmetric, seed), "knowledge": known.to_summary()}


def summarize(pairs: Mapping[str, list], symmetric: list[dict], seed: int = 0) -> dict:
    summary = {"jaccard": {kind: clustered_interval([tuple(p) for p in pairs[kind]], seed=seed)
                           for kind in OVERLAPS}}
    measured = [r for r in symmetric if "reversed" in r]
    summary["symmetry"] = {
        "pairs": len(symmetric),
        "jaccard_reversed": clustered_interval([(r["fact_id"], r["jaccard"])
                                                for r in symmetric], seed=seed),
        "jaccard_same_relation": clustered_interval(
            [(r["fact_id"], r["jaccard_same_relation"]) for r in symmetric
             if r["jaccard_same_relation"] is not None], seed=seed),
        "own_effect": clustered_interval([(r["fact_id"], r["own_effect"]) for r in measured],
                                         seed=seed),
        "reversed_effect": clustered_interval([(r["fact_id"], r["reversed"]["effect"])
                                               for r in measured], seed=seed),
        "reversed_selectivity": clustered_interval(
            [(r["fact_id"], r["reversed"]["selectivity"]) for r in measured], seed=seed),
    }
    return summary


def table(result: dict) -> str:
    s = result["summary"]
    overlap_rows = [[kind.replace("_", " "), s["jaccard"][kind]["n"], fmt_ci(s["jaccard"][kind])]
                    for kind in OVERLAPS]
    sym = s["symmetry"]
    symmetry_rows = [[label, fmt_ci(sym[key])] for key, label in (
        ("jaccard_reversed", "Jaccard of (A, r, B) and (B, r, A)"),
        ("jaccard_same_relation", "Jaccard of (A, r, B) and other facts of r"),
        ("own_effect", "suppressing KN(A, r, B): change of p(B | A, r)"),
        ("reversed_effect", "suppressing KN(A, r, B): change of p(A | B, r)"),
        ("reversed_selectivity", "... minus random sets of the same shape (selectivity)"))]
    return ("Paraphrase invariance: Jaccard overlap of knowledge-neuron sets (median [95% CI]):"
            "\n\n" + markdown_table(["pairs of sets", "pairs", "Jaccard"], overlap_rows)
            + f"\n\nBijective symmetry ({', '.join(SYMMETRIC)}; {sym['pairs']} (fact, language) "
              "items known in both directions):\n\n"
            + markdown_table(["measure", "median [95% CI]"], symmetry_rows)
            + "\n\n" + knowledge_line(result["knowledge"]))


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """The audit's intervals (its summary)."""
    return result["summary"]

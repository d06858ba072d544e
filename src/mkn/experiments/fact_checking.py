"""Experiment 3: fact-checking with degenerate knowledge neurons (AMIG Sec. 5).

1. Split each relation's facts in two (seeded): a *train* part and a *test* part.
2. On the train part, find degenerate neuron pairs (AMIG Algorithm 1) per fact and language the
   model knows (:mod:`mkn.localization.knowledge`); per relation and language keep the neurons
   that occur in pairs at least ``keep`` x the most frequent one's count (AMIG keeps
   ``count > 0.7 * max``).
3. On the test part, judge (query, candidate) pairs: the true object and ``wrong`` wrong ones
   (the fact's own candidates, e.g. BMLAMA's, else objects of other facts of the relation).
   A candidate is judged *true* when the mean attribution of the kept degenerate neurons
   exceeds ``lam``.
4. Precision, recall and F1 with "true fact" as the positive class (standard definitions; AMIG's
   script swaps precision and recall), against two baselines: "the model's own greedy
   prediction matches the candidate", and the control judge: the same rule on a *random* set
   with as many neurons in each layer as the kept ones (seeded per relation and language; its
   scores come from the same attributions, so it costs nothing).
   AMIG's own claim is narrower: degenerate *pairs* beat other pairs of the same fact's top-k
   candidates. So a second control, ``candidate_pairs``, draws for each training fact as many
   random pairs from its own top-k candidates as it had degenerate pairs (seeded by the
   candidates' content) and keeps neurons by the same count rule: what Algorithm 1 adds over
   "some of the top candidates".
5. Because pairs are balanced (one gold, ``wrong`` wrong), F1 rewards saying "true": a judge
   that always says "true" scores F1 = 2w/(1 + 2w)... = 0.667 at one wrong candidate. So beside
   F1 stand that *always-true* judge's F1, and the threshold-free ROC AUC of each judge's score
   (degenerate neurons' mean attribution, the random set's, and the model's own mean
   log-probability per token of the candidate, its gold-vs-wrong ranking); an always-true
   judge's AUC is 0.5. AUCs are computed on the pairs where degenerate neurons were kept.

Test facts are judged whether the model knows them or not (each judgment is marked).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from itertools import combinations

import torch

from mkn.attribution.api import attribute, predict
from mkn.attribution.scoring import mean_log_prob
from mkn.experiments.common import Progress, generic_for, knowledge_line, markdown_table, queries
from mkn.experiments.metrics import interval, precision_recall_f1, roc_auc
from mkn.interventions.controls import random_like, set_content, stable_seed
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems, known_items
from mkn.localization.locate import AttributionCache, LocateConfig, locate_fact
from mkn.models.loading import LanguageModel

PHASES = 1  # progress ticks per fact
JUDGES = ("degenerate_neurons", "candidate_pairs", "random_neurons", "model_judge",
          "always_true")
# each judge's threshold-free score, for the AUC
SCORES = {"degenerate_neurons": "score", "candidate_pairs": "pairs_score",
          "random_neurons": "control_score", "model_judge": "model_score"}


def split_by_relation(facts: list, seed: int) -> tuple[list, list, list[str]]:
    """(train, test, relations skipped for having fewer than 2 facts)."""
    rng = random.Random(seed)
    by_relation: dict[str, list] = defaultdict(list)
    for fact in facts:
        by_relation[fact.relation].append(fact)
    train, test, skipped = [], [], []
    for relation, group in sorted(by_relation.items()):
        if len(group) < 2:
            skipped.append(relation)
            continue
        group = group[:]
        rng.shuffle(group)
        half = len(group) // 2
        train += group[:half]
        test += group[half:]
    return train, test, skipped


def kept_neurons(pair_lists: list[list], keep: float) -> list[tuple[int, int]]:
    """Neurons occurring in degenerate pairs at least ``keep`` x the top count."""
    counts = Counter(tuple(n) for pairs in pair_lists for pair in pairs for n in pair)
    if not counts:
        return []
    top = max(counts.values())
    return sorted(n for n, c in counts.items() if c >= keep * top)


def candidate_pairs(result, seed: int) -> list[tuple]:
    """As many random pairs of ``result.candidates`` (a fact's top-k neurons) as
    ``result.pairs`` (its degenerate pairs), seeded by the candidates' content: the control of
    AMIG's claim that Algorithm 1's pairs, not any pairs of the top candidates, check facts."""
    pool = list(combinations(sorted(tuple(map(int, n)) for n in result.candidates), 2))
    rng = random.Random(stable_seed(seed, set_content(result.candidates), "candidate-pairs"))
    return rng.sample(pool, min(len(result.pairs), len(pool)))


def wrong_objects(fact, lang: str, facts: list, wrong: int, rng: random.Random) -> list[str]:
    gold = fact.languages[lang].object
    pool = [c for c in (fact.languages[lang].candidates or []) if c != gold]
    if not pool:
        pool = sorted({g.languages[lang].object for g in facts
                       if g.relation == fact.relation and g.id != fact.id} - {gold})
    return rng.sample(pool, min(wrong, len(pool)))


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, wrong: int = 1, keep: float = 0.7, lam: float = 0.0,
        progress: Progress | None = None, cache: AttributionCache | None = None,
        known: KnownItems | None = None, generic: GenericNeurons | None = None) -> dict:
    train, test, skipped = split_by_relation(facts, seed)
    if not train or not test:
        raise ValueError(f"fact-checking needs at least one relation with 2 or more facts; got "
                         f"{len(facts)} facts in {len({f.relation for f in facts})} relations "
                         "(draw a balanced sample, e.g. --per-relation 4)")
    known = known or known_items(lm, facts, languages, config.known)
    known.subset(f.id for f in train).require_some(
        "training items (facts whose degenerate neurons are searched)")
    pairs: dict[tuple[str, str], list] = defaultdict(list)
    drawn: dict[tuple[str, str], list] = defaultdict(list)  # random candidate pairs
    for fact in train:
        located = locate_fact(lm, fact, languages, config.model_copy(update={"degenerate": True}),
                              cache, known, generic_for(generic, config.method))
        for lang, result in located.degenerate.items():
            pairs[(fact.relation, lang)].append(result.pairs)
            drawn[(fact.relation, lang)].append(candidate_pairs(result, seed))
        if progress:
            progress(fact.id)
    neurons = {key: kept_neurons(lists, keep) for key, lists in pairs.items()}
    controls = {key: random_like(kept, lm.n_neurons, random.Random(stable_seed(seed, *key)))
                for key, kept in neurons.items() if kept}
    from_candidates = {key: kept_neurons(drawn[key], keep) for key in neurons}
    judgments = []
    for fact in test:
        for lang in languages:
            kept = neurons.get((fact.relation, lang), [])
            control = controls.get((fact.relation, lang), [])
            paired = from_candidates.get((fact.relation, lang), [])
            prompt, gold = queries(fact, lang)[0]
            candidates = [(gold, True)] + [(w, False) for w in
                                           wrong_objects(fact, lang, facts, wrong,
                                                         random.Random(stable_seed(
                                                             seed, fact.id, lang, "wrong")))]
            for candidate, is_true in candidates:
                score, control_score, pairs_score, model_true = None, None, None, None
                if kept:  # attribute only the layers holding kept or candidate-pair neurons
                    a = attribute(lm, prompt, candidate, method=config.attribution_method,
                                  steps=config.steps, rule=config.rule,
                                  layers=sorted({layer for layer, _ in [*kept, *paired]}))
                    score = float(torch.stack([a.scores[n] for n in kept]).mean())
                    control_score = float(torch.stack([a.scores[n] for n in control]).mean())
                    if paired:
                        pairs_score = float(torch.stack([a.scores[n] for n in paired]).mean())
                    model_true = a.correct
                    model_score = mean_log_prob(a.token_probs)
                else:
                    prediction = predict(lm, prompt, candidate)
                    model_true, model_score = prediction.correct, prediction.mean_log_prob
                judgments.append({
                    "fact_id": fact.id, "relation": fact.relation, "language": lang,
                    "known": known.knowledge[(fact.id, lang)].marked(known.criterion),
                    "candidate": candidate, "true": is_true, "neurons": len(kept),
                    "score": score, "dkn_true": score is not None and score > lam,
                    "control_score": control_score,
                    "random_true": control_score is not None and control_score > lam,
                    "pairs_score": pairs_score,
                    "pairs_true": pairs_score is not None and pairs_score > lam,
                    "model_true": model_true, "model_score": model_score,
                })
        if progress:
            progress(fact.id)
    return {"train_facts": len(train), "test_facts": len(test), "skipped_relations": skipped,
            "kept_neurons": {f"{r}/{lang}": [list(n) for n in ns]
                             for (r, lang), ns in neurons.items()},
            "control_neurons": {f"{r}/{lang}": [list(n) for n in ns]
                                for (r, lang), ns in controls.items()},
            "candidate_pair_neurons": {f"{r}/{lang}": [list(n) for n in ns]
                                       for (r, lang), ns in from_candidates.items()},
            "judgments": judgments, "summary": summarize(judgments, languages),
            "knowledge": known.to_summary()}


def summarize(judgments: list[dict], languages: list[str]) -> dict:
    summary = {}
    for scope in [*languages, "all"]:
        rows = [j for j in judgments if scope in ("all", j["language"])]
        with_neurons = [j for j in rows if j["score"] is not None]
        summary[scope] = {
            "judgments": len(rows), "without_neurons": len(rows) - len(with_neurons),
            "degenerate_neurons": precision_recall_f1([j["dkn_true"] for j in rows],
                                                      [j["true"] for j in rows]),
            "random_neurons": precision_recall_f1([j["random_true"] for j in rows],
                                                  [j["true"] for j in rows]),
            "model_judge": precision_recall_f1([j["model_true"] for j in rows],
                                               [j["true"] for j in rows]),
            "always_true": precision_recall_f1([True] * len(rows), [j["true"] for j in rows]),
            "auc": aucs(with_neurons),
        }
        if all("pairs_true" in j for j in rows):  # results written before it have none
            summary[scope]["candidate_pairs"] = precision_recall_f1(
                [j["pairs_true"] for j in rows], [j["true"] for j in rows])
    return summary


def aucs(judgments: list[dict]) -> dict[str, float | None]:
    """ROC AUC of each judge's score (:data:`SCORES`) and of the always-true judge (0.5)."""
    labels = [j["true"] for j in judgments]
    out = {judge: roc_auc([j.get(key) for j in judgments], labels)
           for judge, key in SCORES.items()
           if judgments and all(j.get(key) is not None for j in judgments)}
    out["always_true"] = roc_auc([1.0] * len(judgments), labels)
    return out


def table(result: dict) -> str:
    rows = []
    for scope, s in result["summary"].items():
        for judge in JUDGES:
            m = s.get(judge)
            if m is None:  # a result written before the always-true baseline
                continue
            rows.append([scope, judge, m["n"], m["precision"], m["recall"], m["f1"],
                         m["accuracy"], s.get("auc", {}).get(judge)])
    return (markdown_table(["languages", "judge", "pairs", "precision", "recall", "F1",
                            "accuracy", "AUC"], rows)
            + "\n\ncandidate_pairs: the same rule on neurons kept from random pairs of each "
              "training fact's own top-k candidates, as many as its degenerate pairs (AMIG's "
              "claim is that Algorithm 1's pairs beat these). random_neurons: the same rule on "
              "random sets with as many neurons per layer "
              "as the kept degenerate neurons (the control). always_true: a judge that says "
              "\"true\" to every pair (pairs are balanced, so its F1 is high: read F1 against "
              "it). AUC: threshold-free, on the pairs where degenerate neurons were kept (0.5: "
              "no better than chance). Degenerate neurons come from training facts the model "
              "knows; test facts are judged whether known or not.\n\n"
            + knowledge_line(result["knowledge"], "the others are not used for training"))


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """F1 of every judge (the always-true one included) and ROC AUC of every scored judge, with
    intervals over test facts (judgments resampled by fact); the AUC differences against the
    random set and the model judge are the threshold-free tests of AMIG's claim."""
    by_fact: dict[str, list[dict]] = {}
    for judgment in result["judgments"]:
        by_fact.setdefault(judgment["fact_id"], []).append(judgment)
    groups = list(by_fact.values())

    def f1(judge: str | None) -> Callable[[Sequence[list[dict]]], float]:
        """F1 of the judgments' ``judge`` flag (None: the always-true judge)."""
        def statistic(sample: Sequence[list[dict]]) -> float:
            rows = [j for group in sample for j in group]
            return precision_recall_f1([judge is None or bool(j[judge]) for j in rows],
                                       [j["true"] for j in rows])["f1"]
        return statistic

    judges = [("degenerate_neurons", "dkn_true"), ("model_judge", "model_true")]
    with_control = all("random_true" in j for j in result["judgments"])
    if with_control:
        judges.append(("random_neurons", "random_true"))
    out = {judge: interval(groups, f1(key), seed) for judge, key in judges}
    out["f1_difference"] = interval(
        groups, lambda s: f1("dkn_true")(s) - f1("model_true")(s), seed)
    if with_control:  # degenerate neurons against random neurons of the same shape
        out["f1_difference_random"] = interval(
            groups, lambda s: f1("dkn_true")(s) - f1("random_true")(s), seed)
    out["f1_always_true"] = interval(groups, f1(None), seed)
    scored = [[j for j in group if j["score"] is not None] for group in groups]
    scored = [group for group in scored if group]
    if scored and all("model_score" in j for group in scored for j in group):

        def auc(key: str) -> Callable[[Sequence[list[dict]]], float]:
            def statistic(sample: Sequence[list[dict]]) -> float:
                rows = [j for group in sample for j in group]
                value = roc_auc([j[key] for j in rows], [j["true"] for j in rows])
                return 0.5 if value is None else value  # a resample of one class: chance
            return statistic

        for judge, key in SCORES.items():
            if key != "pairs_score":  # on the pairs that have it, below
                out[f"auc_{judge}"] = interval(scored, auc(key), seed)
        out["auc_difference_random"] = interval(
            scored, lambda s: auc("score")(s) - auc("control_score")(s), seed)
        paired = [[j for j in group if j.get("pairs_score") is not None]
                  for group in scored]
        paired = [group for group in paired if group]
        if paired:  # AMIG's claim: degenerate pairs against random pairs of the candidates
            out["auc_candidate_pairs"] = interval(paired, auc("pairs_score"), seed)
            out["auc_difference_pairs"] = interval(
                paired, lambda s: auc("score")(s) - auc("pairs_score")(s), seed)
        out["auc_difference_model"] = interval(
            scored, lambda s: auc("score")(s) - auc("model_score")(s), seed)
    return out

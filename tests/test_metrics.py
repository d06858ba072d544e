"""Experiment metrics on hand-made numbers."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from mkn.experiments.metrics import (
    accuracy,
    bootstrap_ci,
    precision_recall_f1,
    roc_auc,
    success_ratio,
)
from mkn.interventions.controls import relative_change


def test_relative_change():
    assert relative_change(0.5, 0.25) == -0.5
    assert relative_change(0.2, 0.3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-positive"):
        relative_change(0.0, 0.1)


def test_success_ratio_amig_eq_11():
    # enhance: related +60%, unrelated +20% -> 3; suppress: related -40%, unrelated -10% -> 4
    assert success_ratio(0.6, 0.2, -0.4, -0.1) == pytest.approx(7.0)
    # an untouched unrelated fact uses the 0.1% floor, not a division by zero
    assert success_ratio(0.5, 0.0, -0.5, 0.0) == pytest.approx(1000.0)


def test_precision_recall_f1_standard_not_swapped():
    predicted = [True, True, True, False, False]
    actual = [True, True, False, True, False]
    m = precision_recall_f1(predicted, actual)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    m = precision_recall_f1([True, False, False, False], [True, True, True, False])
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.5) and m["accuracy"] == 0.5
    with pytest.raises(ValueError, match="3 predictions for 2"):
        precision_recall_f1([True] * 3, [True] * 2)


def test_roc_auc_by_hand_and_an_always_true_judge_is_chance():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # positives 0.9, 0.3 against negatives 0.5, 0.3: wins 1 + 0 + 0.5 (tie) + 1 -> 2.5 / 4
    assert roc_auc([0.9, 0.3, 0.5, 0.3], [True, True, False, False]) == pytest.approx(0.625)
    labels = [True, False] * 40  # balanced (gold, wrong) pairs
    assert roc_auc([1.0] * len(labels), labels) == 0.5
    assert precision_recall_f1([True] * len(labels), labels)["f1"] == pytest.approx(2 / 3)
    assert roc_auc([1.0, 2.0], [True, True]) is None
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        roc_auc([1.0, 2.0], [True, False, True])


def test_fact_checking_reports_the_always_true_judge_and_aucs():
    """A judge that says "true" more often beats random neurons on F1 but not on AUC."""
    from mkn.experiments import fact_checking

    judgments = []
    for i in range(12):
        for truth in (True, False):
            judgments.append({
                "fact_id": f"f{i}", "relation": "P36", "language": "en", "true": truth,
                "score": 0.3 if i % 2 else -0.3, "dkn_true": True,  # says true, ranks nothing
                "control_score": 0.5 if truth else -0.5, "random_true": truth,
                "model_score": -1.0 if truth else -2.0, "model_true": truth,
                "pairs_score": 0.2 if truth else 0.1, "pairs_true": True})
    summary = fact_checking.summarize(judgments, ["en"])["all"]
    assert summary["always_true"]["f1"] == pytest.approx(2 / 3)
    assert summary["candidate_pairs"]["f1"] == pytest.approx(2 / 3)
    assert summary["auc"] == {"degenerate_neurons": 0.5, "candidate_pairs": 1.0,
                              "random_neurons": 1.0, "model_judge": 1.0, "always_true": 0.5}
    head = fact_checking.headline({"judgments": judgments}, ["en"])
    assert head["f1_always_true"]["value"] == pytest.approx(2 / 3)
    assert head["auc_difference_random"]["value"] == pytest.approx(-0.5)
    assert head["auc_difference_random"]["ci95"][1] < 0
    assert head["auc_difference_pairs"]["value"] == pytest.approx(-0.5)  # AMIG's own claim
    assert "always_true" in fact_checking.table(
        {"summary": {"all": summary}, "knowledge": {"per_language": {}, "criterion": "rank",
                                                    "definition": "gold ranks first"}})


def test_candidate_pairs_come_from_the_facts_own_candidates_and_follow_its_content():
    from mkn.experiments.fact_checking import candidate_pairs
    from mkn.localization.degenerate import DegenerateResult

    top = [(3, 1), (0, 5), (2, 2), (1, 7), (3, 9)]
    result = DegenerateResult(top, top, [((0, 5), (2, 2)), ((1, 7), (3, 9))])
    drawn = candidate_pairs(result, seed=0)
    assert len(drawn) == 2 and all(a in top and b in top and a < b for a, b in drawn)
    shuffled = DegenerateResult(top[::-1], top, result.pairs)  # same candidates, any order
    assert candidate_pairs(shuffled, seed=0) == drawn
    assert candidate_pairs(DegenerateResult(top, top, []), seed=0) == []


def test_accuracy_and_bootstrap():
    assert accuracy([True, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="empty"):
        accuracy([])
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0] * 4, seed=1)
    assert 1.0 <= low <= 3.0 <= high <= 5.0
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0)




def test_facts_for_power_gives_the_asked_power_in_simulation():
    """An effect of 0.3 sd measured on 40 facts (its interval from the true standard error): the
    facts the formula asks for reject the null in about 80% of simulated studies of that size,
    and half the facts in far fewer."""
    from mkn.experiments.metrics import facts_for_power

    effect, sd, observed = 0.3, 1.0, 40
    half = 1.959964 * sd / observed ** 0.5
    entry = {"value": effect, "ci95": [effect - half, effect + half], "facts": observed}
    needed = facts_for_power(entry, 0.0, power=0.8)
    assert needed == math.ceil((2.8015852 * sd / effect) ** 2)  # (z_0.975 + z_0.8)^2 sd^2/d^2
    rng = random.Random(0)

    def rejected(n: int) -> float:
        hits = 0
        for _ in range(400):
            values = [rng.gauss(effect, sd) for _ in range(n)]
            z = statistics.fmean(values) / (statistics.stdev(values) / n ** 0.5)
            hits += abs(z) > 1.959964
        return hits / 400

    assert 0.72 <= rejected(needed) <= 0.88
    assert rejected(needed // 2) < 0.6
    assert facts_for_power({**entry, "value": 0.0}, 0.0) is None  # no effect to detect
    assert facts_for_power({"value": None, "ci95": None, "n": 0}, 0.0) is None
    assert facts_for_power(entry, 0.0, alpha=0.05 / 10) > needed  # Holm over 10 claims asks more

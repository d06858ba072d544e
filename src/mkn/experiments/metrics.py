"""Metrics of the experiments: small pure functions, each with its formula and source.

The relative change of p(gold) and the controls of an effect (selectivity, specificity) live in
:mod:`mkn.interventions.controls`.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

# Relative changes below this (0.1%) are treated as this in denominators, so a neuron set that
# leaves unrelated facts untouched gives a large but finite success ratio, not a division by 0.
MIN_UNRELATED_CHANGE = 1e-3


def success_ratio(enhance_related: float, enhance_unrelated: float, suppress_related: float,
                  suppress_unrelated: float) -> float:
    """AMIG Eq. 11: SR = |d_rel/d_unrel| (enhance) + |d_rel/d_unrel| (suppress).

    ``d`` are relative changes of p(gold); denominators are floored at
    :data:`MIN_UNRELATED_CHANGE` in absolute value (AMIG's code returns 0 for a zero one).
    """
    def term(related: float, unrelated: float) -> float:
        return abs(related) / max(abs(unrelated), MIN_UNRELATED_CHANGE)

    return term(enhance_related, enhance_unrelated) + term(suppress_related, suppress_unrelated)


def precision_recall_f1(predicted: Sequence[bool], actual: Sequence[bool]) -> dict[str, float]:
    """Standard definitions with "true fact" as the positive class.

    precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R).
    (AMIG's ``cal_hallucination.py`` swaps precision and recall.)
    """
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} labels")
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(a and not p for p, a in zip(predicted, actual, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = (sum(p == a for p, a in zip(predicted, actual, strict=True)) / len(actual)
                if actual else 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy,
            "tp": tp, "fp": fp, "fn": fn, "n": len(actual)}


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Threshold-free area under the ROC curve of ``scores`` for ``labels`` (True: positive):
    AUC = P(s+ > s-) + P(s+ = s-) / 2 over every (positive, negative) pair, the Mann-Whitney
    form (Hanley & McNeil 1982). A judge that gives every pair the same score (e.g. "always
    true") gets 0.5; None without both classes."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def accuracy(correct: Sequence[bool]) -> float:
    """Share of true values (0 for an empty sequence is an error, not a silent 0)."""
    if not correct:
        raise ValueError("accuracy of an empty set")
    return sum(correct) / len(correct)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of an empty set")
    return statistics.median(values)


NULLS = (0.0, 0.5)  # the nulls the claims test against: a difference of 0, a paired share of 0.5


def bootstrap_distribution(values: Sequence, statistic: Callable = median,
                           resamples: int = 2000, seed: int = 0) -> list[float]:
    """The sorted bootstrap replicates of ``statistic`` over ``values`` (e.g. facts)."""
    if not values:
        raise ValueError("bootstrap of an empty set")
    rng = random.Random(seed)
    return sorted(statistic([rng.choice(values) for _ in values]) for _ in range(resamples))


def percentile_ci(stats: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of sorted bootstrap replicates ``stats``."""
    low = stats[math.floor((1 - level) / 2 * len(stats))]
    high = stats[min(len(stats) - 1, math.ceil((1 + level) / 2 * len(stats)) - 1)]
    return low, high


def bootstrap_p(stats: Sequence[float], null: float) -> float:
    """Two-sided bootstrap p-value of "the statistic differs from ``null``": twice the smaller
    share of replicates on either side of the null (a replicate equal to it counts on both
    sides), at most 1. It agrees with the percentile interval: p < 0.05 exactly when the 95%
    interval excludes the null, up to the replicates' granularity (Efron & Tibshirani 1993,
    ch. 16)."""
    at_most = sum(s <= null for s in stats) / len(stats)
    at_least = sum(s >= null for s in stats) / len(stats)
    return min(1.0, 2 * min(at_most, at_least))


def facts_for_power(entry: dict, null: float, power: float = 0.8,
                    alpha: float = 0.05) -> int | None:
    """Facts needed for a two-sided test at ``alpha`` to reject ``null`` with probability
    ``power`` if the effect is what ``entry`` (an interval over facts: ``value``, ``ci95``,
    ``facts`` or ``n``) measured. The standard error is read from the interval,
    ``SE = (high - low) / (2 z_0.975)``, and shrinks as 1/sqrt(n), so

        n = n_obs * ((z_{1 - alpha/2} + z_power) * SE / |value - null|)^2

    (the normal approximation of the test; Cohen 1988, ch. 12; the "power estimates scaled
    from the published intervals" of issue 26). None when there is no effect to detect (value
    at the null) or no interval; a zero-width interval away from the null needs no more facts
    than it has."""
    if not entry or entry.get("value") is None or not entry.get("ci95"):
        return None
    observed = entry.get("facts", entry.get("n"))
    effect = abs(entry["value"] - null)
    if not observed or effect == 0:
        return None
    normal = statistics.NormalDist()
    low, high = entry["ci95"]
    se = (high - low) / (2 * normal.inv_cdf(0.975))
    z = normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)
    return max(2, math.ceil(observed * (z * se / effect) ** 2))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Holm 1979), controlling the family-wise error over
    the claims: sort the m p-values, multiply the i-th smallest by (m - i), keep them
    monotone, cap at 1. ``None`` (a claim without a test) is left out of m and stays None."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def bootstrap_ci(values: Sequence[float], statistic: Callable[[Sequence[float]], float] = median,
                 resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over ``values`` (e.g. facts)."""
    return percentile_ci(bootstrap_distribution(values, statistic, resamples, seed), level)


def paired_outcome(a: float | None, b: float | None) -> float | None:
    """One item of a paired comparison: 1 when ``a`` beats ``b``, 0.5 for a tie, 0 when ``b``
    wins; a side without a value (a method that found no neurons) loses to one with a value,
    and the item is None (left out) when neither has one."""
    if a is None or b is None:
        return None if a is None and b is None else 0.0 if a is None else 1.0
    return 1.0 if a > b else 0.5 if a == b else 0.0


def curve_area(values: Sequence[float]) -> float:
    """The normalized area under a curve sampled on a grid of sizes: trapezoids between
    neighbouring grid points, divided by the number of intervals (the mean height of the curve
    with the grid points equally spaced, as k = 1, 2, 5, 10, ... are on a log axis); one point:
    its value. (AOPC of Samek et al. 2017 averages the curve the same way.)"""
    if not values:
        raise ValueError("area of an empty curve")
    if len(values) == 1:
        return float(values[0])
    return sum((a + b) / 2 for a, b in zip(values, values[1:], strict=False)) / (len(values) - 1)


def interval(values: Sequence, statistic: Callable = statistics.median, seed: int = 0) -> dict:
    """``{"value", "ci95", "n"}``: ``statistic`` of ``values`` with a bootstrap 95% interval."""
    values = list(values)
    if not values:
        return {"value": None, "ci95": None, "n": 0}
    stats = bootstrap_distribution(values, statistic, seed=seed)
    return {"value": statistic(values), "ci95": list(percentile_ci(stats)), "n": len(values),
            "p": p_values(stats)}


def p_values(stats: Sequence[float]) -> dict[str, float]:
    """Bootstrap p-values against each of :data:`NULLS`, keyed by the null as text."""
    return {str(null): bootstrap_p(stats, null) for null in NULLS}


def clustered_interval(pairs: Sequence[tuple[str, float]],
                       statistic: Callable = statistics.median, seed: int = 0) -> dict:
    """``statistic`` of the values of ``(fact_id, value)`` pairs, with a bootstrap interval that
    resamples *facts* (all of a fact's values together: its languages are not independent)."""
    groups: dict[str, list[float]] = {}
    for fact_id, value in pairs:
        groups.setdefault(fact_id, []).append(value)
    clusters = list(groups.values())
    if not clusters:
        return {"value": None, "ci95": None, "n": 0, "facts": 0}
    pooled = [v for cluster in clusters for v in cluster]

    def on_sample(sample: Sequence[list[float]]) -> float:
        return statistic([v for cluster in sample for v in cluster])

    stats = bootstrap_distribution(clusters, on_sample, seed=seed)
    return {"value": statistic(pooled), "ci95": list(percentile_ci(stats)),
            "n": len(pooled), "facts": len(clusters), "p": p_values(stats)}


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks; None when either
    side is constant (no ranking to compare)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two sequences of the same length >= 2, got "
                         f"{len(x)} and {len(y)}")
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / (sx * sy)

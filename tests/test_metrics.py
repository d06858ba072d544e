"""Experiment metrics on hand-made numbers."""

from __future__ import annotations

import pytest

from mkn.experiments.metrics import (
    accuracy,
    bootstrap_ci,
    precision_recall_f1,
    success_ratio,
    win_shares,
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


def test_accuracy_and_bootstrap():
    assert accuracy([True, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="empty"):
        accuracy([])
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0] * 4, seed=1)
    assert 1.0 <= low <= 3.0 <= high <= 5.0
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0)


def test_win_shares_split_ties():
    shares = win_shares({"ig": [1, 5, 2], "amig": [3, 5, 1], "matrice": [2, 1, 0]})
    assert shares == pytest.approx({"ig": 0.5, "amig": 0.5, "matrice": 0.0})

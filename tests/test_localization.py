"""Localization rules on hand-checkable cases and on a tiny model with planted neurons."""

from __future__ import annotations

import pytest
import torch

from mkn.interventions.activation import suppress
from mkn.interventions.rows import row_probabilities
from mkn.localization import matrice
from mkn.localization.degenerate import degenerate_neurons, select_pairs, select_potential
from mkn.localization.neurons import (
    coarse_neurons,
    jaccard,
    layer_histogram,
    overlap_matrix,
    refine,
    shared_neurons,
    threshold_for,
)
from tests.tiny_models import build, torch_threads

PLANTED = ((1, 5), (1, 9))  # a redundant pair in the last layer of the tiny GPT-2
EN, ZH = "The capital of France is", "法国的首都是"


# ---------------------------------------------------------------- pure rules, hand numbers


def test_coarse_neurons_use_the_max_over_all_layers():
    scores = torch.tensor([[0.1, 1.0, 0.25], [0.5, 0.31, -2.0]])
    assert coarse_neurons(scores, 0.3) == [(0, 1), (1, 0), (1, 1)]
    assert coarse_neurons(scores, 0.5) == [(0, 1)]
    assert coarse_neurons(-scores.abs(), 0.2) == []
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        coarse_neurons(scores, 1.5)


def test_thresholds_follow_amig_defaults_and_overrides():
    assert threshold_for("en") == 0.3 and threshold_for("zh") == 0.2
    assert threshold_for("fr") == 0.2
    assert threshold_for("fr", {"*": 0.4}) == 0.4 and threshold_for("en", {"en": 0.1}) == 0.1


def test_refine_keeps_neurons_in_more_than_p_of_queries():
    queries = [[(0, 1), (2, 3)], [(0, 1)], [(0, 1), (2, 3), (4, 4)], [(5, 5)]]
    assert refine(queries, 0.5) == [(0, 1)]  # 3/4 > 0.5; (2, 3) is 2/4, not more
    assert refine(queries, 0.25) == [(0, 1), (2, 3)]
    assert refine([[(1, 1), (1, 1)]], 0.9) == [(1, 1)]  # one query: all kept, no duplicates


def test_shared_neurons_strict_and_soft():
    per_language = {"en": [(0, 1), (1, 2)], "zh": [(0, 1)], "fr": [(0, 1), (1, 2), (3, 3)]}
    assert shared_neurons(per_language) == [(0, 1)]
    assert shared_neurons(per_language, 2 / 3) == [(0, 1), (1, 2)]
    assert layer_histogram([(0, 1), (1, 2), (1, 3)], 3) == [1, 2, 0]
    assert jaccard([(0, 1), (1, 2)], [(0, 1)]) == 0.5
    assert overlap_matrix(per_language)["en"]["fr"] == pytest.approx(2 / 3)


def test_matrice_weighted_lower_bound_by_hand():
    a = torch.tensor([[2.0, 1.0], [1.0, 1.0]])  # query 1 -> normalized [1, .5]
    b = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # query 2 -> normalized [1, 0]
    score = matrice.language_score([a, b], confidences=[0.75, 0.25], lam=1.0)
    # neuron (0,1): values .5 and 0, weights .75/.25: mean .375, std sqrt(.75*.125^2+.25*.375^2)
    std = (0.75 * 0.125**2 + 0.25 * 0.375**2) ** 0.5
    assert float(score[0, 1]) == pytest.approx(0.375 - std)
    assert float(score[0, 0]) == pytest.approx(1.0)  # consistent: no spread
    plain = matrice.language_score([a, b], confidences=[0.9, 0.1], lam=0.0, uniform=True)
    assert torch.allclose(plain, (a / 2 + b) / 2)  # the ablation is plain averaging
    combined = matrice.multilingual_score({"en": torch.ones(2), "zh": torch.zeros(2)},
                                          {"en": 3.0, "zh": 1.0}, lam=0.0)
    assert torch.allclose(combined, torch.full((2,), 0.75))


def test_degenerate_selection_by_hand():
    single = {(0, 1): 0.95, (0, 2): 0.5, (0, 3): 0.81}
    assert select_potential(single, 0.2) == [(0, 1), (0, 3)]
    pairs = {((0, 1), (0, 3)): 0.7, ((0, 1), (0, 4)): 0.76}
    assert select_pairs(pairs, 0.25) == [((0, 1), (0, 3))]


# ------------------------------------------------------- tiny model with a planted pair


def planted_gpt2():
    """Tiny GPT-2 whose last layer has two neurons that each alone make "Paris" near-certain.

    Both neurons fire at a constant ~5 (bias 5, no input weights) and write a large vector
    along the unembedding of "Paris": with either one the final LayerNorm sees that direction
    dominate (p(Paris) ~ 1); with both suppressed the model is back to its random self.
    """
    lm = build("gpt2", cached=False)
    target = lm.tokenizer.convert_tokens_to_ids("Paris")
    wte = lm.model.transformer.wte.weight
    with torch.no_grad():
        wte[target] *= 8
        direction = wte[target] - wte[target].mean()
        block = lm.blocks[1].mlp
        for layer, index in PLANTED:
            assert layer == 1
            block.c_fc.weight[:, index] = 0
            block.c_fc.bias[index] = 5.0
            block.c_proj.weight[index] = 40 * direction / direction.norm()
    return lm


@pytest.fixture(scope="module")
def planted():
    with torch_threads(1):
        yield planted_gpt2()


def test_row_probabilities_match_one_by_one_suppression(planted):
    sets = [[], [PLANTED[0]], [PLANTED[1]], list(PLANTED), [(0, 3), (1, 7)]]
    with torch_threads(1):
        batched = row_probabilities(planted, EN, "Paris", sets)
        for neurons, p in zip(sets, batched, strict=True):
            if neurons:
                with suppress(planted, neurons, positions=[-1]):
                    expected = row_probabilities(planted, EN, "Paris", [[]])[0]
            else:
                expected = row_probabilities(planted, EN, "Paris", [[]])[0]
            assert float(p) == pytest.approx(float(expected), rel=1e-5)


def test_planted_redundant_pair_is_degenerate(planted):
    with torch_threads(1):
        result = degenerate_neurons(planted, [(EN, "Paris"), (ZH, "Paris")],
                                    [PLANTED[0], PLANTED[1], (1, 0), (0, 3)])
    assert set(PLANTED) <= set(result.potential)
    assert (PLANTED[0], PLANTED[1]) in result.pairs
    assert result.pair_ratio[(PLANTED[0], PLANTED[1])] < 0.5
    assert all(set(pair) == set(PLANTED) for pair in result.pairs)


def test_planted_neurons_found_in_every_language_are_language_agnostic(planted):
    from mkn.data.schema import Fact
    from mkn.localization.locate import LocateConfig, locate_fact

    fact = Fact(id="planted", relation="P36", languages={
        "en": {"subject": "France", "object": "Paris", "queries": ["The capital of [X] is [Y] ."]},
        "zh": {"subject": "法国", "object": "Paris", "queries": ["[X]的首都是[Y]。"]},
    })
    config = LocateConfig(method="ig", steps=8, rule="gauss-legendre", degenerate=False)
    with torch_threads(1):
        result = locate_fact(planted, fact, ["en", "zh"], config)
        # the planted neurons fire whatever the input, so AMIG's baseline (the same input with
        # tokens replaced) keeps them on and rightly gives them nothing: use the zero baseline
        matrice = locate_fact(planted, fact, ["en", "zh"], config.model_copy(
            update={"method": "matrice", "matrice_baseline": "ig"}))
    for lang in ("en", "zh"):
        assert set(PLANTED) <= set(result.languages[lang].neurons), lang
    assert set(PLANTED) <= set(result.language_agnostic)
    assert set(result.language_agnostic) <= set(result.soft_language_agnostic)
    assert set(PLANTED) <= set(matrice.language_agnostic)

"""Methods at equal size: curve areas and the size-curves summary on hand-made numbers, the
curves of a tiny model with a planted fact neuron, and the cross-language rankings of the
shared-set test on a neuron planted in two languages."""

from __future__ import annotations

import pytest
import torch

from mkn.data.schema import Fact
from mkn.experiments import shared_sets, size_curves
from mkn.experiments.metrics import curve_area
from mkn.interventions.controls import ControlledEffect
from mkn.localization.generic import GenericNeurons, ReferenceItem
from mkn.localization.knowledge import known_items
from mkn.localization.locate import LocateConfig, top_neurons
from tests.test_controls import FACT_NEURON, GENERIC_NEURON, _unit, facts, planted_facts_gpt2
from tests.tiny_models import build, torch_threads


def test_curve_area_is_the_mean_height_over_the_grid():
    assert curve_area([0.0, 1.0]) == pytest.approx(0.5)
    assert curve_area([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert curve_area([0.0, 0.5, 1.0, 1.0]) == pytest.approx((0.25 + 0.75 + 1.0) / 3)
    assert curve_area([0.7]) == 0.7
    with pytest.raises(ValueError, match="empty"):
        curve_area([])


def _item(fact: str, lang: str, heights: dict[str, list[float]]) -> dict:
    """An item whose suppression effect at the k-th size is -height (random sets: 0, unrelated
    facts: -0.1), so selectivity = height and specificity = height - 0.1."""
    return {"fact_id": fact, "language": lang, "control_facts": 1, "curves": {
        method: {str(k): {mode: ControlledEffect(mode, k, -h if mode == "suppress" else h,
                                                 (0.0,), (-0.1 if mode == "suppress" else 0.1,)
                                                 ).to_dict() for mode in size_curves.MODES}
                 for k, h in zip((1, 2, 5), values, strict=True)}
        for method, values in heights.items()}}


def test_summary_compares_methods_at_each_size_pooled_and_per_language():
    items = [_item("a", "en", {"amig": [0.2, 0.6, 1.0], "random": [0.0, 0.0, 0.0]}),
             _item("a", "zh", {"amig": [0.0, 0.2, 0.4], "random": [0.0, 0.0, 0.0]}),
             _item("b", "en", {"amig": [0.4, 0.8, 1.0], "random": [0.0, 0.1, 0.0]})]
    summary = size_curves.summarize(items, ("amig", "random"), (1, 2, 5), ["en", "zh"])
    amig = summary["amig"]
    assert amig["per_k"]["2"]["suppress"]["selectivity"]["value"] == pytest.approx(0.6)
    assert amig["per_k"]["2"]["suppress"]["specificity"]["value"] == pytest.approx(0.5)
    areas = amig["area"]["suppress_selectivity"]
    en = [curve_area([0.2, 0.6, 1.0]), curve_area([0.4, 0.8, 1.0])]
    assert areas["en"]["value"] == pytest.approx(sum(en) / 2)
    assert areas["zh"]["value"] == pytest.approx(curve_area([0.0, 0.2, 0.4]))
    assert areas["all"]["n"] == 3 and areas["all"]["facts"] == 2
    assert summary["random"]["area"]["suppress_selectivity"]["all"]["value"] == pytest.approx(
        0.0)
    assert amig["area"]["suppress_specificity"]["all"]["value"] == pytest.approx(
        areas["all"]["value"] - 0.1)


def test_a_planted_fact_neuron_tops_the_curve():
    """With the generic neuron left out, the France fact's top-1 neuron is the planted one."""
    lm = planted_facts_gpt2()
    config = LocateConfig(method="ig", steps=8, rule="gauss-legendre", known="any")
    generic = GenericNeurons([ReferenceItem(f"r{i}", f"P{i % 3}", "en", (GENERIC_NEURON,))
                              for i in range(9)])
    with torch_threads(1):
        result = size_curves.run(lm, facts(), ["en"], config, methods=("ig",), sizes=(1, 2),
                                 draws=2, unrelated=2, generic=generic)
    first = next(i for i in result["items"] if i["fact_id"] == "fact-0")
    assert first["ranked"]["ig"][0] == list(FACT_NEURON)
    assert list(GENERIC_NEURON) not in first["ranked"]["ig"]
    top1 = first["curves"]["ig"]["1"]["suppress"]
    assert top1["effect"] < -0.8 and top1["selectivity"] > 0.8 and top1["specificity"] > 0.8
    assert first["curves"]["random"]["1"]["suppress"]["selectivity"] < 0.2
    assert result["skipped_sizes"] == [] and result["sizes"] == [1, 2]


def test_two_methods_with_the_same_ranking_get_the_same_controls():
    """MATRICE on one query per language ranks as AMIG does: its curves, random draws included,
    must then be AMIG's, not another draw (issue 20)."""
    lm = planted_facts_gpt2()
    config = LocateConfig(method="amig", steps=4, max_queries=1, known="any")
    with torch_threads(1):
        result = size_curves.run(lm, facts(), ["en"], config, methods=("amig", "matrice"),
                                 sizes=(1, 2), draws=2, unrelated=2)
    for item in result["items"]:
        assert item["ranked"]["amig"] == item["ranked"]["matrice"]
        assert item["curves"]["amig"] == item["curves"]["matrice"]


BILINGUAL = (1, 7)


def planted_bilingual_gpt2():
    """Tiny GPT-2 with one neuron that fires at "France" and at "国" (the last token of the
    Chinese queries) and writes "Paris" and "巴": the same fact's neuron in both languages."""
    lm = build("gpt2", cached=False)
    token = lm.tokenizer.convert_tokens_to_ids
    wte = lm.model.transformer.wte.weight
    mlp = lm.blocks[1].mlp
    with torch.no_grad():
        for word in ("France", "国"):
            wte[token(word)] *= 8
        mlp.c_fc.weight[:, BILINGUAL[1]] = 2 * _unit(_unit(wte[token("France")])
                                                     + _unit(wte[token("国")]))
        mlp.c_fc.bias[BILINGUAL[1]] = -4.0
        mlp.c_proj.weight[BILINGUAL[1]] = 40 * _unit(_unit(wte[token("Paris")])
                                                     + _unit(wte[token("巴")]))
    return lm


BILINGUAL_FACT = Fact(id="capital-france", relation="P36", languages={
    "en": {"subject": "France", "object": "Paris",
           "queries": ["The capital of [X] [Y] .", "The capital city of [X] [Y] ."]},
    "zh": {"subject": "法国", "object": "巴黎", "queries": ["首都是[X][Y]。", "的首都是[X][Y]。"]}})


def test_a_neuron_planted_in_every_language_ranks_first_for_every_method():
    lm = planted_bilingual_gpt2()
    config = LocateConfig(method="amig", steps=8, rule="gauss-legendre", known="any")
    with torch_threads(1):
        known = known_items(lm, [BILINGUAL_FACT], ["en", "zh"], "any")
        scores = shared_sets.cross_language_scores(lm, BILINGUAL_FACT, ["en", "zh"], config,
                                                   shared_sets.RANKINGS, {}, known, None)
    assert set(scores) == set(shared_sets.RANKINGS)
    for name, score in scores.items():
        assert top_neurons(score, 1) == [BILINGUAL], name


def test_min_normalized_needs_every_language():
    en = torch.tensor([[4.0, 2.0, 0.0]])
    zh = torch.tensor([[1.0, 2.0, 2.0]])
    both = shared_sets.min_normalized({"en": en, "zh": zh})
    assert both.tolist() == [[0.5, 0.5, 0.0]]  # high in en only or in zh only is not shared


def test_a_method_without_a_curve_loses_the_item_instead_of_leaving_it_out():
    from mkn.experiments.size_curves import _win

    assert _win([0.5, 0.7], [0.4, 0.6]) == 1.0 and _win([0.5], [0.5]) == 0.5
    assert _win(None, [0.1]) == 0.0 and _win([0.1], None) == 1.0 and _win(None, None) is None

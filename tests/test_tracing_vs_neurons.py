"""The tracing-vs-neurons experiment on a tiny model with a planted mechanism."""

from __future__ import annotations

import pytest
import torch

from mkn.experiments import EXPERIMENTS
from mkn.experiments import tracing_vs_neurons as tvn
from mkn.experiments.metrics import ranks, spearman
from mkn.localization.locate import LocateConfig
from tests import tiny_models as tm


@pytest.fixture(autouse=True)
def _one_thread():
    with tm.torch_threads(1):
        yield


def test_spearman_and_ranks():
    assert ranks([3.0, 1.0, 1.0, 2.0]) == [4.0, 1.5, 1.5, 3.0]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1])


def one_live_mlp(live: int = 2, layers: int = 4):
    """A tiny llama whose MLPs all output nothing (output projection zero) but layer
    ``live``'s."""
    lm = tm.build("llama", cached=False, num_hidden_layers=layers)
    with torch.no_grad():
        for layer in range(layers):
            if layer != live:
                lm.down_proj(layer).weight.zero_()
    return lm


def test_tracing_and_neurons_agree_where_one_mlp_carries_every_fact():
    """All MLPs off but layer 2's: the trace of the MLP output and the knowledge neurons can
    only be in layer 2, so they agree perfectly (rho = 1) on every item with neurons."""
    lm = one_live_mlp()
    facts = tm.two_relation_facts()[:6]
    config = LocateConfig(method="grad-x-act", known="any", thresholds={"*": 0.1})
    result = tvn.run(lm, facts, ["en"], config, samples=4)
    assert "tracing-vs-neurons" in EXPERIMENTS
    items = [i for i in result["items"] if i["neurons"]]
    assert items
    for item in items:
        assert {layer for layer, share in enumerate(item["neuron_profile"]) if share} == {2}
        assert item["peak_layer"] == 2 and item["agreement"] == pytest.approx(1.0)
        assert item["agreement_at_prediction"] in (None, pytest.approx(1.0))
        assert item["attention_share"] is None or 0 <= item["attention_share"] <= 1
    assert result["summary"]["agreement"]["value"] == pytest.approx(1.0)
    assert "agreement: Spearman(tracing MLP profile, grad-x-act neurons" in tvn.table(result)


def test_masked_models_are_refused_in_one_line():
    with pytest.raises(ValueError, match="needs a causal LM"):
        tvn.run(tm.tiny("bert"), tm.two_relation_facts()[:2], ["en"], LocateConfig())


def test_localization_predicts_editing_where_one_mlp_carries_every_fact():
    """Hase et al.'s question on a planted model (all MLPs off but layer 2's): an edit of a
    switched-off layer's neurons cannot move anything, so editing works only at layer 2, where
    tracing, the neurons and the attribution mass all are."""
    from mkn.experiments import localization_vs_editing as lve

    lm = one_live_mlp()
    facts = tm.capital_facts()[:4]
    config = LocateConfig(method="grad-x-act", known="any", thresholds={"*": 0.1})
    result = lve.run(lm, facts, ["en"], config, k=4, samples=4)
    assert "localization-vs-editing" in EXPERIMENTS and result["items"]
    for item in result["items"]:
        assert [g for layer, g in enumerate(item["gain"]) if layer != 2] == [0.0, 0.0, 0.0]
        assert item["gain"][2] != 0 and len(item["random_gain"]) == 4
        if item["gain"][2] > 0:
            assert item["best_edit_layer"] == 2
            assert item["rho_neuron_share"] == pytest.approx(1.0)
            assert item["best_tracing_agrees"] and item["best_attribution_mass_agrees"]
    assert all(set(i["locality"]) == {"same_relation", "other_relation"}
               for i in result["items"])  # the best layer's edit, on its neighbours
    assert result["summary"]["locality_same_relation"]["n"] >= 1
    text = lve.table(result)
    assert "Spearman(edit gain, tracing) over layers" in text and "chance 0.25" in text
    assert "locality of the best layer's edit" in text


def test_localization_vs_editing_never_edits_neurons_left_out_of_the_fact_set():
    """Each layer's top-k is taken from the fact set: with the layer-2 top-4 of a capital made
    relation neurons of its relation, the layer-2 edit takes other neurons (another gain)."""
    from mkn.experiments import localization_vs_editing as lve
    from mkn.localization.generic import ReferenceItem
    from mkn.localization.locate import locate_fact
    from mkn.localization.relations import LeftOut, RelationNeurons

    ranked = lve.without(torch.tensor([[3.0, 1.0], [2.0, 5.0]]), [(1, 1)])
    assert ranked[1].tolist() == [2.0, -float("inf")] and ranked[0].tolist() == [3.0, 1.0]
    lm = one_live_mlp()
    facts = tm.capital_facts()[:4]
    config = LocateConfig(method="grad-x-act", known="any", thresholds={"*": 0.1})
    scores = locate_fact(lm, facts[0], ["en"], config).languages["en"].scores
    top = tuple((2, int(i)) for i in torch.argsort(scores[2].float(), descending=True)[:4])
    listed = RelationNeurons([ReferenceItem(f"ref-{i}", facts[0].relation, "en", top)
                              for i in range(3)])
    assert set(listed.neurons(facts[0].relation)) == set(top)
    before = lve.run(lm, facts, ["en"], config, k=4, samples=4)
    after = lve.run(lm, facts, ["en"], config, k=4, samples=4,
                    generic=LeftOut(relations=listed))
    gain = {i["fact_id"]: i["gain"][2] for i in before["items"]}
    moved = {i["fact_id"]: i["gain"][2] for i in after["items"]}
    assert moved[facts[0].id] != gain[facts[0].id]

"""Interventions: activation hooks and weight edits, always undone, exactly."""

from __future__ import annotations

import pytest
import torch

import mkn
from mkn.interventions.activation import enhance, intervene, suppress
from mkn.interventions.weights import WeightEdit, edited, erase, replace_object, value_vectors
from mkn.models.hooks import capture
from tests.tiny_models import build, torch_threads

PROMPT = "The capital of France is"


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _weights(lm):
    return {name: p.detach().clone() for name, p in lm.model.named_parameters()}


def _acts(lm, layer: int) -> torch.Tensor:
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), capture(lm, layers=[layer]) as store:
        lm.model(ids)
    return store[layer][0]


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_activation_interventions_change_only_their_neurons_and_undo(family):
    lm = build(family)
    clean = _acts(lm, 1)
    with suppress(lm, [(1, 3), (1, 5)]):
        inside = _acts(lm, 1)
    assert torch.all(inside[:, [3, 5]] == 0)
    keep = [i for i in range(lm.n_neurons) if i not in (3, 5)]
    assert torch.equal(inside[:, keep], clean[:, keep])
    with enhance(lm, [(1, 3)], factor=2.0, positions=[-1]):
        inside = _acts(lm, 1)
    assert torch.allclose(inside[-1, 3], 2 * clean[-1, 3])
    assert torch.equal(inside[:-1], clean[:-1])
    with intervene(lm, [(1, 4)], mode="set", value=7.0):
        assert torch.all(_acts(lm, 1)[:, 4] == 7.0)
    assert torch.equal(_acts(lm, 1), clean)


def test_a_bool_mask_suppresses_exactly_its_neurons():
    lm = build("gpt2")
    clean = _acts(lm, 1)
    mask = torch.zeros(lm.n_layers, lm.n_neurons, dtype=torch.bool)
    mask[1, [3, 5]] = True
    with suppress(lm, mask):
        inside = _acts(lm, 1)
    assert torch.all(inside[:, [3, 5]] == 0)
    keep = [i for i in range(lm.n_neurons) if i not in (3, 5)]
    assert torch.equal(inside[:, keep], clean[:, keep])
    with suppress(lm, torch.tensor([[1, 3], [1, 5]])):  # integer pairs as a tensor
        assert torch.equal(_acts(lm, 1), inside)
    from mkn.interventions.controls import controlled_effect

    own = [(PROMPT, "Paris")]
    by_mask = controlled_effect(lm, mask, "suppress", own, draws=2, seed=0)
    by_pairs = controlled_effect(lm, [(1, 3), (1, 5)], "suppress", own, draws=2, seed=0)
    assert by_mask == by_pairs and by_mask.neurons == 2


def test_activation_intervention_is_undone_on_error():
    lm = build("gpt2")
    clean = mkn.probability(lm, PROMPT, "Paris")
    with pytest.raises(RuntimeError, match="boom"), suppress(lm, [(0, 1), (1, 2)]):
        raise RuntimeError("boom")
    assert mkn.probability(lm, PROMPT, "Paris") == clean
    assert all(not m._forward_pre_hooks for m in lm.model.modules())


@pytest.mark.parametrize("bad, message", [
    ([(9, 0)], "layer out of range"),
    ([(0, 10_000)], "index out of range"),
    ([], "empty neuron set"),
    ([(1,)], "a neuron is \\(layer, index\\)"),
    # issue 22: tensors that are not pairs were read as pairs and hit neuron (0, 0)
    (torch.rand(3, 64), "got a float32 tensor of shape \\(3, 64\\)"),
    (torch.zeros(2, 3, dtype=torch.long), "integer tensor of shape \\(N, 2\\)"),
    (torch.ones(3, 3, dtype=torch.bool), "a neuron mask has shape"),
    ([(0.5, 1)], "a pair of integers"),
    ([(True, 1)], "a pair of integers"),
])
def test_bad_neurons_get_clear_errors(bad, message):
    lm = build("gpt2")
    with pytest.raises(ValueError, match=message), suppress(lm, bad):
        pass
    with pytest.raises(ValueError, match=message):
        erase(lm, bad)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_weight_edits_touch_only_their_vectors_and_undo_bit_exactly(family, tmp_path):
    lm = build(family, cached=False)
    before = _weights(lm)
    vector_before = value_vectors(lm, 1).clone()
    prompt = "The capital of France is [Y] ." if family == "bert" else PROMPT
    edit = replace_object(lm, [(1, 3), (0, 7)], prompt, "Paris", "Rome")
    after = _weights(lm)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == 2 and all(lm.adapter.down_proj.split(".")[-1] in n for n in changed)
    vector_after = value_vectors(lm, 1)
    assert not torch.equal(vector_after[3], vector_before[3])
    assert torch.equal(vector_after[4:], vector_before[4:])
    edit.save(tmp_path / "edit.safetensors")
    edit.undo()
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    again = WeightEdit.load(lm, tmp_path / "edit.safetensors").apply()
    assert all(torch.equal(after[n], p) for n, p in lm.model.named_parameters())
    again.undo()
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())


def test_conv1d_edit_moves_rows_not_columns():
    lm = build("gpt2", cached=False)
    weight = lm.down_proj(1).weight  # Conv1D: [neurons, hidden]
    assert weight.shape == (lm.n_neurons, lm.model.config.n_embd)
    with edited(erase(lm, [(1, 6)])):
        assert torch.all(weight[6] == 0) and weight[5].abs().sum() > 0
    assert weight[6].abs().sum() > 0


def test_dai_edit_moves_probability_towards_new_object():
    lm = build("llama", cached=False)
    old, new = mkn.probability(lm, PROMPT, "Paris"), mkn.probability(lm, PROMPT, "Rome")
    neurons = [(1, i) for i in range(lm.n_neurons)]
    with edited(replace_object(lm, neurons, PROMPT, "Paris", "Rome", lambda_old=2,
                               lambda_new=2)):
        assert mkn.probability(lm, PROMPT, "Rome") > new
        assert mkn.probability(lm, PROMPT, "Paris") < old
    assert mkn.probability(lm, PROMPT, "Paris") == old

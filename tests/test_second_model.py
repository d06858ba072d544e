"""The second reference model (issue 24), loaded by name from its chunk packages: a smoke test
of a few seconds of compute once it is converted. Skipped, with the reason, only when its extra
is not installed (CI installs it: ``make setup`` installs ``.[dev]``, which includes it)."""

from __future__ import annotations

import pytest
import torch

import mkn
from mkn.models.named import NAMED_MODELS, SECOND_REFERENCE, PartMissing

pytestmark = pytest.mark.real
MODEL = NAMED_MODELS[SECOND_REFERENCE]
PROMPT, TARGET = "The capital of France is", "Paris"

try:
    MODEL.part_path(1)
except PartMissing as why:
    pytest.skip(f"{why}", allow_module_level=True)


@pytest.fixture(scope="module")
def second():
    return mkn.load_model(SECOND_REFERENCE, dtype="auto")


def test_loads_by_name_with_its_provenance(second):
    assert second.causal and second.model.config.model_type == "qwen2"
    assert (second.n_layers, second.n_neurons) == MODEL.shape
    assert second.weights.startswith("GGUF ") and MODEL.filename in second.weights
    assert second.model.config.vocab_size == 151936


def test_knows_a_fact_and_attributes_it_on_the_upper_layers(second):
    """p(Paris) from mkn equals a plain forward pass and is the model's top prediction;
    gradient x activation on the last two layers (one pass: the cheapest method) finds neurons
    whose suppression lowers p(Paris)."""
    from mkn.interventions.activation import suppress

    ids = second.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = second.model(ids).logits[0, -1].float().softmax(-1)
    prob = mkn.probability(second, PROMPT, TARGET)
    token = second.tokenizer(" " + TARGET, add_special_tokens=False).input_ids[0]
    assert prob == pytest.approx(float(plain[token]), rel=0.05)
    assert prob > 0.1 and int(plain.argmax()) == token
    layers = [second.n_layers - 2, second.n_layers - 1]
    result = mkn.attribute(second, PROMPT, TARGET, method="grad-x-act", layers=layers)
    top = [(layer, index) for layer, index, _ in result.top(10)]
    assert {layer for layer, _ in top} <= set(layers)
    with suppress(second, top):
        assert mkn.probability(second, PROMPT, TARGET) < prob

"""Every supported family, on a tiny random model: the fast engine against the plain reference.

(a) ``mkn.attribute`` equals :func:`tests.reference_ig.reference_attribute` (methods ``ig`` and
    ``amig``, single- and multi-token targets, English and Chinese, every quadrature rule);
(b) the hooked activations are the post-activation input of the FFN output projection,
    recomputed by hand from each block's own submodules;
(c) the reported p(target) is the probability of a plain full forward pass;
(d) ``lm.n_layers`` and ``lm.n_neurons`` are right.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

import mkn
from mkn.models.hooks import capture
from tests import tiny_models as tm
from tests.reference_ig import reference_attribute, reference_prob, reference_token_probs

FAMILIES = tm.FAMILIES
METHODS = ("ig", "amig")
RULES = ("left", "trapezoid", "gauss-legendre")
STEPS = 5

# (prompt for causal LMs, prompt for masked LMs, target); "New York" and "巴黎" are two tokens.
QUERIES = {
    "single": ("The capital of France is", "The capital of France is [Y] .", "Paris"),
    "multi": ("The capital of France is", "The capital of France is [Y] .", "New York"),
    "zh": ("法国的首都是", "法国的首都是[Y]。", "巴黎"),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with tm.torch_threads(1):
        yield


def query(lm, name: str) -> tuple[str, str]:
    causal, masked, target = QUERIES[name]
    return (causal if lm.causal else masked), target


def assert_scores_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4):
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max())


# -- (a) the engine against the reference ---------------------------------------------------


# every rule for the English queries; the Chinese one with the left rule
CASES = [(name, rule) for name in ("single", "multi") for rule in RULES] + [("zh", "left")]


@pytest.mark.parametrize(("name", "rule"), CASES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_attribute_matches_reference(family, method, name, rule):
    lm = tm.tiny(family)
    prompt, target = query(lm, name)
    result = mkn.attribute(lm, prompt=prompt, target=target, method=method, steps=STEPS, rule=rule)
    expected = reference_attribute(lm, prompt, target, method, STEPS, rule)
    if name != "single":
        assert len(result.target_ids) == 2
    assert_scores_close(result.scores, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_subset_and_small_batches(family):
    """Batches that cut across layers, and a subset of layers, give the same scores."""
    lm = tm.tiny(family)
    prompt, target = query(lm, "multi")
    expected = reference_attribute(lm, prompt, target, "amig", 4, "trapezoid")
    full = mkn.attribute(lm, prompt=prompt, target=target, method="amig", steps=4,
                         rule="trapezoid", batch_size=3)
    assert_scores_close(full.scores, expected)
    last = lm.n_layers - 1
    part = mkn.attribute(lm, prompt=prompt, target=target, method="amig", steps=4,
                         rule="trapezoid", layers=[last], batch_size=1)
    assert part.layers == [last]
    assert_scores_close(part.scores[last], expected[last])
    assert torch.all(part.scores[:last] == 0)


@pytest.mark.parametrize("family", tm.CAUSAL_FAMILIES)
def test_one_token_prompt_without_bos(family):
    """No special tokens and a one-token prompt: nothing to cache before the first prediction."""
    lm = tm.build(family, add_bos=False)
    assert lm.tokenizer("France")["input_ids"] == [lm.tokenizer.convert_tokens_to_ids("France")]
    for target in ("Paris", "New York"):
        for method in METHODS:
            result = mkn.attribute(lm, prompt="France", target=target, method=method, steps=3)
            expected = reference_attribute(lm, "France", target, method, 3, "left")
            assert_scores_close(result.scores, expected)
            assert result.prob == pytest.approx(reference_prob(lm, "France", target), rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_are_removed(family):
    lm = tm.tiny(family)
    prompt, target = query(lm, "single")
    mkn.attribute(lm, prompt=prompt, target=target, method="amig", steps=2)
    for layer in range(lm.n_layers):
        assert not lm.down_proj(layer)._forward_pre_hooks
        assert not lm.down_proj(layer)._forward_hooks


# -- (b) the hooked activation is the post-activation FFN intermediate ------------------------


def _linear(module, x):
    """``nn.Linear`` or GPT-2 ``Conv1D`` (weight ``[in, out]``), written out."""
    conv1d = type(module).__name__ == "Conv1D"
    out = x @ (module.weight if conv1d else module.weight.T)
    return out if module.bias is None else out + module.bias


def gelu_erf(z):
    return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))


def gelu_tanh(z):
    return 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def silu(z):
    return z * torch.sigmoid(z)


def _dense(act, fc):
    return lambda m, x: act(_linear(getattr(m, fc), x))


def _gated(act):
    return lambda m, x: act(_linear(m.gate_proj, x)) * _linear(m.up_proj, x)


# family -> (module, from a block, whose input is the FFN input x; neurons from x by hand)
BY_HAND = {
    "bert": ("intermediate", _dense(gelu_erf, "dense")),
    "roberta": ("intermediate", _dense(gelu_erf, "dense")),
    "xlm-roberta": ("intermediate", _dense(gelu_erf, "dense")),
    "gpt2": ("mlp", _dense(gelu_tanh, "c_fc")),  # gelu_new, Conv1D
    "gpt_neo": ("mlp", _dense(gelu_tanh, "c_fc")),
    "gpt_neox": ("mlp", _dense(gelu_erf, "dense_h_to_4h")),
    "bloom": ("mlp", _dense(gelu_tanh, "dense_h_to_4h")),
    "llama": ("mlp", _gated(silu)),
    "mistral": ("mlp", _gated(silu)),
    "qwen2": ("mlp", _gated(silu)),
    "qwen3": ("mlp", _gated(silu)),
    "gemma": ("mlp", _gated(gelu_tanh)),
    "gemma2": ("mlp", _gated(gelu_tanh)),
    "gemma3_text": ("mlp", _gated(gelu_tanh)),
    "gemma3": ("mlp", _gated(gelu_tanh)),
    "xglm": ("fc1", lambda fc1, x: gelu_erf(_linear(fc1, x))),
}


def test_by_hand_covers_every_family():
    assert set(BY_HAND) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooked_activation_is_post_activation(family):
    lm = tm.tiny(family)
    module_path, by_hand = BY_HAND[family]
    tokenizer = lm.tokenizer
    ids = torch.tensor([tokenizer("The capital of France is Paris")["input_ids"]])
    ffn_inputs = {}
    handles = []
    for layer, block in enumerate(lm.blocks):
        module = block.get_submodule(module_path)

        def record(mod, args, layer=layer):
            ffn_inputs[layer] = args[0].detach()

        handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad(), capture(lm) as neurons:
            lm.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(neurons) == list(range(lm.n_layers))
    for layer, block in enumerate(lm.blocks):
        module = block.get_submodule(module_path)
        with torch.no_grad():
            expected = by_hand(module, ffn_inputs[layer])
        assert neurons[layer].shape == (1, ids.shape[1], lm.n_neurons)
        torch.testing.assert_close(neurons[layer], expected, rtol=1e-5, atol=1e-5)


# -- (c) p(target) ---------------------------------------------------------------------------


def _plain_causal_probs(lm, prompt: str, target: str) -> list[float]:
    """Teacher-forced probabilities read off one forward pass over the text, by hand."""
    joiner = "" if "\u4e00" <= target[0] <= "\u9fff" else " "
    ids = lm.tokenizer(prompt + joiner + target)["input_ids"]
    n = len(lm.tokenizer(target, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    probs = torch.softmax(logits, dim=-1)
    return [float(probs[len(ids) - n - 1 + i, ids[len(ids) - n + i]]) for i in range(n)]


def _plain_masked_probs(lm, prompt: str, target: str) -> list[float]:
    """Masks in place of [Y], filled left to right with the gold tokens, by hand."""
    tok = lm.tokenizer
    target_ids = tok(target, add_special_tokens=False)["input_ids"]
    ids = tok(prompt.replace("[Y]", tok.mask_token * len(target_ids)))["input_ids"]
    masks = [p for p, t in enumerate(ids) if t == tok.mask_token_id]
    out = []
    for i, (position, target_id) in enumerate(zip(masks, target_ids, strict=True)):
        filled = list(ids)
        for p, t in zip(masks[:i], target_ids[:i], strict=True):
            filled[p] = t
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([filled])).logits[0, position].float()
        out.append(float(torch.softmax(logits, dim=-1)[target_id]))
    return out


@pytest.mark.parametrize("name", QUERIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_prob_is_plain_forward(family, name):
    lm = tm.tiny(family)
    prompt, target = query(lm, name)
    result = mkn.attribute(lm, prompt=prompt, target=target, method="ig", steps=2)
    plain = (_plain_causal_probs if lm.causal else _plain_masked_probs)(lm, prompt, target)
    assert len(plain) == len(result.token_probs) == (1 if name == "single" else 2)
    assert result.token_probs == pytest.approx(plain, rel=1e-4)
    assert result.token_probs == pytest.approx(reference_token_probs(lm, prompt, target), rel=1e-4)
    assert result.prob == pytest.approx(math.prod(plain), rel=1e-4)
    assert result.prob == pytest.approx(reference_prob(lm, prompt, target), rel=1e-4)


# -- (d) sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes(family):
    lm = tm.tiny(family)
    config = lm.model.config.get_text_config()
    assert lm.n_layers == config.num_hidden_layers == tm.LAYERS
    assert lm.n_neurons == tm.INTERMEDIATE
    for layer in range(lm.n_layers):
        proj = lm.down_proj(layer)
        weight = proj.weight if type(proj).__name__ != "Conv1D" else proj.weight.T
        assert weight.shape == (config.hidden_size, tm.INTERMEDIATE)
    with pytest.raises(IndexError):
        lm.down_proj(lm.n_layers)
    assert lm.causal == (family not in tm.MASKED_FAMILIES)
    # a post-FFN norm (the zero-baseline IG caveat) in Gemma 2 and 3 only, read from the blocks
    assert lm.normalises_ffn_output == (family in ("gemma2", "gemma3_text", "gemma3"))
    result = mkn.attribute(lm, *query(lm, "single"), steps=2)
    assert result.scores.shape == (tm.LAYERS, tm.INTERMEDIATE)


@pytest.mark.parametrize("name", FAMILIES)
def test_predict_many_equals_predict_one_by_one(name):
    """Padded batches of mixed lengths, multi-token targets, under an intervention."""
    from mkn.attribution.api import predict, predict_many
    from mkn.interventions.activation import intervene

    lm = tm.tiny(name)
    queries = [query(lm, kind) for kind in ("single", "multi", "zh", "single")]
    for active in (False, True):
        with intervene(lm, [(0, 1), (1, 2)], "enhance", factor=3.0) if active \
                else torch.no_grad():
            one = [predict(lm, p, t) for p, t in queries]
            many = predict_many(lm, queries, batch_size=2)
        for a, b in zip(one, many, strict=True):
            assert b.prob == pytest.approx(a.prob, rel=1e-4, abs=1e-7)
            assert (b.correct, b.first_predicted_id) == (a.correct, a.first_predicted_id)


@pytest.mark.parametrize("name", FAMILIES)
def test_objects_sharing_a_prompt_score_as_one_by_one(name):
    """One prompt, candidate objects of 1-3 tokens (a prompt's cache shared by continuations of
    different lengths), and prompts of equal and unequal lengths in one call."""
    from mkn.attribution.api import predict, predict_many

    lm = tm.tiny(name)
    causal = lm.causal
    english = "The capital of France is" if causal else "The capital of France is [Y] ."
    german = "The capital of Germany is" if causal else "The capital of Germany is [Y] ."
    other = "The largest city of Japan is" if causal else "The largest city of Japan is [Y] ."
    objects = ["Paris", "New York", "United States Kingdom", "Rome", "New Delhi"]
    queries = [(prompt, obj) for prompt in (english, german, other) for obj in objects]
    one = [predict(lm, p, t) for p, t in queries]
    many = predict_many(lm, queries, batch_size=2)
    for a, b in zip(one, many, strict=True):
        assert b.prob == pytest.approx(a.prob, rel=1e-4, abs=1e-7)
        assert b.token_probs == pytest.approx(a.token_probs, rel=1e-4, abs=1e-7)
        assert (b.correct, b.first_predicted_id) == (a.correct, a.first_predicted_id)


@pytest.mark.parametrize("name", ["gpt2", "gemma3_text", "bloom", "qwen2"])
def test_continuations_split_over_several_passes_score_the_same(name, monkeypatch):
    from mkn.attribution import scoring
    from mkn.attribution.api import predict_many

    lm = tm.tiny(name)
    queries = [("The capital of France is", obj)
               for obj in ("Paris", "New York", "United States Kingdom", "New Delhi")]
    whole = predict_many(lm, queries)
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", tm.VOCAB_SIZE * 2)  # one row per pass
    split = predict_many(lm, queries)
    for a, b in zip(whole, split, strict=True):
        assert b.token_probs == pytest.approx(a.token_probs, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("name", FAMILIES)
def test_rows_with_their_own_interventions_score_as_one_by_one(name):
    """Each row suppresses or enhances its own neurons at every position (one batched pass)."""
    from mkn.attribution.api import predict
    from mkn.attribution.queries import encode
    from mkn.attribution.scoring import score_rows
    from mkn.interventions.activation import intervene

    lm = tm.tiny(name)
    sets = [None, ([(0, 1), (1, 2)], "suppress"), ([(1, 3)], "enhance"), ([(0, 5)], "suppress")]
    queries = [query(lm, kind) for kind in ("single", "multi", "zh")]
    rows = [(q, s) for q in queries for s in sets]
    encoded = [encode(lm, *q) for q, _ in rows]
    interventions = [None if s is None else {
        layer: ([i for l_, i in s[0] if l_ == layer], 0.0 if s[1] == "suppress" else 3.0)
        for layer in {l_ for l_, _ in s[0]}} for _, s in rows]
    batched = score_rows(lm, encoded, interventions, batch_size=5)
    for (q, s), got in zip(rows, batched, strict=True):
        if s is None:
            expected = predict(lm, *q)
        else:
            with intervene(lm, s[0], s[1], factor=3.0):
                expected = predict(lm, *q)
        assert got.token_probs == pytest.approx(expected.token_probs, rel=1e-4, abs=1e-7)
        assert (got.correct, got.first_predicted_id) == (expected.correct,
                                                         expected.first_predicted_id)


@pytest.mark.parametrize("positions", ["all", "prediction"])
@pytest.mark.parametrize("name", tm.CAUSAL_FAMILIES)
def test_rows_of_one_input_start_at_their_lowest_layer_and_score_as_one_by_one(
        name, positions, monkeypatch):
    """Rows of one query that change only upper layers start there from the clean pass's hidden
    states (issue 26); each scores as it does alone, with its intervention at every position or
    only at the prediction positions."""
    from mkn.attribution import scoring
    from mkn.attribution.queries import encode
    from mkn.attribution.scoring import score_rows

    lm = tm.tiny(name)
    top = lm.n_layers - 1
    sets = [None, ([(top, 1), (top, 2)], "suppress"), ([(top, 3)], "enhance"),
            ([(0, 5), (top, 4)], "suppress"), ([(top, 6)], "suppress"), None]
    passes = []
    clean_pass = scoring.block_inputs
    monkeypatch.setattr(scoring, "block_inputs", lambda *a, **k: passes.append(1)
                        or clean_pass(*a, **k))
    for kind in ("single", "multi"):
        encoded = encode(lm, *query(lm, kind))
        # a second input of the same length (one prompt token changed): rows of both inputs
        # share the chunks, each starting from its own input's clean states
        other = dataclasses.replace(encoded, steps=tuple(dataclasses.replace(
            step, input_ids=(step.input_ids[0], 7, *step.input_ids[2:]))
            for step in encoded.steps))
        interventions = [None if s is None else {
            layer: ([i for l_, i in s[0] if l_ == layer], 0.0 if s[1] == "suppress" else 3.0)
            for layer in {l_ for l_, _ in s[0]}} for s in sets]
        rows = [encoded] * len(sets) + [other] * len(sets)
        got = score_rows(lm, rows, interventions * 2, batch_size=4, positions=positions)
        for query_, intervention, row in zip(rows, interventions * 2, got, strict=True):
            alone = score_rows(lm, [query_], [intervention], positions=positions)[0]
            assert row.token_probs == pytest.approx(alone.token_probs, rel=1e-4, abs=1e-7)
            assert (row.correct, row.first_predicted_id) == (alone.correct,
                                                             alone.first_predicted_id)
    assert len(passes) == 2  # one clean pass per length (both inputs), for its three chunks


@pytest.mark.parametrize("name", [*tm.CAUSAL_FAMILIES, *sorted(tm.MASKED_FAMILIES)])
def test_row_edits_score_as_the_weight_edits_they_stand_for(name):
    """A row edit (:func:`mkn.interventions.weights.replace_object_rows`) scores as the weight
    edit written into the model (:func:`~mkn.interventions.weights.replace_object`), beside
    unedited rows, rows of other edits and a suppressed row, staggered or not (float32)."""
    from mkn.attribution import scoring
    from mkn.attribution.queries import encode
    from mkn.attribution.scoring import score_rows
    from mkn.interventions.weights import edited, replace_object, replace_object_rows

    lm = tm.tiny(name)
    top = lm.n_layers - 1
    prompt = "The capital of France is" + (" [Y] ." if not lm.causal else "")
    edits = [[(top, 1), (top, 2)], [(0, 3), (top, 4)], [(top, 5)]]
    encoded = [encode(lm, prompt, target) for target in ("Paris", "Rome")]
    rows = replace_object_rows(lm, edits, prompt, "Paris", "Rome")
    # (query, edit number or None, suppression): an edit beside a suppression too
    layout = [(q, e, None) for e in [0, 1, 2, None] for q in encoded] + \
        [(encoded[0], 0, {0: ([7], 0.0)})]
    for gain in (scoring.STAGGER_GAIN, math.inf):
        scoring_gain, scoring.STAGGER_GAIN = scoring.STAGGER_GAIN, gain
        try:
            got = score_rows(lm, [q for q, _, _ in layout], [s for _, _, s in layout],
                             batch_size=3,
                             edits=[None if e is None else rows[e] for _, e, _ in layout])
        finally:
            scoring.STAGGER_GAIN = scoring_gain
        for (query_, number, suppressed), scored in zip(layout, got, strict=True):
            with contextlib.ExitStack() as stack:
                if number is not None:
                    stack.enter_context(edited(replace_object(lm, edits[number], prompt,
                                                              "Paris", "Rome")))
                expected = score_rows(lm, [query_], [suppressed])[0]
            assert scored.token_probs == pytest.approx(expected.token_probs, rel=1e-4,
                                                       abs=1e-7)
    with pytest.raises(ValueError, match="2 queries but 1 edits"):
        score_rows(lm, encoded, [None, None], edits=[None])


@pytest.mark.parametrize("family", sorted(tm.MASKED_FAMILIES))
def test_masked_fast_path_equals_the_plain_rows(family, monkeypatch):
    """Masked LMs: a (layer l) row that starts at layer l+1 from the clean output with only the
    mask position recomputed gives the scores of the row that runs layer l in full."""
    from mkn.attribution.engine import StepRunner

    lm = tm.tiny(family)
    prompt, target = "The capital of France is [Y] .", "Paris"
    used = []
    real = StepRunner._masked_patched_logits
    monkeypatch.setattr(StepRunner, "_masked_patched_logits",
                        lambda self, *a: used.append(1) or real(self, *a))
    fast = mkn.attribute(lm, prompt, target, method="amig", steps=6)
    assert used and lm.adapter.ffn_output, "every masked family takes the fast path"
    monkeypatch.setattr(StepRunner, "takes_patches", property(lambda self: False))
    plain = mkn.attribute(lm, prompt, target, method="amig", steps=6)
    assert torch.allclose(fast.scores, plain.scores, atol=1e-6, rtol=1e-4)
    assert torch.allclose(fast.baseline_prob, plain.baseline_prob, atol=1e-6)


def test_no_transformers_deprecation_warning_on_any_family(caplog):
    """Issue 21: no "`past_key_values` is deprecated" warning (removed in transformers 5.40):
    mkn passes the KV cache under the name the installed version uses (mkn.models.kv_cache)."""
    import logging
    import warnings

    from mkn.attribution.api import predict_many

    caplog.set_level(logging.WARNING, logger="transformers")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for family in tm.FAMILIES:
            lm = tm.tiny(family)
            mkn.attribute(lm, "The capital of France is [Y] .", "Paris", steps=2)
            predict_many(lm, [("The capital of France is [Y] .", "New York"),
                              ("The capital of Italy is [Y] .", "Rome")])
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "past_key_values" in m or "cache_params" in m], messages

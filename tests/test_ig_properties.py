"""Properties of the IG attributions on tiny models, and the errors users get.

- completeness: a layer's scores sum to F(x) - F(baseline) as the quadrature gets finer;
- known answers: a neuron that alone feeds the residual stream gets exactly F(x) - F(b), neurons
  with no path to the output get exactly 0, twin neurons get equal scores;
- errors: unknown method/rule, an empty target, a masked-LM prompt without [Y], a prompt longer
  than the context, an unsupported architecture.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import mkn
from mkn.attribution.queries import encode
from mkn.models.hooks import capture
from tests import tiny_models as tm
from tests.reference_ig import step_prob


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with tm.torch_threads(1):
        yield


CAUSAL_PROMPT = "The capital of France is"
MASKED_PROMPT = "The capital of France is [Y] ."


def prompt_for(lm) -> str:
    return CAUSAL_PROMPT if lm.causal else MASKED_PROMPT


# -- completeness ----------------------------------------------------------------------------

# rule -> largest relative completeness gap allowed at 64 steps (observed: left ~3e-2 (error
# O(1/m)), trapezoid ~2e-4 (O(1/m^2)), Gauss-Legendre at float32 round-off ~5e-6)
AT_64 = {"left": 0.08, "trapezoid": 2e-3, "gauss-legendre": 1e-4}


@pytest.mark.parametrize("rule", list(AT_64))
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_completeness_improves_with_steps(family, rule):
    lm = tm.tiny(family)
    prompt = prompt_for(lm)
    (step,) = encode(lm, prompt, "Paris").steps
    p_clean = step_prob(lm, step)
    deltas = [p_clean - step_prob(lm, step, layer, torch.zeros(lm.n_neurons))
              for layer in range(lm.n_layers)]
    gaps = []
    for steps in (4, 16, 64):
        result = mkn.attribute(lm, prompt=prompt, target="Paris", method="ig", steps=steps,
                               rule=rule)
        assert result.prob == pytest.approx(p_clean, rel=1e-5)
        gap = [abs(float(result.scores[layer].sum()) - delta) / abs(delta)
               for layer, delta in enumerate(deltas)]
        # the engine's own report of the gap agrees with the plain one
        reported = result.completeness_gap.abs() / torch.tensor(deltas).abs()
        torch.testing.assert_close(reported, torch.tensor(gap), atol=1e-4, rtol=1e-3)
        assert result.relative_completeness_gap == pytest.approx(max(gap), rel=1e-3, abs=1e-4)
        weighted = sum(g * abs(d) for g, d in zip(gap, deltas, strict=True)) / sum(map(abs, deltas))
        assert result.weighted_completeness_gap == pytest.approx(weighted, rel=1e-3, abs=1e-4)
        assert result.weighted_completeness_gap <= result.relative_completeness_gap + 1e-6
        gaps.append(max(gap))
    noise = 2e-5  # float32 round-off, relative to |F(x) - F(b)|
    assert gaps[1] < gaps[0]
    assert gaps[2] < gaps[1] or gaps[2] < noise
    assert gaps[2] < AT_64[rule]


def test_amig_completeness():
    lm = tm.tiny("llama")
    result = mkn.attribute(lm, prompt=CAUSAL_PROMPT, target="New York", method="amig", steps=32,
                           rule="gauss-legendre")
    assert result.relative_completeness_gap < 1e-3


# -- known answers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_neuron_model():
    """A tiny Llama whose last layer writes to the residual stream through neuron ``j`` only.

    Neuron ``j`` (the most active one) writes along the target's unembedding direction, with the
    sign of its activation, so it raises p(target); every other output weight is zero.
    """
    lm = tm.build("llama", cached=False)
    (step,) = encode(lm, CAUSAL_PROMPT, "Paris").steps
    last = lm.n_layers - 1
    with torch.no_grad(), capture(lm, position=step.position, layers=[last]) as store:
        lm.model(input_ids=torch.tensor([step.input_ids]))
    a = store[last][0]
    j = int(a.abs().argmax())
    direction = lm.model.lm_head.weight[step.target_id]
    with torch.no_grad():
        weight = lm.down_proj(last).weight
        weight.zero_()
        weight[:, j] = 3.0 * torch.sign(a[j]) * direction / direction.norm()
    return lm, step, last, j


def test_single_feeding_neuron_gets_all_the_credit(one_neuron_model):
    lm, step, last, j = one_neuron_model
    result = mkn.attribute(lm, prompt=CAUSAL_PROMPT, target="Paris", method="ig", steps=24,
                           rule="gauss-legendre")
    scores = result.scores[last]
    # no path to the output: exactly zero
    others = torch.ones(lm.n_neurons, dtype=torch.bool)
    others[j] = False
    assert torch.all(scores[others] == 0)
    # the analytic answer: IG of a function of one variable is F(x) - F(b)
    expected = step_prob(lm, step) - step_prob(lm, step, last, torch.zeros(lm.n_neurons))
    assert expected > 0.01
    assert float(scores[j]) == pytest.approx(expected, rel=1e-4)
    assert result.top(1)[0][:2] == (last, j)


def test_left_rule_with_one_step_is_gradient_times_input(one_neuron_model):
    """steps=1, left rule: the score is (a - b) * dF/da at the baseline, by finite differences."""
    lm, step, last, j = one_neuron_model
    result = mkn.attribute(lm, prompt=CAUSAL_PROMPT, target="Paris", method="ig", steps=1)
    with torch.no_grad(), capture(lm, position=step.position, layers=[last]) as store:
        lm.model(input_ids=torch.tensor([step.input_ids]))
    a_j = float(store[last][0, j])
    h = 1e-2
    plus, minus = torch.zeros(lm.n_neurons), torch.zeros(lm.n_neurons)
    plus[j], minus[j] = h, -h
    slope = (step_prob(lm, step, last, plus) - step_prob(lm, step, last, minus)) / (2 * h)
    assert float(result.scores[last, j]) == pytest.approx(a_j * slope, rel=1e-2)


def test_twin_neurons_symmetry():
    """Twins in a layer that does feed the output: same activation, same weights, same score."""
    lm = tm.build("gpt2", cached=False)
    mlp = lm.blocks[0].mlp
    with torch.no_grad():  # Conv1D weights are [in, out]
        mlp.c_fc.weight[:, 7] = mlp.c_fc.weight[:, 3]
        mlp.c_fc.bias[7] = mlp.c_fc.bias[3]
        mlp.c_proj.weight[7] = mlp.c_proj.weight[3]
    result = mkn.attribute(lm, prompt=CAUSAL_PROMPT, target="Paris", method="ig", steps=8)
    assert float(result.scores[0, 3]) != 0
    assert float(result.scores[0, 7]) == pytest.approx(float(result.scores[0, 3]), rel=1e-5)


def test_zero_output_weights_give_zero_scores():
    lm = tm.build("bert", cached=False)
    with torch.no_grad():
        lm.down_proj(1).weight[:, :10] = 0
    result = mkn.attribute(lm, prompt=MASKED_PROMPT, target="Paris", method="amig", steps=4)
    assert torch.all(result.scores[1, :10] == 0)
    assert torch.all(result.scores[1, 10:] != 0)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_unknown_method_and_rule(family):
    lm = tm.tiny(family)
    with pytest.raises(ValueError, match="unknown method 'kn'.*ig, amig"):
        mkn.attribute(lm, prompt=prompt_for(lm), target="Paris", method="kn")
    with pytest.raises(ValueError, match="unknown rule"):
        mkn.attribute(lm, prompt=prompt_for(lm), target="Paris", rule="simpson")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        mkn.attribute(lm, prompt=prompt_for(lm), target="Paris", steps=0)
    with pytest.raises(ValueError, match="out of range"):
        mkn.attribute(lm, prompt=prompt_for(lm), target="Paris", layers=[lm.n_layers])


@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("target", ["\u200b", "\x00"])
def test_target_that_tokenizes_to_nothing(family, target):
    lm = tm.tiny(family)
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        mkn.attribute(lm, prompt=prompt_for(lm), target=target)


@pytest.mark.parametrize("target", ["", "  "])
def test_empty_target(target):
    with pytest.raises(ValueError, match="is empty"):
        mkn.attribute(tm.tiny("llama"), prompt=CAUSAL_PROMPT, target=target)


@pytest.mark.parametrize("family", tm.MASKED_FAMILIES)
def test_masked_prompt_needs_object_slot(family):
    with pytest.raises(ValueError, match=r"needs \[Y\]"):
        mkn.attribute(tm.tiny(family), prompt=CAUSAL_PROMPT, target="Paris")


def test_prompt_with_subject_slot_or_two_objects():
    lm = tm.tiny("gpt2")
    with pytest.raises(ValueError, match=r"\[X\]"):
        mkn.attribute(lm, prompt="The capital of [X] is", target="Paris")
    with pytest.raises(ValueError, match="more than once"):
        mkn.attribute(lm, prompt="[Y] is [Y]", target="Paris")


def _words(n: int) -> str:
    return " ".join(["one"] * n)


@pytest.mark.parametrize("family", ["gpt2", "bert", "roberta", "xglm"])
def test_context_length(family):
    """A query of exactly the context length runs; one token more is a clear error."""
    key = "n_positions" if family == "gpt2" else "max_position_embeddings"
    context = 8
    value = context
    if family == "roberta":  # positions start after the padding index
        value += tm.masked_tokenizer().pad_token_id + 1
    lm = tm.build(family, **{key: value})
    assert lm.max_length == context
    # causal: <s> + words, predicting the last target token; masked: [CLS] words [MASK] [SEP]
    fits = _words(context - 1) if lm.causal else _words(context - 3) + " [Y]"
    too_long = _words(context) if lm.causal else _words(context - 2) + " [Y]"
    result = mkn.attribute(lm, prompt=fits, target="Paris", steps=2)
    assert torch.isfinite(result.scores).all()
    with pytest.raises(ValueError, match="longer than the context"):
        mkn.attribute(lm, prompt=too_long, target="Paris", steps=2)


def test_unsupported_architecture_lists_families():
    config = transformers.OPTConfig(vocab_size=tm.VOCAB_SIZE, hidden_size=16, ffn_dim=32,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    word_embed_proj_dim=16, max_position_embeddings=16)
    model = tm.build_model(transformers.OPTForCausalLM, config)
    with pytest.raises(ValueError, match="unsupported architecture 'opt'") as error:
        mkn.wrap(model, tm.causal_tokenizer())
    for family in ("BERT", "XLM-R", "GPT-2", "GPT-Neo", "GPT-NeoX", "BLOOM", "Llama", "Mistral",
                   "Qwen2", "Qwen3", "Gemma", "XGLM", "gemma3_text"):
        assert family in str(error.value)


def test_bloom_slow_but_exact_is_refused():
    config = tm.config("bloom")
    config.pretraining_tp, config.slow_but_exact = 2, True
    model = tm.build_model(transformers.BloomForCausalLM, config)
    with pytest.raises(ValueError, match="slow_but_exact"):
        mkn.wrap(model, tm.causal_tokenizer())

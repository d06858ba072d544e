"""Checks on the real default model, Gemma 3 270M (a few, kept fast)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import mkn
from mkn.cli import app
from mkn.interventions.activation import suppress

pytestmark = pytest.mark.real

PROMPT, TARGET = "The capital of France is", "Paris"


@pytest.fixture(scope="module")
def gemma():
    # float32 on every CPU: these tests check exact properties (p(target) against a plain
    # forward pass, IG's completeness), which bfloat16's 8-bit mantissa does not keep
    return mkn.load_model("gemma-3-270m", dtype="float32")


@pytest.fixture(scope="module")
def paris(gemma):
    return mkn.attribute(gemma, PROMPT, TARGET, method="amig", steps=20)


def test_loads_the_real_model(gemma):
    assert gemma.causal and gemma.n_layers == 18 and gemma.n_neurons == 2048
    assert gemma.model.config.vocab_size == 262144


def test_model_knows_the_fact_and_target_tokens(gemma, paris):
    assert paris.target_tokens == ["▁Paris"]
    logits = gemma.model(**gemma.tokenizer(PROMPT, return_tensors="pt")).logits[0, -1]
    assert paris.prob == pytest.approx(float(logits.softmax(-1)[paris.target_ids[0]]), rel=1e-4)
    top5 = logits.topk(5).indices.tolist()
    assert paris.target_ids[0] in top5


def test_spaceless_target_after_chinese_prompt(gemma):
    from mkn.attribution.queries import encode

    query = encode(gemma, "法国的首都是[Y]。", "巴黎")
    assert "".join(query.target_tokens).replace("▁", "") == "巴黎"
    assert not query.target_tokens[0].startswith("▁")


def test_suppressing_top_neurons_hurts_more_than_random(gemma, paris):
    k = 10
    top = [(layer, index) for layer, index, _ in paris.top(k)]
    with suppress(gemma, top):
        p_top = mkn.probability(gemma, PROMPT, TARGET)
    generator = torch.Generator().manual_seed(0)
    random_drops = []
    for _ in range(5):
        flat = torch.randperm(gemma.n_layers * gemma.n_neurons, generator=generator)[:k]
        neurons = [(int(i) // gemma.n_neurons, int(i) % gemma.n_neurons) for i in flat]
        with suppress(gemma, neurons):
            random_drops.append(paris.prob - mkn.probability(gemma, PROMPT, TARGET))
    top_drop = paris.prob - p_top
    assert top_drop > 0.2 * paris.prob, (paris.prob, p_top)
    assert top_drop > max(random_drops), (top_drop, random_drops)
    # suppression is undone
    assert mkn.probability(gemma, PROMPT, TARGET) == pytest.approx(paris.prob, rel=1e-6)


def test_amig_completeness_gap_is_small(paris):
    assert paris.relative_completeness_gap < 0.5


def test_cli_attribute_json():
    result = CliRunner().invoke(app, ["attribute", "--prompt", PROMPT, "--target", TARGET,
                                      "--steps", "4", "--top", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert payload["model"] == "gemma-3-270m" and payload["target_tokens"] == ["▁Paris"]
    assert len(payload["top_neurons"]) == 3 and 0 < payload["prob"] < 1
    assert len(payload["completeness_gap"]) == 18


def test_cli_reports_bad_input_clearly():
    runner = CliRunner()
    result = runner.invoke(app, ["attribute", "--prompt", "x", "--target", "y", "--model",
                                 "no-such-model"])
    assert result.exit_code == 2 and "unknown model 'no-such-model'" in result.output
    result = runner.invoke(app, ["attribute", "--prompt", PROMPT, "--target", " "])
    assert result.exit_code == 2 and "target ' ' is empty" in result.output


def test_bare_space_token_joins_the_prompt(gemma):
    """Gemma tokenizes " 켄트주" as "▁", "켄", ...: the space is context, not the object."""
    from mkn.attribution.queries import encode

    query = encode(gemma, "와트 타일러는 [Y]에서 유래했습니다.", "켄트주")
    assert query.target_tokens[0].strip("▁")
    assert gemma.tokenizer.decode(list(query.steps[0].input_ids)).endswith("와트 타일러는 ")
    whole = gemma.tokenizer("와트 타일러는 켄트주")["input_ids"]
    assert list(query.steps[-1].input_ids) + [query.target_ids[-1]] == whole

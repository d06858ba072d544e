"""Every experiment runs end to end on a tiny model, leaves the model as it was, and rejects
bad input clearly."""

from __future__ import annotations

import math

import pytest
import torch

from mkn.data.schema import Fact
from mkn.experiments import EXPERIMENTS
from mkn.experiments.common import queries
from mkn.experiments.fact_checking import kept_neurons, split_by_relation
from mkn.localization.locate import LocateConfig, locate_fact
from tests.test_localization import planted_gpt2
from tests.tiny_models import build, torch_threads

CAPITALS = [("France", "Paris", "法国", "巴黎"), ("Germany", "Berlin", "德国", "柏林"),
            ("Japan", "Tokyo", "日本", "东京"), ("Italy", "Rome", "意大利", "罗马"),
            ("England", "London", "英国", "伦敦")]


def tiny_facts() -> list[Fact]:
    return [Fact(id=f"capital-{en_s.lower()}", relation="P36", languages={
        "en": {"subject": en_s, "object": en_o,
               "queries": ["The capital of [X] is [Y] .", "The capital city of [X] is [Y] ."]},
        "zh": {"subject": zh_s, "object": zh_o, "queries": ["[X]的首都是[Y]。"]},
    }) for en_s, en_o, zh_s, zh_o in CAPITALS]


@pytest.fixture(scope="module")
def lm():
    with torch_threads(1):
        yield build("llama", cached=False)


CONFIG = LocateConfig(method="amig", steps=2, thresholds={"*": 0.1, "en": 0.1, "zh": 0.1},
                      degenerate_top_k=4, t_low=0.5, t_high=0.0)


def _finite(value) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, float):
        return not math.isnan(value)
    return True


@pytest.fixture(scope="module")
def planted():
    with torch_threads(1):
        yield planted_gpt2()


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_runs_and_leaves_the_model_unchanged(lm, planted, name):
    if name == "enhancement":  # needs a fact known in one language only: "Paris" is planted
        lm = planted
    module = EXPERIMENTS[name]
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    done = []
    with torch_threads(1):
        result = module.run(lm, tiny_facts(), ["en", "zh"], CONFIG, seed=0,
                            progress=done.append)
    assert done, "progress was reported"
    assert _finite(result["summary"])
    assert module.table(result).startswith("|")
    if name == "enhancement":
        assert result["summary"]["weak_fact_languages"] >= 1
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    assert all(not m._forward_pre_hooks for m in lm.model.modules())


def test_locate_marks_wrong_facts_and_keeps_them(lm):
    with torch_threads(1):
        result = locate_fact(lm, tiny_facts()[0], ["en", "zh"], CONFIG)
    for lang, r in result.languages.items():
        assert len(r.correct) == len(r.probs) == len(tiny_facts()[0].prompts(lang))
        assert r.known == (sum(r.correct) * 2 > len(r.correct))


def test_missing_language_and_bad_method_are_clear_errors(lm):
    fact = tiny_facts()[0]
    with pytest.raises(ValueError, match="has no fr"):
        locate_fact(lm, fact, ["en", "fr"], CONFIG)
    with pytest.raises(ValueError, match="has no language 'fr'"):
        queries(fact, "fr")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        LocateConfig(method="nope")
    with pytest.raises(ValueError, match="at least 2 facts"):
        EXPERIMENTS["localization-quality"].run(lm, tiny_facts()[:1], ["en"], CONFIG)
    with pytest.raises(ValueError, match="at least 2 languages"):
        EXPERIMENTS["cross-lingual-editing"].run(lm, tiny_facts(), ["en"], CONFIG)


def test_fact_checking_split_and_neuron_filter():
    facts = tiny_facts()
    train, test, skipped = split_by_relation(facts + [Fact(id="lonely", relation="P1", languages={
        "en": {"subject": "A", "object": "B", "queries": ["[X] is [Y] ."]}})], seed=3)
    assert skipped == ["P1"] and len(train) == 2 and len(test) == 3
    assert not {f.id for f in train} & {f.id for f in test}
    pairs = [[[(1, 2), (1, 3)], [(1, 2), (0, 5)]], [[(1, 2), (1, 3)]], []]
    assert kept_neurons(pairs, 0.7) == [(1, 2)]
    assert kept_neurons(pairs, 0.6) == [(1, 2), (1, 3)]
    assert kept_neurons([[]], 0.7) == []


def test_fact_checking_needs_two_facts_of_a_relation(lm):
    from mkn.experiments import fact_checking

    facts = tiny_facts()[:2]
    facts[1] = facts[1].model_copy(update={"relation": "P1376"})
    with pytest.raises(ValueError, match=r"2 facts in 2 relations.*--per-relation"):
        fact_checking.run(lm, facts, ["en", "zh"], CONFIG)


def test_experiment_options_are_typed_and_checked():
    from mkn.experiments import fact_checking, injection, localization_quality
    from mkn.experiments.common import experiment_options

    assert experiment_options(injection.run, ["lambda_new=8", "source=zh"]) == \
        {"lambda_new": 8.0, "source": "zh"}
    assert experiment_options(fact_checking.run, ["wrong=3", "lam=0.5"]) == \
        {"wrong": 3, "lam": 0.5}
    assert experiment_options(localization_quality.run, ["methods=ig,amig"]) == \
        {"methods": ("ig", "amig")}
    with pytest.raises(ValueError, match="unknown option 'lambda'.*lambda_old, lambda_new"):
        experiment_options(injection.run, ["lambda=8"])
    with pytest.raises(ValueError, match="wrong='many'"):
        experiment_options(fact_checking.run, ["wrong=many"])
    with pytest.raises(ValueError, match="not NAME=VALUE"):
        experiment_options(fact_checking.run, ["wrong"])
    with pytest.raises(ValueError, match="unknown option 'seed'"):
        experiment_options(fact_checking.run, ["seed=3"])  # seed is --seed, not an option

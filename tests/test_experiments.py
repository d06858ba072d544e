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
from mkn.report.experiment_views import EXPERIMENT_VIEWS
from tests.test_localization import planted_gpt2
from tests.tiny_models import capital_facts, knowing, torch_threads, two_relation_facts


def tiny_facts() -> list[Fact]:
    return capital_facts()


@pytest.fixture(scope="module")
def lm():
    """Knows the capitals in en and zh, the official languages in en only, nothing of England."""
    with torch_threads(1):
        yield knowing("llama")


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
def test_experiment_runs_and_leaves_the_model_unchanged(lm, name):
    module = EXPERIMENTS[name]
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    done = []
    with torch_threads(1):
        result = module.run(lm, two_relation_facts(), ["en", "zh"], CONFIG, seed=0,
                            progress=done.append)
    assert done, "progress was reported"
    assert _finite(result["summary"])
    assert "\n|---|" in module.table(result)
    assert isinstance(module.headline(result, ["en", "zh"], 0), dict)  # the study's summary
    assert EXPERIMENT_VIEWS[name][1](result)  # the HTML report's view of it
    counts = result["knowledge"]["per_language"]
    assert counts == {"en": {"items": 10, "known": 8, "skipped": 2},
                      "zh": {"items": 10, "known": 4, "skipped": 6}}
    if name == "enhancement":  # the official languages are known in en, not in zh
        assert result["summary"]["weak_fact_languages"] >= 1
        assert {i["weak"] for i in result["items"]} == {"zh"}
        measured = [i for i in result["items"] if "before" in i]
        assert measured and all(isinstance(i["known_after"], bool) for i in measured)
        head = module.headline(result, ["en", "zh"], 0)
        assert head["known_gain_weak_language"]["n"] == len(measured)
        assert "known after (the run's criterion)" in module.table(result)
    if name == "localization-quality":  # only known items are measured, with their controls
        assert {(i["fact_id"], i["language"]) for i in result["items"]} == {
            (f.id, lang) for f in two_relation_facts() if "england" not in f.id
            for lang in (("en", "zh") if f.relation == "P36" else ("en",))}
        measured = [i["amig"] for i in result["items"] if i["amig"]["sr"] is not None]
        assert measured and all(len(m["suppress"]["random"]) == 3 for m in measured)
        assert all(m["suppress"]["selectivity"] is not None for m in measured)
    if name == "query-consistency":  # two English queries per fact, one Chinese
        assert {i["language"] for i in result["items"]} == {"en"}
        assert len(result["items"]) == 8 and all(i["queries"] == 2 for i in result["items"])
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    assert all(not m._forward_pre_hooks for m in lm.model.modules())


def test_enhancement_cost_is_measured_on_a_bounded_seeded_sample_of_other_facts():
    """Every other fact's first query while they are at most ``cost``; else a sample of
    ``cost`` of them, the same for the same item and seed, in the sample's order."""
    from mkn.experiments.enhancement import cost_queries

    facts = two_relation_facts()
    fact, others = facts[0], [g for g in facts[1:] if queries(g, "en")]
    assert cost_queries(fact, facts, "en", 100, 0) == [queries(g, "en")[0] for g in others]
    drawn = cost_queries(fact, facts, "en", 3, 0)
    assert len(drawn) == 3 and drawn == cost_queries(fact, facts, "en", 3, 0)
    order = [queries(g, "en")[0] for g in others]
    assert [order.index(q) for q in drawn] == sorted(order.index(q) for q in drawn)
    assert queries(fact, "en")[0] not in drawn
    assert any(cost_queries(fact, facts, "en", 3, seed) != drawn for seed in range(1, 6))


def test_query_consistency_threshold_groups_and_difference_by_hand():
    """Consistent: paraphrase overlap above the 95th percentile of two different facts'
    overlap in the relation and language; the difference of median selectivity and Spearman
    over facts; no comparison with fewer than 3 facts in a group."""
    from mkn.experiments.query_consistency import consistency, quantile, summarize

    assert consistency([[(0, 1), (0, 2)], [(0, 1)], [(0, 1), (0, 2)]]) == pytest.approx(
        (0.5 + 1.0 + 0.5) / 3)
    assert consistency([[(0, 1)]]) is None
    assert quantile([0.1, 0.2, 0.3, 0.4], 0.95) == 0.4 and quantile([0.1, 0.2], 0.5) == 0.1

    def item(fact: str, value: float, selectivity: float) -> dict:
        return {"fact_id": fact, "relation": "P1", "language": "en", "consistency": value,
                "between_facts": [0.1, 0.2], "suppression": {"selectivity": selectivity}}

    items = [item(f"c{i}", 0.5 + i / 10, 0.8 + i / 100) for i in range(4)] + \
            [item(f"i{i}", 0.1 + i / 100, 0.2 + i / 100) for i in range(4)]
    s = summarize(items)
    assert s["thresholds"] == {"P1/en": 0.2} and s["consistent_share"]["value"] == 0.5
    assert s["group_facts"] == {"consistent": 4, "inconsistent": 4}
    assert s["selectivity_difference"]["value"] == pytest.approx(0.6)
    assert s["selectivity_difference"]["ci95"][0] > 0 and s["spearman"]["value"] == 1.0
    few = summarize(items[:2] + items[4:])
    assert few["selectivity_difference"]["value"] is None  # 2 consistent facts: not compared


def test_locate_skips_and_lists_what_the_model_does_not_know(lm):
    facts = two_relation_facts()
    with torch_threads(1):
        capital = locate_fact(lm, facts[0], ["en", "zh"], CONFIG)
        spoken = locate_fact(lm, facts[1], ["en", "zh"], CONFIG)  # known in en only
        england = locate_fact(lm, facts[-1], ["en", "zh"], CONFIG)
        everything = locate_fact(lm, facts[-1], ["en", "zh"],
                                 CONFIG.model_copy(update={"known": "any"}))
    assert list(capital.languages) == ["en", "zh"] and not capital.skipped
    assert list(spoken.languages) == ["en"] and list(spoken.skipped) == ["zh"]
    assert spoken.language_agnostic == [] == spoken.soft_language_agnostic  # one language
    assert not england.languages and list(england.skipped) == ["en", "zh"]
    assert list(everything.languages) == ["en", "zh"]  # any: located, and marked unknown
    assert not any(r.known for r in everything.languages.values())
    for lang, r in capital.languages.items():
        assert len(r.correct) == len(r.probs) == len(facts[0].prompts(lang))
        assert r.known and r.knowledge.known()


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


def test_pairwise_wins_count_ties_apart_and_no_neurons_as_a_loss():
    """Issue 20: pairwise only (no tie-split three-way share), and an item where a method finds
    no neurons is a loss for it, not dropped."""
    from mkn.experiments.localization_quality import headline, pair_outcome, pairwise

    items = [{"fact_id": "a", "amig": {"sr": 3.0}, "ig": {"sr": 1.0}},
             {"fact_id": "b", "amig": {"sr": 2.0}, "ig": {"sr": 2.0}},
             {"fact_id": "c", "amig": {"sr": None}, "ig": {"sr": 5.0}},
             {"fact_id": "d", "amig": {"sr": None}, "ig": {"sr": None}}]
    assert [pair_outcome(i, "amig", "ig") for i in items] == [1.0, 0.5, 0.0, None]
    assert pairwise(items, "amig", "ig") == {"wins": 1, "ties": 1, "losses": 1, "items": 3}
    paired = headline({"items": items, "methods": ["ig", "amig"]}, ["en"])["paired"]
    assert paired["amig > ig"]["n"] == 3 and paired["amig > ig"]["value"] == 0.5


def test_injection_success_is_the_knowledge_criterion_and_transfer_needs_a_taken_edit():
    """Issue 20: success is p(new) > p(old) (rank, as knowing is), greedy is a second column,
    and transfer is counted only over edits that took on their own query."""
    from mkn.experiments import injection

    def row(efficacy: bool, top1: bool = False) -> dict:
        return {"prompt": "q", "efficacy": efficacy, "new_top1": top1, "p_new": 0.1}

    took = {"fact_id": "a", "reliability": [row(True)], "generalization": [row(True)],
            "portability": {"zh": [row(True), row(False)]}, "locality": [True],
            "random": [{"reliability": [row(False)], "generalization": [],
                        "portability": {"zh": [row(False), row(False)]}}]}
    failed = {"fact_id": "b", "reliability": [row(False)], "generalization": [row(False)],
              "portability": {"zh": [row(True), row(True)]}, "locality": [True],
              "random": [{"reliability": [row(False)], "generalization": [],
                          "portability": {"zh": [row(False), row(False)]}}]}
    head = injection.headline({"items": [took, failed]}, ["en", "zh"])
    assert head["edits"] == {"all": 2, "took": 1, "did_not_take": 1}
    assert head["reliability"]["value"] == 0.5 and head["reliability_greedy"]["value"] == 0.0
    assert head["portability"]["value"] == 0.5 and head["portability"]["n"] == 1  # b left out
    assert head["portability_over_random"]["value"] == 0.5
    summary = injection.summarize([took, failed], ["zh"])
    assert summary["edits_taken"] == 1 and summary["portability"]["zh"]["efficacy"] == 0.5


def test_enhancement_with_known_any_does_not_advise_known_any():
    """Issue 21: with --known any and nothing known, the error said "pass --known any"."""
    from types import SimpleNamespace

    from mkn.experiments import enhancement
    from mkn.localization.knowledge import KnownItems

    nothing = KnownItems("auto", ["en"], {("f", "en"): SimpleNamespace(known=lambda c: False)})
    config = CONFIG.model_copy(update={"known": "any"})
    with pytest.raises(ValueError) as error:
        enhancement.run(None, [], ["en"], config, known=nothing)
    message = str(error.value)
    assert "whatever --known says" in message and "pass --known any" not in message


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_takes_what_the_study_passes_per_method(lm, name):
    """The study passes what each method's sets leave out as a mapping, method -> list
    (``mkn.jobs.pipeline.left_out``); every experiment reads its method's entry (a bare mapping
    once reached ``LeftOut.of`` in localization-vs-editing and failed mid-study)."""
    from mkn.localization.relations import LeftOut

    per_method = {m: LeftOut(None, None) for m in ("ig", "amig", "matrice")}
    with torch_threads(1):
        result = EXPERIMENTS[name].run(lm, two_relation_facts(), ["en", "zh"], CONFIG, seed=0,
                                       generic=per_method)
    assert "summary" in result

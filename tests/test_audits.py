"""Audits of the knowledge-neuron thesis: overlaps on hand-made sets, reversing a symmetric
fact, and the symmetry audit on a tiny model taught a symmetric relation."""

from __future__ import annotations

import pytest
import torch

from mkn.data.schema import Fact
from mkn.experiments import audits
from mkn.localization.locate import FactResult, LanguageResult, LocateConfig
from tests.tiny_models import _train, build, capital_facts, torch_threads


def _language(lang: str, neurons, per_query=()) -> LanguageResult:
    return LanguageResult(language=lang, target="x", prompts=[], probs=[], correct=[],
                          neurons=list(neurons), scores=torch.zeros(1, 1), confidence=1.0,
                          query_neurons=[list(q) for q in per_query])


def test_overlaps_of_paraphrases_languages_and_facts_by_hand():
    a = FactResult("a", "P36", {"en": _language("en", [(0, 1), (0, 2)],
                                                [[(0, 1), (0, 2)], [(0, 1)]]),
                                "zh": _language("zh", [(0, 1), (0, 3)])}, [], [])
    b = FactResult("b", "P36", {"en": _language("en", [(0, 2)])}, [], [])
    c = FactResult("c", "P37", {"en": _language("en", [(1, 1)])}, [], [])
    pairs = audits.overlaps({"a": a, "b": b, "c": c})
    assert pairs["paraphrases"] == [("a", 0.5)]
    assert pairs["languages"] == [("a", pytest.approx(1 / 3))]
    assert pairs["same_relation"] == [("a", 0.5)]
    assert sorted(v for _, v in pairs["other_relations"]) == [0.0, 0.0]


def test_reversing_a_symmetric_fact():
    fact = Fact(id="border-1", relation="P47", languages={
        "en": {"subject": "France", "object": "Germany", "queries": ["[X] is with [Y] ."],
               "candidates": ["Italy", "France", "Spain"]},
        "zh": {"subject": "法国", "object": "德国", "queries": ["法国和[Y]。"]}})  # no [X]
    back = audits.reversed_fact(fact)
    assert back.id == "border-1~reversed" and list(back.languages) == ["en"]
    assert back.languages["en"].subject == "Germany" and back.languages["en"].object == "France"
    assert back.languages["en"].candidates == ["Italy", "Spain"]
    assert back.prompts("en") == ["Germany is with [Y] ."]


BORDERS = [("France", "Germany"), ("Spain", "Italy"), ("Japan", "China"), ("Egypt", "Greece")]


def border_facts() -> list[Fact]:
    return [Fact(id=f"border-{a.lower()}", relation="P47", languages={
        "en": {"subject": a, "object": b, "queries": ["[X] is with [Y] .", "The [X] is with [Y] ."],
               "candidates": [x for pair in BORDERS for x in pair if x not in (a, b)][:4]}})
        for a, b in BORDERS]


def test_symmetry_audit_on_a_tiny_model_taught_both_directions():
    """Taught (A, r, B) and (B, r, A) for three pairs, and only (Egypt, r, Greece) one way."""
    taught = border_facts() + [audits.reversed_fact(f) for f in border_facts()[:3]]
    with torch_threads(1):
        lm = _train(build("llama", cached=False), taught + [
            f.restrict(["en"]) for f in capital_facts()[:3]], steps=150)
        facts = border_facts() + [f.restrict(["en"]) for f in capital_facts()[:3]]
        config = LocateConfig(method="amig", steps=4, thresholds={"*": 0.1})
        result = audits.run(lm, facts, ["en"], config, draws=2)
    records = result["symmetry"]
    assert {r["fact_id"] for r in records} == {"border-france", "border-spain", "border-japan"}
    for record in records:
        assert 0.0 <= record["jaccard"] <= 1.0 and record["forward"] > 0
        assert record["own_effect"] < 0 and len(record["reversed"]["random"]) == 2
    summary = result["summary"]
    assert summary["symmetry"]["pairs"] == 3
    assert summary["jaccard"]["paraphrases"]["n"] > 0
    assert summary["jaccard"]["same_relation"]["n"] > 0
    assert summary["jaccard"]["other_relations"]["n"] > 0
    assert "Bijective symmetry" in audits.table(result)

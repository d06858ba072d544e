"""Issue 25: relation neurons (knowledge neurons of many facts of one relation) on hand-made
reference samples."""

from __future__ import annotations

import pytest
import torch

from mkn.localization.generic import ReferenceItem
from mkn.localization.relations import MIN_RELATION_FACTS, RelationNeurons

RELATION, FACT, OTHER = (3, 7), (2, 1), (4, 4)


def items() -> list[ReferenceItem]:
    """Four capitals served by RELATION (one of them only in zh), each by a neuron of its own;
    two official languages served by OTHER (too few facts for a list)."""
    rows = [ReferenceItem(f"capital-{i}", "P36", "en", (RELATION, (2, 10 + i)))
            for i in range(3)]
    rows.append(ReferenceItem("capital-3", "P36", "en", ((2, 13),)))
    rows.append(ReferenceItem("capital-3", "P36", "zh", (RELATION,)))  # union over languages
    rows += [ReferenceItem(f"language-{i}", "P37", "en", (OTHER,)) for i in range(2)]
    return rows


def test_a_neuron_of_most_facts_of_one_relation_is_a_relation_neuron():
    found = RelationNeurons(items())
    assert found.covers("P36") and not found.covers("P37")  # 2 < MIN_RELATION_FACTS facts
    assert MIN_RELATION_FACTS == 3
    assert found.covered() == {"P36": 4, "P37": 2}
    assert found.shares("P36")[RELATION] == 1.0 and found.shares("P36")[(2, 10)] == 0.25
    assert found.neurons("P36") == {RELATION: 1.0}  # a neuron of one fact never is
    assert found.neurons("P37") == {} and found.neurons("P99") == {}
    fact_set, relation_set = found.split("P36", [FACT, RELATION, (0, 0)])
    assert fact_set == [FACT, (0, 0)] and relation_set == [RELATION]
    assert found.split("P37", [OTHER]) == ([OTHER], [])  # not covered: nothing left out


def test_the_threshold_decides_and_the_list_round_trips(tmp_path):
    rows = items() + [ReferenceItem("capital-4", "P36", "en", ((2, 14),))]  # 4 of 5 facts
    assert RelationNeurons(rows, threshold=0.8).neurons("P36") == {RELATION: 0.8}
    assert RelationNeurons(rows, threshold=0.9).neurons("P36") == {}
    saved = RelationNeurons(rows, 0.8, {"key": "x"}).save(tmp_path / "relations.json")
    loaded = RelationNeurons.load(saved)
    assert loaded.neurons("P36") == {RELATION: 0.8} and loaded.source == {"key": "x"}
    assert loaded.digest == RelationNeurons(rows, 0.8).digest
    assert loaded.with_threshold(0.9).neurons("P36") == {}
    (tmp_path / "bad.json").write_text('{"format": 2, "items": 3}')
    with pytest.raises(ValueError, match="bad.json: not a relation-neuron list"):
        RelationNeurons.load(tmp_path / "bad.json")


# -- a planted relation neuron and a planted fact neuron on a tiny GPT-2 ----------------------

RELATION_NEURON = (1, 13)
REFERENCE_CAPITALS = [("Italy", "Rome"), ("Spain", "Madrid"), ("England", "London"),
                      ("Russia", "Moscow")]


def planted_relation_gpt2():
    """The planted-facts GPT-2 (:func:`tests.test_controls.planted_facts_gpt2`) with
    RELATION_NEURON always on and raising every capital; the fact neuron is weakened to be no
    stronger than it."""
    from tests.test_controls import FACT_NEURON, QUERIES, _unit, planted_facts_gpt2

    lm = planted_facts_gpt2()
    token = lm.tokenizer.convert_tokens_to_ids
    wte = lm.model.transformer.wte.weight
    mlp = lm.blocks[1].mlp
    capitals = [gold for relation, _, gold in QUERIES if relation == "P36"] + [
        gold for _, gold in REFERENCE_CAPITALS]
    with torch.no_grad():
        mlp.c_fc.weight[:, RELATION_NEURON[1]] = 0
        mlp.c_fc.bias[RELATION_NEURON[1]] = 5.0  # always on
        golds = sum(_unit(wte[token(gold)]) for gold in capitals)
        mlp.c_proj.weight[RELATION_NEURON[1]] = 12 * golds / golds.norm()
        mlp.c_proj.weight[FACT_NEURON[1]] *= 0.3  # a fact neuron no stronger than it
    return lm


def test_a_planted_relation_neuron_is_flagged_and_the_fact_neuron_stays_in_the_fact_set(
        tmp_path):
    """RELATION_NEURON is always on and raises every capital (a neuron of the relation P36);
    FACT_NEURON fires on "France" and raises Paris only. On a reference sample of *other*
    capitals and official languages, the first is a relation neuron of P36 (not of P37); France's
    fact set keeps FACT_NEURON and its relation set holds RELATION_NEURON."""
    from mkn.data import write_facts
    from mkn.data.schema import Fact
    from mkn.localization.locate import LocateConfig, locate_fact
    from mkn.localization.reference import reference_relations
    from mkn.localization.relations import LeftOut
    from tests.test_controls import FACT_NEURON, facts
    from tests.tiny_models import torch_threads

    with torch_threads(1):
        lm = planted_relation_gpt2()
        reference = [Fact(id=f"ref-{country}", relation="P36", languages={"en": {
            "subject": country, "object": gold, "queries": [f"The capital of {country} [Y] ."]}})
            for country, gold in REFERENCE_CAPITALS] + [
            fact.model_copy(update={"id": f"ref-{fact.id}"}) for fact in facts()
            if fact.relation == "P37"]
        # ig (zero baseline): an always-on neuron has no attribution under AMIG's baseline
        config = LocateConfig(method="ig", steps=4, known="any", degenerate=False,
                              thresholds={"en": 0.1})
        france = facts()[0]
        write_facts([*reference, france], tmp_path / "facts.jsonl")
        data = f"jsonl:{tmp_path / 'facts.jsonl'}"
        found, path, built = reference_relations(lm, data, ["en"], config, ["P36", "P37"],
                                                 held_out=[france.id])
        assert built and france.id not in found.source["facts"]  # held out
        assert found.source["held_out"] == {"facts": 1, "overlap": 0}
        again, same, built = reference_relations(lm, data, ["en"], config, ["P36", "P37"],
                                                 held_out=[france.id])
        assert not built and same == path and again.digest == found.digest  # cached
        other, _, built = reference_relations(lm, data, ["en"], config, ["P36", "P37"],
                                              held_out=[france.id, "ref-Italy"])
        assert built and "ref-Italy" not in other.source["facts"]  # another sample, rebuilt
        assert RELATION_NEURON in found.neurons("P36")
        assert RELATION_NEURON not in found.neurons("P37")
        assert FACT_NEURON not in found.neurons("P36")  # France is not in the reference
        located = locate_fact(lm, france, ["en"], config, relations=found)
        result = located.languages["en"]
        assert FACT_NEURON in result.neurons and RELATION_NEURON in result.relation
        assert RELATION_NEURON not in result.neurons
        passed = locate_fact(lm, france, ["en"], config, generic=LeftOut(relations=found))
        assert passed.languages["en"].neurons == result.neurons  # as the experiments pass it
        assert passed.languages["en"].relation == result.relation
        kept = locate_fact(lm, france, ["en"], config).languages["en"]  # no list: as before
        assert {FACT_NEURON, RELATION_NEURON} <= set(kept.neurons) and not kept.relation


def test_locality_catches_an_edit_that_damages_a_planted_neighbour():
    """Erasing the relation neuron drops Germany's capital (a same-relation neighbour) and not
    Germany's official language; erasing France's fact neuron leaves both; the model is left
    as it was."""
    from mkn.interventions.controls import CleanProbs
    from mkn.interventions.locality import locality
    from mkn.interventions.weights import erase
    from tests.test_controls import FACT_NEURON
    from tests.tiny_models import torch_threads

    with torch_threads(1):
        lm = planted_relation_gpt2()
        before = {k: v.clone() for k, v in lm.model.state_dict().items()}
        around = {"en": {"same_relation": [[("The capital of Germany", "Berlin")]],
                         "other_relation": [[("The official language of Germany", "German")]]}}
        clean = CleanProbs(lm)
        relation_edit = erase(lm, [RELATION_NEURON])
        relation_edit.undo()
        damaged = locality(lm, relation_edit, around, clean)["en"]
        fact_edit = erase(lm, [FACT_NEURON])
        spared = locality(lm, fact_edit, around, clean)["en"]  # applied: kept applied after
        assert fact_edit.applied
        fact_edit.undo()
    assert damaged["same_relation"][0] < -0.5  # the neighbour lost most of p(Berlin)
    assert abs(damaged["other_relation"][0]) < abs(damaged["same_relation"][0]) / 3
    assert abs(spared["same_relation"][0]) < 0.05 and abs(spared["other_relation"][0]) < 0.05
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_injection_reports_locality_for_the_fact_set_the_relation_set_and_random_sets(
        tmp_path):
    """Injection through France's fact set (relation neurons left out) and its relation set:
    both measured on the same-relation and other-relation neighbours; the relation-set edit
    damages the capitals more than the fact-set edit does."""
    from mkn.experiments import injection
    from mkn.localization.generic import GenericNeurons
    from mkn.localization.generic import ReferenceItem as Item
    from mkn.localization.locate import LocateConfig
    from mkn.localization.relations import LeftOut
    from tests.test_controls import GENERIC_NEURON, facts
    from tests.tiny_models import torch_threads

    listed = RelationNeurons([Item(f"ref-{i}", "P36", "en", (RELATION_NEURON,))
                              for i in range(3)])
    generic = GenericNeurons([Item(f"ref-{r}", r, "en", (GENERIC_NEURON,))
                              for r in ("P1", "P2", "P3", "P4")])
    assert GENERIC_NEURON in generic.neurons()
    config = LocateConfig(method="ig", steps=4, known="any", degenerate=False,
                          thresholds={"en": 0.1})
    with torch_threads(1):
        lm = planted_relation_gpt2()
        result = injection.run(lm, facts()[:1] + facts()[1:], ["en"], config, draws=1,
                               generic=LeftOut(generic, listed))
    france = next(i for i in result["items"] if i["fact_id"] == "fact-0")
    assert "relation_set" in france and france["relation_set"]["neurons"] == 1
    assert france["neurons"] == 1  # the fact neuron: generic and relation neurons left out
    fact_same = france["neighbours"]["en"]["same_relation"]
    kin_same = france["relation_set"]["neighbours"]["en"]["same_relation"]
    assert len(fact_same) == 1  # Tokyo (Berlin became the counterfactual object), or Berlin
    assert kin_same[0] < fact_same[0] - 0.3
    summary = result["summary"]["neighbours"]
    assert set(summary) == {"fact set", "relation set", "random set"}
    assert summary["relation set"]["same_relation"]["source"]["value"] is not None
    assert "same-relation facts" in injection.table(result)


def test_the_contrastive_score_keeps_the_planted_fact_neuron_and_drops_the_relation_neuron():
    """c(n) = a_France(n) - mean over other capitals of a(n): RELATION_NEURON raises every
    capital, so its contrast is small; FACT_NEURON raises Paris only and stands out."""
    from mkn.data.schema import Fact
    from mkn.localization.locate import LocateConfig, locate_fact
    from mkn.localization.relations import contrastive_set
    from tests.test_controls import FACT_NEURON, facts
    from tests.tiny_models import torch_threads

    with torch_threads(1):
        lm = planted_relation_gpt2()
        config = LocateConfig(method="ig", steps=4, known="any", degenerate=False,
                              thresholds={"en": 0.1})
        others = [Fact(id=f"ref-{country}", relation="P36", languages={"en": {
            "subject": country, "object": gold, "queries": [f"The capital of {country} [Y] ."]}})
            for country, gold in REFERENCE_CAPITALS]
        france = locate_fact(lm, facts()[0], ["en"], config).languages["en"]
        assert {FACT_NEURON, RELATION_NEURON} <= set(france.neurons)
        mean = torch.stack([locate_fact(lm, fact, ["en"], config).languages["en"].scores
                            for fact in others]).mean(0)
        kept = contrastive_set(france.neurons, france.scores, mean)
        assert FACT_NEURON in kept and RELATION_NEURON not in kept
        assert contrastive_set(france.neurons, france.scores, france.scores) == []  # no contrast
        assert set(contrastive_set(france.neurons, france.scores, torch.zeros_like(mean),
                                   share=0.0)) == set(france.neurons)  # nothing to contrast with


def test_the_relation_reference_sample_is_probed_once_for_every_method(tmp_path, monkeypatch):
    """A run with several methods builds one relation list per method; the reference sample is
    the same for all (it depends on the knowledge criterion, not the method), so it is probed
    once per process."""
    from mkn.data import write_facts
    from mkn.localization import reference
    from mkn.localization.locate import LocateConfig
    from tests.test_controls import facts
    from tests.tiny_models import torch_threads

    monkeypatch.setattr(reference, "_PROBED", {})
    monkeypatch.setenv("MKN_CACHE", str(tmp_path / "cache"))
    probed = []
    real = reference.reference_facts
    monkeypatch.setattr(reference, "reference_facts",
                        lambda *a, **k: probed.append(1) or real(*a, **k))
    write_facts(facts(), tmp_path / "facts.jsonl")
    data = f"jsonl:{tmp_path / 'facts.jsonl'}"
    with torch_threads(1):
        lm = planted_relation_gpt2()
        lists = [reference.reference_relations(lm, data, ["en"], LocateConfig(
            method=method, steps=2, known="any", degenerate=False), ["P36", "P37"],
            held_out=[facts()[0].id]) for method in ("ig", "amig")]
    assert [built for _, _, built in lists] == [True, True]  # a list per method
    assert lists[0][1] != lists[1][1] and len(probed) == 1  # one probe

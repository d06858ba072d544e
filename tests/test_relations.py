"""Issue 25: relation neurons (knowledge neurons of many facts of one relation) on hand-made
reference samples."""

from __future__ import annotations

import pytest

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

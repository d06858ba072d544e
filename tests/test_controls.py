"""Controls and generic neurons: hand-made numbers, and a tiny GPT-2 with two planted neurons.

- ``FACT_NEURON`` fires only at the token "France" (its input reads that token's direction) and
  writes "Paris": the knowledge neuron of one fact.
- ``GENERIC_NEURON`` fires whatever the input and writes every gold object of the sample: a
  knowledge neuron of every fact, of every relation.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from mkn.data.schema import Fact
from mkn.experiments.common import control_summary
from mkn.interventions.controls import (
    CleanProbs,
    ControlledEffect,
    controlled_effect,
    random_like,
    stable_seed,
)
from mkn.localization.generic import GenericNeurons, ReferenceItem, Shares, relation_shares
from mkn.localization.locate import LocateConfig, locate_fact
from tests.tiny_models import build, torch_threads

FACT_NEURON, GENERIC_NEURON = (1, 5), (1, 9)
QUERIES = [("P36", "The capital of France [Y] .", "Paris"),
           ("P36", "The capital of Germany [Y] .", "Berlin"),
           ("P36", "The capital of Japan [Y] .", "Tokyo"),
           ("P37", "The official language of Germany [Y] .", "German"),
           ("P37", "The official language of Japan [Y] .", "Japanese"),
           ("P37", "The official language of Italy [Y] .", "Italian")]


def _unit(vector: torch.Tensor) -> torch.Tensor:
    centered = vector - vector.mean()
    return centered / centered.norm()


def planted_facts_gpt2():
    lm = build("gpt2", cached=False)
    token = lm.tokenizer.convert_tokens_to_ids
    wte = lm.model.transformer.wte.weight
    mlp = lm.blocks[1].mlp
    with torch.no_grad():
        wte[token("France")] *= 8  # dominates the residual stream where it is the token
        mlp.c_fc.weight[:, FACT_NEURON[1]] = 2 * _unit(wte[token("France")])
        mlp.c_fc.bias[FACT_NEURON[1]] = -6.0  # off for every other token
        mlp.c_proj.weight[FACT_NEURON[1]] = 40 * _unit(wte[token("Paris")])
        mlp.c_fc.weight[:, GENERIC_NEURON[1]] = 0
        mlp.c_fc.bias[GENERIC_NEURON[1]] = 5.0  # always on
        golds = sum(_unit(wte[token(gold)]) for _, _, gold in QUERIES)
        mlp.c_proj.weight[GENERIC_NEURON[1]] = 12 * golds / golds.norm()
    return lm


@pytest.fixture(scope="module")
def planted():
    with torch_threads(1):
        yield planted_facts_gpt2()


def facts() -> list[Fact]:
    return [Fact(id=f"fact-{i}", relation=relation, languages={
        "en": {"subject": "x", "object": gold, "queries": [query]}})
        for i, (relation, query, gold) in enumerate(QUERIES)]


# ------------------------------------------------------------------------- hand-made numbers


def test_selectivity_and_specificity_are_oriented_differences():
    drop = ControlledEffect("suppress", 4, -0.9, (-0.1, 0.0, 0.1), (-0.2, 0.0))
    assert drop.random_effect == pytest.approx(0.0)
    assert drop.selectivity == pytest.approx(0.9) and drop.specificity == pytest.approx(0.8)
    gain = ControlledEffect("enhance", 4, 2.0, (0.5,), (1.5,))
    assert gain.selectivity == pytest.approx(1.5) and gain.specificity == pytest.approx(0.5)
    lonely = ControlledEffect("suppress", 1, -0.5, (0.0,), ())
    assert lonely.specificity is None and lonely.to_dict()["specificity"] is None
    summary = control_summary([("a", drop.to_dict()), ("b", gain.to_dict()),
                               ("c", lonely.to_dict())])
    assert summary["items"] == 3 and summary["selectivity"]["n"] == 3
    assert summary["selectivity"]["value"] == pytest.approx(0.9)
    assert summary["specificity"]["value"] == pytest.approx(0.65)  # lonely has none
    assert summary["unrelated_moved"]["value"] == pytest.approx(0.8)  # |-0.1| and |1.5|
    low, high = summary["specificity"]["ci95"]
    assert low == pytest.approx(0.5) and high == pytest.approx(0.8)  # resampling two facts


def test_random_sets_keep_the_shape_and_avoid_the_set():
    neurons = [(0, 1), (0, 2), (3, 7)]
    rng = random.Random(0)
    for _ in range(20):
        drawn = random_like(neurons, 8, rng, exclude=[(0, 3)])
        assert sorted(layer for layer, _ in drawn) == [0, 0, 3]
        assert not set(drawn) & {(0, 1), (0, 2), (3, 7), (0, 3)}
    with pytest.raises(ValueError, match="layer 0 has 1 neurons left"):
        random_like([(0, 0), (0, 1), (0, 2)], 4, rng)
    assert stable_seed(0, "fact", "en") == stable_seed(0, "fact", "en")
    assert stable_seed(0, "fact", "en") != stable_seed(1, "fact", "en")


def test_identical_sets_get_identical_controls_whatever_found_them():
    """Random controls are seeded by the content of the set (issue 20): the same set, in any
    order, gets the same draws; another set gets others."""
    from mkn.interventions.controls import random_sets

    found_by_amig = [(3, 7), (0, 1), (0, 2)]
    found_by_matrice = [(0, 1), (0, 2), (3, 7)]
    assert random_sets(found_by_amig, 64, 3, "seed/suppress") == \
        random_sets(found_by_matrice, 64, 3, "seed/suppress")
    assert random_sets(found_by_amig, 64, 3, "seed/suppress") != \
        random_sets([(0, 1), (0, 2), (3, 8)], 64, 3, "seed/suppress")


def test_a_query_under_an_intervention_that_several_jobs_share_is_scored_once(monkeypatch):
    """Two methods' equal sets (in any order) and their equal draws are one row each (issue 26),
    and every job still gets its own mean change."""
    from mkn.interventions import controls
    from mkn.interventions.controls import CleanProbs, measure_sets
    from tests.tiny_models import tiny

    lm = tiny("gpt2")
    scored = []
    score_rows = controls.score_rows
    monkeypatch.setattr(controls, "score_rows", lambda lm, encoded, *a, **k: scored.append(
        len(encoded)) or score_rows(lm, encoded, *a, **k))
    own, other = [("The capital of France is", " Paris")], [("Tokyo is in", " Japan")]
    jobs = [([(0, 1), (1, 2)], "suppress", own), ([(1, 2), (0, 1)], "suppress", own),
            ([(0, 1), (1, 2)], "enhance", own), ([(0, 1), (1, 2)], "suppress", own + other)]
    changes = measure_sets(lm, jobs, CleanProbs(lm))
    assert scored == [2, 3]  # clean: own, other; then (own, x0), (own, x2), (other, x0)
    assert changes[0] == changes[1] != changes[2]
    alone = [measure_sets(lm, [job], CleanProbs(lm))[0] for job in jobs]
    assert changes == pytest.approx(alone, rel=1e-5, abs=1e-7)


def test_relation_shares_by_hand():
    rows = [("P36", [(0, 1), (0, 2)]), ("P36", [(0, 1), (0, 2)]), ("P36", [(0, 1)]),
            ("P37", [(0, 1)]), ("P37", [(0, 3)]), ("P19", [(0, 1)])]
    shares = relation_shares(rows)
    # (0, 1): in 5 of 6 facts; outside P36 in 2 of 3, outside P37 in 3 of 4 -> 2/3
    assert shares.share[(0, 1)] == pytest.approx(2 / 3)
    assert shares.outside[(0, 1)] == 2  # facts outside P36, the relation it serves most
    assert shares.share[(0, 2)] == 0.0  # only in P36: a relation neuron, not generic
    assert shares.share[(0, 3)] == 0.0  # min over relations: outside P37 it is never there
    assert shares.support == 3
    assert relation_shares([("P36", [(0, 1)]), ("P36", [(0, 1)])]) == Shares({}, {}, 0)


def test_generic_neurons_count_facts_over_languages_need_min_facts_and_round_trip(tmp_path):
    # (1, 1) serves every fact, in en or only in ja: counted once per fact, whatever the language
    items = [ReferenceItem(f"f{i}", f"P{i % 3}", "en", ((1, 1), (2, i))) for i in range(6)]
    items += [ReferenceItem(f"f{i}", f"P{i % 3}", "ja", ((1, 1),)) for i in range(6, 9)]
    # (4, 4) serves 2 facts of 2 relations: share 1/6, above 0.1, but it serves too few facts
    # (MIN_FACTS) outside its relation to be called generic
    items += [ReferenceItem("f0", "P0", "ja", ((4, 4),)), ReferenceItem("f1", "P1", "ja",
                                                                          ((4, 4),))]
    generic = GenericNeurons(items, threshold=0.3)
    assert generic.facts == 9
    assert generic.shares()[(1, 1)] == 1.0 and generic.shares()[(4, 4)] == pytest.approx(1 / 6)
    assert generic.neurons() == {(1, 1): 1.0}
    assert generic.with_threshold(0.1).neurons() == {(1, 1): 1.0}  # (4, 4): too few facts
    assert generic.split([(2, 0), (1, 1), (3, 3)]) == ([(2, 0), (3, 3)], [(1, 1)])
    assert generic.summary(["en", "ja", "ko"]) == {
        "en": {"reference_items": 6, "generic": 1}, "ja": {"reference_items": 5, "generic": 1},
        "ko": {"reference_items": 0, "generic": 1}}
    path = generic.save(tmp_path / "g.json")
    again = GenericNeurons.load(path)
    assert again.items == generic.items and again.neurons() == generic.neurons()
    # the digest a run's identity records: the content, not where it came from
    assert again.digest == generic.digest == GenericNeurons(items, 0.3, {"a": 1}).digest
    assert generic.with_threshold(0.1).digest != generic.digest
    assert GenericNeurons(items[1:], 0.3).digest != generic.digest
    assert again.with_threshold(1.1).neurons() == {}
    (tmp_path / "bad.json").write_text('{"format": 2, "items": [{"fact_id": 1}]}')
    with pytest.raises(ValueError, match="bad.json: not a generic-neuron list"):
        GenericNeurons.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"format": 1, "threshold": 0.3, "items": []}')
    with pytest.raises(ValueError, match="format 1, expected 2"):
        GenericNeurons.load(tmp_path / "old.json")


def test_the_reference_sample_is_facts_the_model_knows_balanced_and_probed_lazily(monkeypatch):
    """Only known facts, at most REFERENCE_PER_RELATION per relation, interleaved by relation;
    probing stops at the chunk where enough were found; unscorable facts are listed."""
    from types import SimpleNamespace

    from mkn.localization import reference as generic_module
    from mkn.localization.knowledge import KnownItems

    pool = [SimpleNamespace(id=f"f{i}", relation=f"P{i % 5}") for i in range(400)]
    probed: list[str] = []

    def fake_known_items(lm, chunk, languages, criterion, progress=None):
        probed.extend(f.id for f in chunk)
        knows = {(f.id, lang): SimpleNamespace(known=lambda c, ok=int(f.id[1:]) % 3 == 0: ok)
                 for f in chunk for lang in languages}
        return KnownItems(criterion, list(languages), knows)

    monkeypatch.setattr(generic_module, "known_items", fake_known_items)
    monkeypatch.setattr(generic_module, "encoding_problems",
                        lambda lm, chunk, languages: {"f3": "target is empty"}
                        if any(f.id == "f3" for f in chunk) else {})
    chosen, known, problems = generic_module.reference_facts(None, pool, ["en", "ja"], "auto",
                                                             facts=12)
    ids = [f.id for f in chosen]
    assert len(ids) == 12 and all(int(i[1:]) % 3 == 0 for i in ids) and "f3" not in ids
    assert len({f.relation for f in chosen[:5]}) == 5  # interleaved: one of each relation first
    assert max(Counter(f.relation for f in chosen).values()) <= \
        generic_module.REFERENCE_PER_RELATION
    assert problems == {"f3": "target is empty"}
    # a sample of 12 probes 24 facts at a time: the first 24 hold 7 known facts, the first 48
    # hold 15, so probing stops there, far from the 400 of the pool (f3, unscorable, is never
    # probed)
    assert len(probed) == 47 and "f3" not in probed
    assert set(known.facts()) == set(probed)


# ------------------------------------------------------------------------- planted neurons


def test_a_planted_fact_neuron_is_selective_and_specific(planted):
    own = [QUERIES[0][1:]]
    unrelated = [[q[1:]] for q in QUERIES[3:]]  # other relation
    with torch_threads(1):
        effect = controlled_effect(planted, [FACT_NEURON], "suppress", own, unrelated, draws=3,
                                   seed=0)
    assert effect.effect < -0.8  # suppressing it removes "Paris"
    assert len(effect.random) == 3 and max(abs(r) for r in effect.random) < 0.05
    assert max(abs(u) for u in effect.unrelated) < 0.05
    assert effect.selectivity > 0.8 and effect.specificity > 0.8
    # the same-relation control (other capitals) beside it: the planted neuron is the fact's
    with torch_threads(1):
        kin = controlled_effect(planted, [FACT_NEURON], "suppress", own, unrelated, draws=3,
                                seed=0, same_relation=[[q[1:]] for q in QUERIES[1:3]])
    assert kin.random == effect.random and kin.unrelated == effect.unrelated  # unchanged
    assert len(kin.same_relation) == 2 and kin.relation_specificity > 0.8
    # the generic neuron serves every fact: the same-relation facts move with it
    with torch_threads(1):
        generic = controlled_effect(planted, [GENERIC_NEURON], "suppress", own, unrelated,
                                    draws=1, seed=0,
                                    same_relation=[[q[1:]] for q in QUERIES[1:3]])
    assert generic.relation_specificity < kin.relation_specificity


def test_a_planted_neuron_of_every_fact_is_generic_and_not_specific(planted):
    config = LocateConfig(method="ig", steps=8, rule="gauss-legendre", known="any",
                          degenerate=False)
    with torch_threads(1):
        located = [locate_fact(planted, fact, ["en"], config) for fact in facts()]
    items = [ReferenceItem(r.fact_id, r.relation, "en", tuple(r.languages["en"].neurons))
             for r in located]
    assert all(GENERIC_NEURON in item.neurons for item in items)
    assert FACT_NEURON in items[0].neurons
    generic = GenericNeurons(items)
    assert GENERIC_NEURON in generic.neurons() and FACT_NEURON not in generic.neurons()

    # left out of the fact's set when the list is given, and listed as generic
    with torch_threads(1):
        filtered = locate_fact(planted, facts()[0], ["en"], config, generic=generic)
        effect = controlled_effect(planted, [GENERIC_NEURON], "suppress", [QUERIES[3][1:]],
                                   [[QUERIES[0][1:]], [QUERIES[1][1:]]], draws=2, seed=1,
                                   clean=CleanProbs(planted))
    assert filtered.languages["en"].neurons == [FACT_NEURON]
    assert filtered.languages["en"].generic == [GENERIC_NEURON]
    assert effect.effect < -0.5 and effect.selectivity > 0.5  # it beats a random neuron...
    assert effect.specificity < 0.3  # ...but moves the other relation's facts as well


SMALL = {"min_facts": 2, "min_relations": 2}  # the tiny two-relation sample, below the default


def test_the_reference_sample_holds_out_the_evaluated_facts(tmp_path, monkeypatch):
    """Issue 20: the generic-neuron list is never built on the facts a run evaluates; the
    overlap is counted (0) and a list that overlaps them, built or cached, is refused."""
    import json

    from mkn.data import write_facts
    from mkn.localization.generic import check_held_out
    from mkn.localization.reference import reference_generic
    from tests.tiny_models import knowing, torch_threads, two_relation_facts

    monkeypatch.setenv("MKN_GENERIC_CACHE", str(tmp_path / "cache"))
    facts = two_relation_facts()
    data = tmp_path / "facts.jsonl"
    write_facts(facts, data)
    evaluated = [f.id for f in facts[:4]]
    config = LocateConfig(method="amig", steps=2, known="any")
    with torch_threads(1):
        lm = knowing("llama")
        generic, path, built = reference_generic(lm, f"jsonl:{data}", ["en", "zh"], config,
                                                 facts=6, held_out=evaluated, **SMALL)
    assert built and generic.source["facts"]
    assert not set(generic.source["facts"]) & set(evaluated)
    assert generic.source["held_out"] == {"facts": 4, "overlap": 0}
    with pytest.raises(ValueError, match=r"overlaps the evaluated facts in 1 fact\(s\) \(b\)"):
        check_held_out(["a", "b"], ["b", "c"])
    assert check_held_out(["a"], ["b"]) == 0
    stored = json.loads(path.read_text(encoding="utf-8"))  # a cache edited to overlap
    stored["source"]["facts"].append(evaluated[0])
    path.write_text(json.dumps(stored), encoding="utf-8")
    with pytest.raises(ValueError, match="overlaps the evaluated facts"):
        reference_generic(lm, f"jsonl:{data}", ["en", "zh"], config, facts=6,
                          held_out=evaluated, **SMALL)


def test_a_shipped_reference_list_is_read_never_written(tmp_path, monkeypatch):
    """A prebuilt list in a ``shipped`` folder (committed beside a study config) is used when
    the cache has none and it was built from exactly this key; the folder is never written; an
    edited list there is not trusted: the list is rebuilt into the cache."""
    import json
    import shutil

    from mkn.data import write_facts
    from mkn.localization.reference import reference_generic
    from tests.tiny_models import knowing, torch_threads, two_relation_facts

    monkeypatch.setenv("MKN_GENERIC_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "facts.jsonl"
    write_facts(two_relation_facts(), data)
    config = LocateConfig(method="amig", steps=2, known="any")
    shipped = tmp_path / "shipped"
    with torch_threads(1):
        lm = knowing("llama")

        def generic():
            return reference_generic(lm, f"jsonl:{data}", ["en", "zh"], config, facts=6,
                                     held_out=["b"], shipped=shipped, **SMALL)

        built_list, path, built = generic()
        assert built and path.parent == tmp_path / "cache"
        shipped.mkdir()
        shutil.move(path, shipped / path.name)  # the cache is empty again
        before = {p.name: p.read_bytes() for p in shipped.iterdir()}
        found, where, built = generic()
        assert not built and where == shipped / path.name
        assert found.digest == built_list.digest and not path.exists()
        stored = json.loads(where.read_text(encoding="utf-8"))
        stored["items"][0]["neurons"] = []  # an edited list: its digest no longer checks
        where.write_text(json.dumps(stored), encoding="utf-8")
        before = {p.name: p.read_bytes() for p in shipped.iterdir()}
        rebuilt, where, built = generic()
    assert built and where == path and rebuilt.digest == built_list.digest
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before


def test_magnitude_matched_sets_keep_layers_and_match_activation_ranks():
    from mkn.interventions.controls import magnitude_matched_sets

    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(3, 400, generator=generator)
    neurons = [(0, int(activations[0].abs().argmax())), (2, 5), (2, 17)]
    drawn = magnitude_matched_sets(neurons, activations, draws=4, seed="s", window=4)
    ranks = {layer: {int(i): r for r, i in enumerate(
        torch.argsort(activations[layer].abs(), descending=True, stable=True))}
        for layer in (0, 2)}
    for draw in drawn:
        assert sorted(layer for layer, _ in draw) == [0, 2, 2]
        assert not set(draw) & set(neurons) and len(set(draw)) == 3
        for (layer, index), (_, original) in zip(draw, sorted(neurons), strict=True):
            assert abs(ranks[layer][index] - ranks[layer][original]) <= 8  # window, widened once
    assert drawn == magnitude_matched_sets(list(reversed(neurons)), activations, 4, "s", 4)
    assert drawn != magnitude_matched_sets(neurons, activations, 4, "other", 4)


def test_controlled_effect_reads_both_new_controls():
    from mkn.interventions.controls import ControlledEffect

    fact_set = ControlledEffect("suppress", 3, -0.9, (-0.01,), (-0.05,), (-0.1,), (-0.05,))
    relation_set = ControlledEffect("suppress", 3, -0.9, (-0.01,), (-0.05,), (-0.1,), (-0.8,))
    assert fact_set.matched_selectivity == pytest.approx(0.8)
    assert fact_set.relation_specificity == pytest.approx(0.85)
    assert relation_set.relation_specificity == pytest.approx(0.1)  # moves its relation too
    record = relation_set.to_dict()
    assert record["same_relation_effect"] == -0.8 and record["matched"] == [-0.1]
    bare = ControlledEffect("enhance", 1, 0.5, (0.1,), (0.0,)).to_dict()
    assert bare["matched_selectivity"] is None and bare["relation_specificity"] is None


def test_localization_quality_reports_the_new_controls_on_a_tiny_model():
    from mkn.experiments import localization_quality
    from tests.tiny_models import knowing, torch_threads, two_relation_facts

    config = LocateConfig(method="amig", steps=2, known="any")
    with torch_threads(1):
        result = localization_quality.run(knowing("llama"), two_relation_facts(), ["en"], config,
                                          methods=("amig",), draws=1, unrelated=2)
    measured = [i for i in result["items"] if i["amig"]["neurons"]]
    assert measured and all(i["same_relation_facts"] for i in measured)
    assert all(i["fact_id"] not in i["same_relation_facts"] for i in measured)
    for item in measured:
        for mode in ("suppress", "enhance"):
            assert len(item["amig"][mode]["matched"]) == 1
            assert item["amig"][mode]["relation_specificity"] is not None
    controls = result["summary"]["amig"]["controls"]["suppress"]
    assert controls["relation_specificity"]["n"] == len(measured)
    assert "same-relation facts" in localization_quality.table(result)

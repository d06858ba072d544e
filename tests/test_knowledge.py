"""Does the model know it? The rank and greedy criteria on hand-made numbers, the probe on a tiny
model that knows some facts, and the counts of what a filter skips."""

from __future__ import annotations

import json

import pytest

from mkn.attribution.scoring import Prediction
from mkn.data.schema import Fact
from mkn.localization.knowledge import (
    Knowledge,
    KnownItems,
    QueryKnowledge,
    _query_knowledge,
    known_items,
    majority,
    probe,
    rank_of_gold,
)
from mkn.localization.probe import probe_summary, probe_table, run_probe
from tests.tiny_models import knowing, torch_threads, two_relation_facts


def prediction(*token_probs: float, correct: bool = False) -> Prediction:
    prob = 1.0
    for p in token_probs:
        prob *= p
    return Prediction(prob, correct, 0, tuple(token_probs))


def test_rank_uses_mean_log_probability_per_token():
    # gold: 2 tokens of p 0.5 each (p = 0.25, mean log p = log 0.5); a one-token candidate of
    # p 0.3 has a higher p but a lower mean log p (log 0.3 < log 0.5): gold ranks first
    gold = prediction(0.5, 0.5, correct=True)
    query = _query_knowledge("q", gold, [prediction(0.3), prediction(0.1, 0.9)])
    assert query.rank == 1 and query.p_gold == pytest.approx(0.25)
    assert query.known("rank") and query.known("greedy") and query.known("auto")
    # a candidate above the gold object, and one tied with it, both rank above
    assert rank_of_gold(-0.7, [-0.2, -0.7, -3.0]) == 3
    assert rank_of_gold(-0.7, []) == 1
    below = _query_knowledge("q", prediction(0.2, correct=True), [prediction(0.6)])
    assert below.rank == 2 and not below.known("rank") and not below.known("auto")
    assert below.known("greedy") and below.known("any")


def test_without_candidates_auto_means_greedy_and_rank_means_unknown():
    wrong = _query_knowledge("q", prediction(0.4, correct=False), None)
    right = _query_knowledge("q", prediction(0.4, correct=True), None)
    assert wrong.rank is None and right.rank is None
    assert right.known("auto") and not wrong.known("auto")
    assert not right.known("rank")  # no candidates: the rank criterion cannot say yes
    with pytest.raises(ValueError, match="unknown knowledge criterion 'sure'"):
        right.known("sure")


def test_a_language_knows_a_fact_when_most_queries_do():
    assert majority([True, True, False]) and majority([True])
    assert not majority([True, False]) and not majority([])

    def item(*known: bool) -> Knowledge:
        return Knowledge("f", "P36", "en", "Paris", tuple(
            QueryKnowledge("q", 0.5, k, 1 if k else 3, 2) for k in known))

    assert item(True, True, False).known("rank") and item(True, True, False).known()
    assert not item(True, False).known("auto") and item(True, False).known("any")
    assert item(True, False).marked("any") is False  # any filters nothing, marks by auto
    record = item(True, False, True).to_record("rank")
    assert record["known"] and record["known_rank"] and record["known_greedy"]
    assert [q["rank"] for q in record["queries"]] == [1, 3, 1]


def test_skipped_items_are_counted_per_language_and_an_empty_filter_is_a_clear_error():
    def item(fact: str, lang: str, greedy: bool) -> Knowledge:
        return Knowledge(fact, "P36", lang, "x", (QueryKnowledge("q", 0.1, greedy, None, 0),))

    known = KnownItems("greedy", ["en", "zh"], {
        ("a", "en"): item("a", "en", True), ("a", "zh"): item("a", "zh", False),
        ("b", "en"): item("b", "en", True), ("b", "zh"): item("b", "zh", False)})
    assert known.counts() == {"en": {"items": 2, "known": 2, "skipped": 0},
                              "zh": {"items": 2, "known": 0, "skipped": 2}}
    assert known.languages_of("a") == ["en"]
    assert "en 2/2, zh 0/2" in known.describe()
    known.require_some()
    nothing = known.subset(["a"])
    nothing.knowledge = {k: v for k, v in nothing.knowledge.items() if k[1] == "zh"}
    nothing.languages = ["zh"]
    with pytest.raises(ValueError) as error:
        nothing.require_some("items to locate")
    message = str(error.value)
    assert "--known greedy" in message and "zh: 0 of 1 known" in message
    assert "--known any" in message and "\n" not in message


def test_probe_on_a_tiny_model_that_knows_some_facts():
    lm = knowing("llama")
    facts = two_relation_facts()
    # candidates: other capitals / languages (the gold object is the model's answer)
    with_candidates = [f.model_copy(update={"languages": {
        lang: view.model_copy(update={"candidates": [g.languages[lang].object for g in facts
                                                     if g.relation == f.relation
                                                     and g.id != f.id][:3]})
        for lang, view in f.languages.items()}}) for f in facts]
    with torch_threads(1):
        plain = probe(lm, facts, ["en", "zh"])
        ranked = probe(lm, with_candidates, ["en", "zh"], chunk=3)
    assert plain[("capital-france", "zh")].known() and not plain[("language-france", "zh")].known()
    assert not plain[("capital-england", "en")].known()
    for key, item in ranked.items():
        assert item.has_candidates and all(q.candidates == 3 for q in item.queries)
        assert item.known("greedy") == plain[key].known(), key  # same scores, other batches
        if item.known("greedy"):  # what the model was taught ranks first among the candidates
            assert item.known("rank") and item.known("auto"), key
        assert [q.p_gold for q in item.queries] == pytest.approx(
            [q.p_gold for q in plain[key].queries], rel=1e-5)
    summary = probe_summary(plain.values(), ["en", "zh"])
    assert summary["per_language"]["en"]["known_greedy"] == 8
    assert summary["per_language"]["zh"]["known_greedy"] == 4
    assert summary["per_relation"]["P37"]["zh"]["known"] == 0
    assert "| en | 10 | no candidates | 8 (80%) | 8 (80%) |" in probe_table(summary)
    summary = probe_summary(ranked.values(), ["en", "zh"])
    assert summary["per_language"]["en"]["known_rank"] >= 8


def test_probe_run_writes_records_and_tables(tmp_path):
    with torch_threads(1):
        summary = run_probe(knowing("llama"), two_relation_facts(), ["en", "zh"], tmp_path,
                            meta={"model": "tiny"})
    records = [json.loads(line) for line in
               (tmp_path / "knowledge.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 20 and summary["model"] == "tiny"
    assert sum(r["known"] for r in records) == 12
    assert (tmp_path / "knowledge.md").read_text(encoding="utf-8").startswith("| language")


def test_probe_resumes_after_a_kill_to_the_same_bytes(tmp_path, monkeypatch):
    """Issue 21: probe had no --resume; a kill lost everything probed."""
    from mkn.localization import probe as probe_module

    facts = two_relation_facts()
    with torch_threads(1):
        run_probe(knowing("llama"), facts, ["en", "zh"], tmp_path / "clean")
    monkeypatch.setattr(probe_module, "CHUNK", 3)
    calls = []
    real = probe_module.probe

    def dies_on_the_third_chunk(lm, chunk, *args, **kwargs):
        calls.append([f.id for f in chunk])
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the run
        return real(lm, chunk, *args, **kwargs)

    monkeypatch.setattr(probe_module, "probe", dies_on_the_third_chunk)
    with torch_threads(1), pytest.raises(KeyboardInterrupt):
        run_probe(knowing("llama"), facts, ["en", "zh"], tmp_path / "killed")
    assert not (tmp_path / "killed" / "knowledge.jsonl").exists()
    calls.clear()
    with torch_threads(1):
        run_probe(knowing("llama"), facts, ["en", "zh"], tmp_path / "killed", resume=True)
    assert sum(map(len, calls)) == len(facts) - 6  # only what was not stored
    for name in ("knowledge.jsonl", "summary.json", "knowledge.md"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name
                                                             ).read_bytes(), name


def test_a_gold_object_that_cannot_be_encoded_names_the_fact():
    fact = Fact(id="blank", relation="P1", languages={
        "en": {"subject": "France", "object": "Paris", "queries": ["[X] is [Y] ."]}})
    lm = knowing("llama")
    broken = fact.model_copy(update={"languages": {"en": fact.languages["en"].model_copy(
        update={"object": " "})}})
    with pytest.raises(ValueError, match="fact 'blank' \\(en\\)"):
        known_items(lm, [broken], ["en"])


def test_an_implied_object_with_its_own_leading_space_is_not_given_a_second():
    """``--target " Paris"`` after "The capital of France is" scores the same tokens as
    ``--target Paris`` (the joining space is added once, not twice)."""
    from mkn.attribution.queries import encode, split_prompt

    assert split_prompt("The capital of France is", " Paris") == ("The capital of France is", "")
    assert split_prompt("The capital of France is", "Paris") == ("The capital of France is ", "")
    lm = knowing("llama")
    spaced = encode(lm, "The capital of France is", " Paris")
    plain = encode(lm, "The capital of France is", "Paris")
    assert [s.input_ids for s in spaced.steps] == [s.input_ids for s in plain.steps]


def test_a_planted_copyable_item_is_flagged_and_counted():
    """The gold object in the prompt before its slot ("Toyota ... [Y]" -> Toyota) flags the item
    copyable (issue 20), in the records, the summary and the probe table; others are not."""
    from mkn.attribution.queries import encode
    from mkn.localization.knowledge import copyable
    from tests.tiny_models import build

    lm = knowing("llama")
    assert copyable(encode(lm, "Toyota is a company of Toyota , made by [Y] .", "Toyota"))
    assert copyable(encode(lm, "the capital of paris is [Y] .", "Paris"))  # case-folded
    assert not copyable(encode(lm, "The capital of France is [Y] .", "Paris"))
    assert not copyable(encode(lm, "The city [Y] is the capital of Paris .", "Paris"))  # after
    bert = build("bert")
    assert copyable(encode(bert, "Paris , the capital of France , is [Y] .", "Paris"))
    assert not copyable(encode(bert, "[Y] is the capital of France . Paris", "Paris"))
    facts = two_relation_facts()
    planted = facts[0].model_copy(deep=True)
    en = planted.languages["en"]
    planted.languages["en"] = en.model_copy(update={"queries": [
        f"{en.object} : the capital of [X] is [Y] ."]})
    with torch_threads(1):
        known = known_items(lm, [planted, *facts[1:]], ["en", "zh"])
    item = known.knowledge[(planted.id, "en")]
    assert item.copyable and item.to_record()["copyable"] is True
    assert not any(k.copyable for key, k in known.knowledge.items() if key != (planted.id, "en"))
    assert known.to_summary()["copyable"] == {
        "en": {"items": 1, "known": int(item.known("auto"))}, "zh": {"items": 0, "known": 0}}
    assert known.to_summary()["copyable_items"] == [[planted.id, "en"]]
    summary = probe_summary(known.knowledge.values(), ["en", "zh"])
    assert summary["per_language"]["en"]["copyable"] == 1
    assert "copyable (gold object in the prompt)" in probe_table(summary)


def test_a_huge_prompt_is_refused_at_once_not_run():
    """Issue 21: a 10 MB prompt against a model with 64 positions ran for 10 minutes."""
    import time

    from mkn.attribution.queries import encode

    lm = knowing("llama")
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"prompt of 10,000,000 characters cannot fit the "
                                         r"context of .* \(64 tokens\)"):
        encode(lm, "x" * (10_000_000 - 6) + " [Y] .", "Paris")
    assert time.perf_counter() - started < 1.0
    with pytest.raises(ValueError, match="longer than the context"):  # fits by characters only
        encode(lm, "the " * 80 + "capital is [Y] .", "Paris")


def test_items_the_rank_criterion_drops_while_greedy_decoding_is_right_are_named():
    """Issue 22 item 10: fr "Le Kenya se trouve en [Y]." decodes "Afrique" (p = 0.77) but the
    3-token candidate "Amérique du Sud" has a higher mean log-prob per token, so the item was
    "not known", silently."""
    afrique = prediction(0.77, correct=True)
    amerique = prediction(0.9, 0.95, 0.99)  # mean log p above log 0.77
    query = _query_knowledge("Le Kenya se trouve en [Y].", afrique, [amerique])
    assert query.rank == 2 and query.greedy
    assert not query.known("auto") and not query.known("rank")
    assert query.known("either") and query.known("greedy")
    neither = _query_knowledge("q", prediction(0.1), [prediction(0.5)])
    assert not neither.known("either")
    kenya = Knowledge("kenya", "P30", "fr", "Afrique", (query,))
    paris = Knowledge("paris", "P36", "fr", "Paris", (_query_knowledge(
        "q", prediction(0.6, correct=True), [prediction(0.1)]),))
    known = KnownItems("auto", ["fr"], {("kenya", "fr"): kenya, ("paris", "fr"): paris})
    assert known.rank_drops_greedy() == [("kenya", "fr")]
    line = known.describe()
    assert "1 skipped although greedy decoding gets the object (kenya/fr" in line
    assert "--known either keeps them" in line
    assert KnownItems("either", ["fr"], known.knowledge).counts()["fr"]["known"] == 2
    assert KnownItems("either", ["fr"], known.knowledge).rank_drops_greedy() == []
    summary = probe_summary([kenya, paris], ["fr"])
    assert summary["skipped_greedy_right"] == [["kenya", "fr"]]
    assert summary["per_language"]["fr"]["skipped_greedy_right"] == 1
    table = probe_table(summary)
    assert "1 items are skipped by the default criterion although greedy decoding gets" in table
    assert "kenya/fr" in table and "skipped although greedy decoding gets it" in table

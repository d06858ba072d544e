"""Issue 25: the plain-words answer on fact and relation neurons follows from the measured
summary (mkn.report.relation_evidence), and RESULTS adds it from summaries beside the study."""

from __future__ import annotations

import json

import pytest

from mkn.report import relation_evidence as ev


def entry(value: float, low: float | None = None, high: float | None = None,
          facts: int = 12) -> dict:
    return {"value": value, "ci95": [low if low is not None else value - 0.05,
                                     high if high is not None else value + 0.05],
            "n": 30, "facts": facts}


def row(kind: str, share: float | None, own: float, same: float, other: float = -0.01,
        neurons: float = 9, items: int = 30) -> dict:
    return {"set": kind, "kind": kind, "share": share, "items": items, "neurons": neurons,
            "own": entry(own), "same": entry(same), "other": entry(other),
            "random": entry(0.0)}


def summary(sets: list[dict]) -> dict:
    return {"kind": ev.KIND, "command": "python benchmarks/bench_controls.py --x", "model": "m",
            "dtype": "bfloat16", "cpu": "cpu", "data": "bmlama:bmlama17", "languages": ["en"],
            "facts": 16, "relation_facts": 6, "reference_overlap": 0, "minutes": 9.0,
            "sets": sets, "edits": [
                {"set": "fact set >= 0.5", "kind": "fact", "share": 0.5, "random": False,
                 "edits": 10, "efficacy": [4, 10], "same": entry(-0.1), "other": entry(0.0)},
                {"set": "fact set >= 0.5", "kind": "fact", "share": 0.5, "random": True,
                 "edits": 10, "efficacy": [1, 10], "same": entry(0.0), "other": entry(0.0)}]}


def test_a_fact_set_that_meets_the_target_is_named_with_its_numbers():
    found = summary([row("full", None, -0.95, -0.55, neurons=15),
                     row("fact", 0.5, -0.85, -0.05), row("relation", 0.5, -0.6, -0.45, neurons=4),
                     row("fact", 1.0, -0.93, -0.40), row("contrastive", 0.2, -0.77, -0.26)])
    assert ev.meets(found["sets"][1]) and not ev.meets(found["sets"][0])
    text = "\n".join(ev.answer(found))
    assert "**Yes, there are fact-specific neurons, and the target is met**" in text
    assert "share >= 0.5 left out): median 9 neurons, own p(gold) -85% [-90, -80]" in text
    assert "sits in the relation neurons" in text  # the relation set moves its relation 45%
    assert "does not meet the target, so the numbers support leaving relation neurons" in text
    assert "default fact set (relation share >= 0.5) meets the target here" in text
    assert "4 of 10 edits take (random set of its shape: 1 of 10 edits take)" in text
    assert "| yes |" in ev.table(found) and ev.table(found).count("| no |") == 4


def test_no_threshold_meeting_the_target_is_said_plainly_with_the_trade_off():
    found = summary([row("full", None, -0.95, -0.55), row("fact", 0.5, -0.6, -0.1),
                     row("fact", 1.0, -0.9, -0.4)])
    text = "\n".join(ev.answer(found))
    assert "**No relation-neuron threshold meets the target on this model.**" in text
    assert "share >= 0.5: own -60% [-65, -55], same relation -10% [-15, -5]; share >= 1" in text
    assert "does not meet the target here (own -60%" in text
    assert "So there are fact-specific neurons, but they hold less of the fact" in text
    assert "share >= 0.5 left out) (median 9 neurons) keeps the relation's other" in text
    broad = "\n".join(ev.answer(summary([row("fact", 0.5, -0.6, -0.3)])))
    assert "the located sets are mostly relation neurons" in broad
    thin = summary([row("full", None, -0.95, -0.1, other=-0.2)])  # other relations fail it
    assert not ev.meets(thin["sets"][0])


def test_results_add_the_summaries_beside_the_study_and_refuse_another_kind(tmp_path):
    (tmp_path / "relation-neurons-bm.json").write_text(json.dumps(summary(
        [row("full", None, -0.95, -0.55), row("fact", 0.5, -0.85, -0.05)])))
    text = "\n".join(ev.section(ev.load(tmp_path)))
    assert text.startswith("## Fact neurons or relation neurons? (issue 25)")
    assert "`python benchmarks/bench_controls.py --x` (m, bfloat16, 9.0 min on cpu)" in text
    assert ev.section([]) == []
    assert ev.load(tmp_path, "m") and ev.load(tmp_path, "another-model") == []  # per model
    assert "**In short (m):** a fact set with the relation neurons left out meets the target " \
        "on bmlama:bmlama17. Suppressing a full set lowers other facts of its own relation " \
        "more" in text
    near = summary([row("full", None, -0.95, -0.05, other=-0.03)])  # intervals overlap
    assert "(intervals apart) on 0 of 1 data sets" in ev.in_short([near])
    assert "no fact set meets the target on any data set" in ev.in_short([near])
    (tmp_path / "relation-neurons-bad.json").write_text('{"kind": "other"}')
    with pytest.raises(ValueError, match="relation-neurons-bad.json: not a relation-neuron "
                                         "summary"):
        ev.load(tmp_path)

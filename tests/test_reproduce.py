"""The reproduction study: headline statistics on hand-made numbers, a whole study on a tiny
model rendered to markdown from its JSON, and (real) the `mkn reproduce --limit` smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mkn.experiments.cross_lingual_editing import headline as editing_headline
from mkn.experiments.headlines import without_raw_results
from mkn.experiments.localization_quality import headline as sr_headline
from mkn.experiments.metrics import accuracy, interval
from mkn.jobs.study import DataPart, StudyConfig, run_study
from mkn.report.results import (
    CLAIMS,
    MIN_FACTS,
    read_study,
    render,
    separated,
    upper_share,
    verdict,
    with_ci,
    write_results,
)
from mkn.runs.directory import write_json
from tests.tiny_models import knowing, torch_threads, two_relation_facts


def test_interval_and_verdicts_on_hand_numbers():
    entry = interval([1.0, 2.0, 3.0, 4.0, 100.0])
    assert entry["value"] == 3.0 and entry["n"] == 5
    low, high = entry["ci95"]
    assert 1.0 <= low <= 3.0 <= high <= 100.0
    assert interval([]) == {"value": None, "ci95": None, "n": 0}
    assert accuracy([True, False, True, True]) == 0.75
    assert verdict({"value": 0.8, "ci95": [0.6, 0.9], "n": 10}, 0.5) == "agrees"
    assert verdict({"value": 0.3, "ci95": [0.1, 0.45], "n": 10}, 0.5) == "disagrees"
    # an interval that touches the null is inconclusive, never a disagreement (issue 20)
    assert verdict({"value": 0.0, "ci95": [0.0, 0.0], "n": 10}, 0.0) == "inconclusive"
    assert verdict({"value": 0.429, "ci95": [0.346, 0.5], "n": 10}, 0.5) == "inconclusive"
    assert verdict({"value": 0.6, "ci95": [0.5, 0.8], "n": 10}, 0.5) == "inconclusive"
    assert verdict({"value": -0.1, "ci95": [-0.2, -0.001], "n": 10}, 0.0) == "disagrees"
    assert verdict({"value": 0.6, "ci95": [0.4, 0.7], "n": 10}, 0.5) == "inconclusive"
    assert verdict({"value": None, "ci95": None, "n": 0}, 0.5) == "not measured"
    from mkn.report.results import MIN_FACTS, reading, tested

    few = {"value": 0.9, "ci95": [0.8, 1.0], "n": 12, "facts": MIN_FACTS - 1,
           "p": {"0.5": 0.0}}
    assert tested(few, 0.5)[0].startswith("untestable (the model knows too little here")
    assert tested({**few, "facts": MIN_FACTS}, 0.5) == ["agrees", 0.0]
    assert "Untestable here" in " ".join(reading([["C1", "c", "d", tested(few, 0.5)[0]]]))


def test_holm_on_hand_made_p_values_and_corrected_verdicts():
    from mkn.experiments.metrics import bootstrap_p, holm
    from mkn.report.results import with_holm

    # Holm 1979: sorted 0.01, 0.02, 0.03, 0.04 x (4, 3, 2, 1) -> 0.04, 0.06, 0.06, 0.06
    adjusted = holm([0.03, None, 0.01, 0.04, 0.02])
    assert adjusted[1] is None
    assert [round(p, 10) for p in (adjusted[2], adjusted[4], adjusted[0], adjusted[3])] == [
        0.04, 0.06, 0.06, 0.06]
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert bootstrap_p([0.1, 0.2, 0.3, 0.4], 0.0) == 0.0
    assert bootstrap_p([-0.1, 0.2, 0.3, 0.4], 0.0) == 0.5
    assert bootstrap_p([0.5] * 4, 0.5) == 1.0
    rows = [["c1", "d", "m", "agrees", 0.01], ["c2", "d", "m", "agrees", 0.02],
            ["c3", "d", "m", "disagrees", 0.04], ["c4", "d", "m", "agrees", None],
            ["c5", "d", "m", "inconclusive", 0.5]]
    after = [row[-1] for row in with_holm(rows)]
    assert after == ["agrees", "inconclusive after Holm", "inconclusive after Holm",
                     "agrees (no p-value: not corrected)", "inconclusive"]


def test_intervals_carry_bootstrap_p_values_that_match_them():
    entry = interval([0.2, 0.3, 0.25, 0.4, 0.35, 0.3], seed=1)
    assert entry["ci95"][0] > 0 and entry["p"]["0.0"] < 0.05
    touching = interval([0.5, 0.5, 0.5, 0.6], seed=1)
    assert touching["ci95"][0] == 0.5 and touching["p"]["0.5"] >= 0.05
    lower = {"value": -0.5, "ci95": [-0.7, -0.4], "n": 5}
    higher = {"value": -0.1, "ci95": [-0.2, 0.0], "n": 5}
    assert separated(lower, higher) == "agrees" and separated(higher, lower) == "disagrees"
    assert separated(lower, {"value": -0.45, "ci95": [-0.5, -0.3], "n": 5}) == "inconclusive"
    assert with_ci(lower) == "-0.5 [-0.7, -0.4] (n=5)"
    assert upper_share([1, 0, 0, 1, 1, 1]) == 0.5 and upper_share([0, 0, 0]) is None


def test_sr_headline_pairs_items():
    items = [{"fact_id": "a", "ig": {"sr": 1.0}, "amig": {"sr": 2.0}, "matrice": {"sr": 3.0}},
             {"fact_id": "a", "ig": {"sr": 5.0}, "amig": {"sr": 4.0}, "matrice": {"sr": None}},
             {"fact_id": "b", "ig": {"sr": 1.0}, "amig": {"sr": 3.0}, "matrice": {"sr": 0.5}}]
    h = sr_headline({"items": items}, ["en"], seed=0)
    assert h["paired"]["amig > ig"]["value"] == pytest.approx(2 / 3)
    assert h["paired"]["amig > ig"]["n"] == 3 and h["paired"]["amig > ig"]["facts"] == 2
    # the item where matrice found no neurons is a loss for it, not left out (issue 20)
    assert h["paired"]["matrice > amig"]["value"] == pytest.approx(1 / 3)
    assert h["paired"]["matrice > amig"]["n"] == 3
    tie = [{"fact_id": "a", "ig": {"sr": 1.0}, "amig": {"sr": 1.0}}]
    assert sr_headline({"items": tie}, ["en"], 0)["paired"]["amig > ig"]["value"] == 0.5
    assert h["median_sr"]["matrice"]["n"] == 2


def test_editing_headline_separates_own_and_other_languages():
    def item(source, suppress):
        return {"fact_id": "f", "source": source, "neurons": 3, "suppress": suppress,
                "enhance": {k: -v for k, v in suppress.items()}}

    items = [item("en", {"en": -0.8, "zh": -0.2}), item("zh", {"en": -0.1, "zh": -0.6}),
             item("agnostic", {"en": -0.5, "zh": -0.7}),
             item("agnostic-soft", {"en": -0.3, "zh": -0.5})]
    h = editing_headline({"items": items}, ["en", "zh"], seed=0)["suppress"]
    assert h["agnostic_all_languages"]["value"] == pytest.approx(-0.6)
    assert h["soft_agnostic_all_languages"]["value"] == pytest.approx(-0.4)
    assert h["single_other_languages"]["value"] == pytest.approx(-0.15)
    assert h["single_own_language"]["value"] == pytest.approx(-0.7)


def test_study_on_a_tiny_model_renders_from_its_json(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(f.model_dump(), ensure_ascii=False) + "\n"
                             for f in two_relation_facts()), encoding="utf-8")
    part = DataPart(name="tiny", data=f"jsonl:{facts}", languages=["en", "zh"],
                    relations=["P36", "P37"], per_relation=5,
                    experiments=["localization-quality", "size-curves", "shared-sets",
                                 "cross-lingual-editing", "fact-checking", "enhancement",
                                 "injection", "audits"],
                    options={"size-curves": {"sizes": [1, 2, 5], "draws": 1},
                             "shared-sets": {"sizes": [1, 2], "draws": 1},
                             "cross-lingual-editing": {"max_facts": 4}},
                    chosen="the tiny model's two relations")
    config = StudyConfig(model="tiny-llama", dtype="float32", steps=2, max_queries=1,
                         parts=[part])
    ticks = []

    def task(title, total):
        return lambda item: ticks.append((title, item))

    with torch_threads(1):
        lm = knowing("llama")
        study = run_study(lm, config, tmp_path / "out", task, "mkn reproduce --test")
    saved = json.loads((tmp_path / "out" / "study.json").read_text(encoding="utf-8"))
    assert sorted(saved["parts"][0]["facts"]) == sorted(f.id for f in two_relation_facts())
    assert saved["parts"][0]["knowledge"]["per_language"] == {
        "en": {"items": 10, "known": 8, "skipped": 2}, "zh": {"items": 10, "known": 4,
                                                              "skipped": 6}}
    assert set(saved["parts"][0]["experiments"]) == set(part.experiments)
    assert {t for t, _ in ticks} >= {"tiny: locate (ig, amig, matrice)",
                                     "tiny: localization-quality"}
    page = render(saved)
    for heading in ("## Samples", "## The papers' claims", "## 1. Localization quality",
                    "## 1b. Methods at equal size", "## 1c. Language-agnostic sets at equal size",
                    "## 2. Layer distribution", "## 3. Cross-lingual editing",
                    "## 4. Fact-checking", "## 5a. Knowledge enhancement",
                    "## 5b. New knowledge injection", "## 6. Cost", "## 7. Audits",
                    "## Caveats"):
        assert heading in page, heading
    assert "- tiny: the tiny model's two relations." in page
    assert "`mkn reproduce --test`" in page
    assert "en 8/10, zh 4/10" in page and "the other 8 items are skipped" in page
    assert "selectivity" in page and "specificity" in page
    # every fact of the tiny data is measured, so no reference pool is left (issue 22: a list
    # is not built from too few facts; the part keeps its generic neurons and says why)
    assert "- tiny: none left out (the reference pool of jsonl:" in page
    assert "has 0 facts of 0 relations, too few for a generic-neuron list" in page
    assert study["parts"][0]["generic_kept"] and not study["parts"][0]["generic"]
    # relation neurons (issue 25): a list per method, here empty (no reference facts left)
    relation_lists = study["parts"][0]["relation_neurons"]
    assert set(relation_lists) == {"ig", "amig", "matrice"}
    assert all(r["per_relation"] == {} and r["held_out"]["overlap"] == 0
               for r in relation_lists.values())
    assert "Reading, generated from the verdicts after Holm's correction above" in page
    # the caveats name this model, not gemma (its zero-baseline caveat is Gemma's alone)
    assert "- **Model.** tiny-llama (" in page and "normalised FFN output" not in page
    assert saved["model"]["family"] == "Llama/Mistral"
    assert saved["model"]["normalises_ffn_output"] is False
    assert "| verdict after Holm |" in page
    assert "share of an item's knowledge neurons in the upper third of layers minus 1/3" in page
    layer = study["parts"][0]["localization"]
    assert layer["ig"]["upper_third_excess"]["facts"] >= 1 and "p" in layer["ig"][
        "upper_third_excess"]
    if layer["matrice"]["same_sets_as"]:  # one query per language: matrice's sets are amig's
        assert "not applicable (the same sets as amig" in page
    paired = study["parts"][0]["experiments"]["size-curves"]["headline"]["paired"]
    assert with_ci(paired["amig > ig"]["suppress_selectivity"]) in page  # numbers from the JSON
    assert "AMIG: language-agnostic neurons move the other languages" in page
    # the pre-registered claims, then the verdicts on all items and without copyable items
    assert "| id | claim | tested by | statistic | null |" in page
    assert "### On all known items" in page and "### Without copyable items" in page
    assert "copyable_items" in saved["parts"][0]["knowledge"]
    enhanced = [i for i in saved["parts"][0]["experiments"]["enhancement"]["result"]["items"]
                if "controls" in i]  # the same-relation control beside the others (issue 20)
    assert enhanced and all("same_relation" in i["controls"] for i in enhanced)
    assert "relation_specificity" in saved["parts"][0]["experiments"]["enhancement"]["headline"]
    assert all("headline_without_copyable" in e for name, e in
               saved["parts"][0]["experiments"].items() if name != "audits")
    # an expensive experiment on a subsample (max_facts): both relations in turn, recorded, said
    editing = saved["parts"][0]["experiments"]["cross-lingual-editing"]
    assert len(editing["subsample"]) == 4 and {f.relation for f in two_relation_facts()
                                                if f.id in editing["subsample"]} == {"P36", "P37"}
    assert {i["fact_id"] for i in editing["result"]["items"]} <= set(editing["subsample"])
    assert "measured on a subsample of its 10 facts, every relation in turn (max_facts): " \
        "cross-lingual-editing on 4." in page
    assert "subsample" not in saved["parts"][0]["experiments"]["injection"]
    # an earlier page's verdicts beside the new ones: the same study, every verdict unchanged
    (tmp_path / "earlier.md").write_text(page, encoding="utf-8")
    from tests.test_relation_evidence import row, summary  # a relation-neuron summary beside it

    sets = [row("full", None, -0.95, -0.55), row("fact", 0.5, -0.85, -0.05)]
    (tmp_path / "out" / "relation-neurons-tiny.json").write_text(json.dumps(
        {**summary(sets), "model": "tiny-llama"}))
    (tmp_path / "out" / "relation-neurons-other.json").write_text(json.dumps(
        {**summary(sets), "model": "other-model"}))  # another model's: not on this page
    again = write_results(tmp_path / "out" / "study.json", tmp_path / "again.md",
                          before=tmp_path / "earlier.md").read_text(encoding="utf-8")
    table = again.split("### Before and after the review (issue 20)")[1].split("\n## ")[0]
    reasons = [line.rsplit(" | ", 1)[1] for line in table.splitlines()
               if line.startswith("| C")]
    assert reasons and set(reasons) == {"unchanged |"}, table
    assert "## Fact neurons or relation neurons? (issue 25)" in again
    assert "(tiny-llama, bfloat16" in again and "other-model" not in again
    assert "## Fact neurons or relation neurons?" not in page  # none beside it then
    cost = study["parts"][0]["localization"]["amig"]["cost"]
    assert cost["fact_language_pairs"] == 12 and cost["mean_attribution_seconds"] > 0
    # the committed form: gzip-compressed, same bytes for the same study, rendered alike
    packed = tmp_path / "study.json.gz"
    first = write_json(packed, saved).read_bytes()
    first_size = (tmp_path / "out" / "study.json").stat().st_size
    assert write_json(packed, saved).read_bytes() == first and first[:2] == b"\x1f\x8b"
    assert len(first) < (tmp_path / "out" / "study.json").stat().st_size / 2
    page = write_results(packed, tmp_path / "R.md", refresh=True).read_text(encoding="utf-8")
    assert f"`{packed}`" in page and with_ci(paired["amig > ig"]["suppress_selectivity"]) in page
    refreshed = read_study(packed)  # refreshed statistics saved back, still compressed
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and "statistics_refreshed" in refreshed
    assert refreshed["parts"][0]["facts"] == saved["parts"][0]["facts"]
    # the committed form: no raw results, the same page, rendered again as saved
    slim = without_raw_results(refreshed)
    assert render(slim) == render(refreshed) and slim["raw_results"] is False
    assert not any("result" in e for p in slim["parts"] for e in p["experiments"].values())
    kept = write_json(tmp_path / "slim.json", slim)
    before = kept.read_bytes()
    write_results(kept, tmp_path / "S.md", refresh=True)
    assert kept.read_bytes() == before and len(before) < first_size
    # issue 21: another folder's own RESULTS.md (or a symlink) is never replaced; ours is
    foreign = tmp_path / "theirs.md"
    foreign.write_text("# my notes\n", encoding="utf-8")
    with pytest.raises(ValueError, match="theirs.md exists and was not written by mkn; choose"):
        write_results(kept, foreign)
    (tmp_path / "link.md").symlink_to(foreign)
    with pytest.raises(ValueError, match="link.md is a symbolic link"):
        write_results(kept, tmp_path / "link.md")
    assert foreign.read_text(encoding="utf-8") == "# my notes\n"
    write_results(kept, tmp_path / "S.md")  # mkn's own page: replaced


def test_claims_are_recomputed_without_a_planted_copyable_fact():
    """Issue 20: every claim on all items and without copyable items."""
    from mkn.experiments.headlines import refresh_headlines, without_copyable, without_facts

    items = [{"fact_id": f"f{i}", "ig": {"sr": 1.0}, "amig": {"sr": 2.0 if i else 0.5}}
             for i in range(6)]
    assert without_facts({"items": items, "methods": ["ig"]}, {"f0", "f1"}) == {
        "items": items[2:], "methods": ["ig"]}
    part = {"part": {"name": "p", "languages": ["en"]}, "facts": [i["fact_id"] for i in items],
            "knowledge": {"copyable_items": [["f0", "en"]]},
            "experiments": {"localization-quality": {"result": {"items": items}}},
            "localization": {"amig": {"upper_third_items": [["f0", 0.6], ["f1", -0.3],
                                                            ["f2", -0.3]]}}}
    study = refresh_headlines({"config": StudyConfig().model_dump(), "parts": [part]})
    experiment = study["parts"][0]["experiments"]["localization-quality"]
    assert experiment["headline"]["paired"]["amig > ig"]["value"] == pytest.approx(5 / 6)
    assert experiment["headline_without_copyable"]["paired"]["amig > ig"]["value"] == 1.0
    assert study["parts"][0]["copyable_facts"] == ["f0"]
    clean = without_copyable(study)["parts"][0]
    assert clean["experiments"]["localization-quality"]["headline"]["paired"][
        "amig > ig"]["n"] == 5
    assert clean["localization"]["amig"]["upper_third_excess"]["value"] == pytest.approx(-0.3)
    assert without_copyable({"parts": [{"experiments": {}}]}) is None  # an older study


def test_old_and_new_verdicts_come_with_a_reason():
    from mkn.report.results import CLAIMS, change_reason, claim_id, parse_claim_rows

    page = ("## Claims\n\n| claim | data | measured | verdict |\n|---|---|---|---|\n"
            f"| {CLAIMS[1].statement} | b17 | share (specificity: 0.6 [0.5, 0.7] (n=9)): "
            "0.429 [0.346, 0.5] (n=105) | disagrees |\n"
            "| AMIG: degenerate neurons check facts (F1), better than random | b17 | "
            "F1(DKN) - F1(random): 0.2 [0.1, 0.3] (n=16) | agrees |\n"
            "| Dai / AMIG: knowledge neurons sit in the upper layers (ig) | b17 | share in the "
            "upper third of layers: 0.19 | disagrees |\n")
    rows = parse_claim_rows(page)
    assert [claim_id(r["claim"]) for r in rows] == ["C2", "C5", "C10/ig"]
    nulls = {"C2": 0.5, "C5": 0.0, "C10": 0.0}
    now = ["C2", "b17", "share: 0.45 [0.4, 0.5] (n=105)", "inconclusive", "0.1", "0.3",
           "inconclusive"]
    assert "touches the null 0.5" in change_reason(rows[0], now, nulls, 3)
    holm = ["C5", "b17", "AUC(DKN) - AUC(random pairs): 0.1 [0.01, 0.2]", "agrees", "0.02",
            "0.06", "inconclusive after Holm"]
    assert change_reason(rows[1], holm, nulls, 3).startswith("tested now by AUC(DKN)")
    same = ["C2", "b17", "share: 0.3 [0.2, 0.45]", "disagrees", "0.01", "0.03", "disagrees"]
    assert change_reason(rows[0], same, nulls, 3) == "unchanged"
    held = ["C2", "b17", "share: 0.3 [0.2, 0.45]", "disagrees", "0.02", "0.06",
            "inconclusive after Holm"]
    assert change_reason({**rows[0], "measured": "x: 0.3 [0.2, 0.45]"}, held, nulls, 3
                         ).startswith("Holm's correction over the page's 3 claims")
    applicable = [*now[:-1], "not applicable (matrice found exactly amig's sets)"]
    assert "identical sets" in change_reason(rows[0], applicable, nulls, 3)
    assert change_reason(None, now, nulls, 3).startswith("new claim")
    layer = ["C10/ig", "b17", "share of an item's knowledge neurons: -0.1 [-0.2, -0.05]",
             "disagrees", "0.001", "0.003", "disagrees"]
    assert change_reason(rows[2], layer, nulls, 3).startswith("unchanged; tested now by")
    few = [*now[:-1], "untestable (the model knows too little here: 2 facts, fewer than 8)"]
    assert change_reason(rows[0], few, nulls, 3).startswith("now untestable")


def test_a_study_file_that_is_not_one_is_a_one_line_error(tmp_path):
    for name, content in (("broken.json.gz", b"\x1f\x8b\x08 not gzip"),
                          ("text.json", b"not json"), ("list.json", b"[1, 2]")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: not a study written by mkn reproduce"):
            read_study(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        read_study(tmp_path / "missing.json")


def test_limit_samples_two_per_relation():
    config = StudyConfig(limit=4)
    relations, per_relation, limit = config.sample(config.parts[0])
    assert (len(relations), per_relation, limit) == (2, 2, 4)
    assert StudyConfig().sample(config.parts[0])[2] is None
    with pytest.raises(ValueError):
        StudyConfig(limit=1)


@pytest.mark.real
def test_reproduce_smoke_on_gemma(tmp_path):
    """`mkn reproduce --limit 2` on gemma-3-270m and real data: every section, real numbers.

    Run on the "no native bf16" path on every CPU (``MKN_CPU_BF16=emulated``: ``--dtype auto``
    gives float32, as on an AVX2-only AMD EPYC), so the suite's time is the slow CPU's. Generic
    and relation neurons are kept: their reference samples (probing mLAMA until enough facts are
    known) would take most of the run; the tiny-model study above runs those paths."""
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "MKN_CPU_BF16": "emulated"}
    done = subprocess.run(
        [sys.executable, "-m", "mkn.cli", "reproduce", "--limit", "2", "--steps", "2",
         "--max-queries", "1", "--generic", "keep", "--relation-neurons", "keep", "--out",
         str(tmp_path / "study"),
         "--results", str(results), "--quiet"], capture_output=True, text=True, timeout=1800,
        env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dtype auto: float32 (MKN_CPU_BF16=emulated)" in done.stderr
    study = json.loads((tmp_path / "study" / "study.json").read_text(encoding="utf-8"))
    assert study["config"]["dtype"] == "float32" and "native bf16" in study["machine"]
    assert [len(p["facts"]) for p in study["parts"]] == [2, 2, 2]
    bmlama, mlama, symmetric = study["parts"]
    core = {"localization-quality", "cross-lingual-editing", "enhancement", "injection",
            "size-curves", "shared-sets"}
    assert core | {"fact-checking"} == set(bmlama["experiments"])
    assert core | {"audits"} == set(mlama["experiments"])
    assert set(symmetric["experiments"]) == {"audits"}
    items = mlama["experiments"]["localization-quality"]["result"]["items"]
    counts = mlama["knowledge"]["per_language"]
    assert sum(c["items"] for c in counts.values()) == 2 * 6
    assert len(items) == sum(c["known"] for c in counts.values())  # only known items measured
    page = results.read_text(encoding="utf-8")
    assert "mkn reproduce --limit 2" in page and "## 6. Cost" in page
    assert "Only knowledge the model has" in page and "selectivity" in page


def test_clustered_interval_resamples_facts():
    from mkn.experiments.metrics import clustered_interval

    pairs = [("a", 1.0), ("a", 1.0), ("a", 1.0), ("b", 0.0), ("c", 0.0)]
    entry = clustered_interval(pairs, lambda v: sum(v) / len(v))
    assert entry["value"] == 0.6 and entry["n"] == 5 and entry["facts"] == 3
    low, high = entry["ci95"]
    # resampling facts: a sample without "a" gives 0, one of only "a" gives 1
    assert low == 0.0 and high == 1.0
    assert clustered_interval([])["value"] is None


def test_unknown_experiment_in_a_part_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown experiment.*fact-check.*choose from"):
        DataPart(name="x", data="builtin", languages=["en"], relations=["P36"], per_relation=2,
                 experiments=["fact-check"])


def test_layer_statistic_per_item_and_identical_sets_are_detected():
    from types import SimpleNamespace as NS

    from mkn.jobs.study import same_sets, upper_third_excess

    def fact(fact_id, **sets):
        return NS(fact_id=fact_id, languages={lang: NS(neurons=n) for lang, n in sets.items()})

    result = fact("a", en=[(17, 1), (0, 2)], zh=[(12, 0)], fr=[])
    assert upper_third_excess(result, 18) == [("a", pytest.approx(0.5 - 1 / 3)),
                                              ("a", pytest.approx(1 - 1 / 3))]
    amig = {"a": fact("a", en=[(1, 2), (3, 4)])}
    matrice = {"a": fact("a", en=[(3, 4), (1, 2)])}
    other = {"a": fact("a", en=[(3, 4)])}
    assert same_sets({"amig": amig, "matrice": matrice}, "matrice", "amig")
    assert not same_sets({"amig": amig, "ig": other}, "ig", "amig")


def test_a_pilot_study_sizes_each_part_for_the_power_target(tmp_path):
    """Issue 26: from the committed study as the pilot, each part it ran gets the facts per
    relation its most demanding claim needs (capped), the plan is kept and RESULTS shows, per
    claim, the facts needed and whether this study measured that many."""
    from mkn.jobs.study import power_planned
    from mkn.report.power import claim_needs

    pilot = Path(__file__).parents[1] / "docs" / "results" / "study.json"
    config = StudyConfig(pilot=str(pilot), power=0.8, max_per_relation=12)
    sized, planned = power_planned(config)
    needs = {(r["claim"], r["part"]): r for r in planned["claims"]}
    c1 = needs[("C1", "bmlama17")]  # amig > ig: 0.571 [0.48, 0.658] on 32 facts
    assert c1["measured"] == 32 and 90 < c1["needed"] < 120
    assert all(r["needed"] is None or r["needed"] >= 8 for r in needs.values())  # MIN_FACTS
    bm = next(p for p in sized.parts if p.name == "bmlama17")
    assert bm.per_relation == 12  # capped: C4 needs over a thousand facts
    symmetric = next(p for p in sized.parts if p.name == "bmlama17 symmetric")
    wanted = max(r["to_sample"] for r in needs.values()
                 if r["part"] == "bmlama17 symmetric" and r["to_sample"])
    assert symmetric.per_relation == min(12, -(-wanted // 2))
    assert config.parts[0].per_relation == 4  # the config itself is left as it was
    # a part's own budget caps it below the study's; the other parts keep theirs
    parts = [p.model_copy(update={"max_per_relation": 3}) if p.name == "bmlama17" else p
             for p in config.parts]
    capped, own = power_planned(config.model_copy(update={"parts": parts}))
    assert [p.per_relation for p in capped.parts] == [
        3 if p.name == "bmlama17" else p.per_relation for p in sized.parts]
    assert own["cap_per_part"] == {"bmlama17": 3} and planned["cap_per_part"] == {}
    with pytest.raises(ValueError, match="max_per_relation"):
        DataPart(**{**parts[0].model_dump(), "max_per_relation": 0})
    # without a pilot the part's own budget caps its per_relation (4 -> 2), the others kept
    plain = StudyConfig(parts=[p.model_copy(update={"max_per_relation": 2})
                               if p.name == "bmlama17" else p for p in StudyConfig().parts])
    unplanned, nothing = power_planned(plain)
    assert nothing is None and plain.parts[0].per_relation == 4
    assert unplanned.parts[0].per_relation == 2 and unplanned.parts[1:] == plain.parts[1:]
    assert power_planned(StudyConfig()) == (StudyConfig(), None)
    # the page: the pilot's study, rendered with its plan, names the claims short of target
    study = read_study(pilot)
    study["power_plan"] = planned
    page = render(study)
    section = page.split("## Sample size: the power target of each claim")[1].split("\n## ")[0]
    assert f"`{pilot}`" in section and "| C1 | bmlama17 | 32 (of 32) |" in section
    assert "its own budget" not in section
    study["power_plan"] = own
    assert "at most 12; bmlama17: at most 3, its own budget (facts per relation: bmlama17 3," \
        in " ".join(render(study).split())
    here = {(r["claim"], r["part"]): r["measured"] for r in claim_needs(
        study, CLAIMS, MIN_FACTS)}
    assert here[("C1", "bmlama17")] == 32 and "C4 (bmlama17)" in section
    with pytest.raises(ValueError, match="pilot .*nope.json: not a readable study.json"):
        power_planned(StudyConfig(pilot=str(tmp_path / "nope.json")))


def test_reference_sample_sizes_are_study_knobs(monkeypatch):
    """A slow model's study can draw smaller reference samples: the sizes reach the list
    builders, and a size below the minimum for a meaningful list is refused up front."""
    from mkn.jobs import study as study_module

    seen = {}
    monkeypatch.setattr(study_module, "generic_lists",
                        lambda *a, **k: seen.setdefault("generic", k["facts"]))
    monkeypatch.setattr(study_module, "relation_lists",
                        lambda *a, **k: seen.setdefault("relations", k["per_relation"]))
    part = DataPart(name="x", data="builtin", languages=["en"], relations=["P36"],
                    per_relation=2, experiments=["audits"])
    config = StudyConfig(parts=[part], reference_facts=24, relation_reference_facts=3)
    study_module.part_generic_lists(None, part, config, {}, None, print, [])
    study_module.part_relation_lists(None, part, config, {}, None, print, [])
    assert seen == {"generic": 24, "relations": 3}
    defaults = StudyConfig(parts=[part])
    assert (defaults.reference_facts, defaults.relation_reference_facts) == (48, 6)
    with pytest.raises(ValueError, match="reference_facts"):
        StudyConfig(parts=[part], reference_facts=5)
    with pytest.raises(ValueError, match="relation_reference_facts"):
        StudyConfig(parts=[part], relation_reference_facts=1)


def test_subsample_takes_relations_in_turn_and_keeps_the_sample_order():
    from types import SimpleNamespace

    from mkn.jobs.study import subsample

    facts = [SimpleNamespace(id=f"{r}{i}", relation=r) for r, n in (("a", 5), ("b", 2), ("c", 1))
             for i in range(n)]
    assert [f.id for f in subsample(facts, 4)] == ["a0", "a1", "b0", "c0"]
    assert [f.id for f in subsample(facts, 6)] == ["a0", "a1", "a2", "b0", "b1", "c0"]
    assert subsample(facts, None) == facts and subsample(facts, 99) == facts
    with pytest.raises(ValueError, match="max_facts must be at least 1"):
        subsample(facts, 0)

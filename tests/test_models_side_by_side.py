"""Several models' claims side by side, and What we conclude (issue 26)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mkn.report.models import conclusions, side_by_side, verdict_class
from mkn.report.results import read_study, render, write_results

STUDY = Path(__file__).parents[1] / "docs" / "results" / "study.json"


def row(cid: str, part: str, after: str, p_holm: str = "0.01") -> list:
    return [cid, f"claim {cid}", part, "measured", after.split()[0], "0.01", p_holm, after]


def test_verdict_classes_and_the_claims_across_models():
    assert [verdict_class(v) for v in ("agrees", "inconclusive after Holm", "disagrees",
                                       "untestable (the model knows too little here: 3 facts)",
                                       "not applicable (matrice found exactly amig's sets)",
                                       "not measured", None)] == [
        "agrees", "inconclusive", "disagrees", "untestable", "not applicable", "untestable",
        "not run"]
    rows = {"gemma": [row("C1", "bm", "agrees"), row("C2", "bm", "agrees"),
                      row("C3", "bm", "disagrees"), row("C4", "bm", "inconclusive after Holm"),
                      row("C5", "bm", "untestable (3 facts)"), row("C6", "bm", "agrees")],
            "qwen": [row("C1", "bm", "agrees"), row("C2", "bm", "disagrees"),
                     row("C3", "bm", "inconclusive"), row("C4", "bm", "inconclusive"),
                     row("C5", "bm", "not measured"), row("C6", "bm", "untestable (2 facts)")]}
    table = side_by_side(rows)
    assert "| C1 | bm | agrees (0.01) | agrees (0.01) | agrees on both models |" in table
    assert "| C2 | bm | agrees (0.01) | disagrees (0.01) | gemma agrees; qwen disagrees |" \
        in table
    counted = side_by_side({**rows, "qwen": rows["qwen"][1:]},
                           {"gemma": {("C1", "bm"): {"measured": 55, "needed": 90}},
                            "qwen": {("C2", "bm"): {"measured": 16, "needed": None}}})
    assert "| C1 | bm | agrees (0.01; 55 / 90) | not run on this model " \
        "| agrees (one model ran it) |" in counted
    assert "| C2 | bm | agrees (0.01) | disagrees (0.01; 16 / -) |" in counted
    said = "\n".join(conclusions(rows))
    line = {key: next(x for x in said.splitlines() if x.startswith(f"- **{key}"))
            for key in ("Holds on every", "Holds on one", "Fails", "Split", "Cannot tell",
                        "Untestable")}
    assert "C1 (bm)" in line["Holds on every"] and "C6 (bm)" in line["Holds on one"]
    assert "C2 (bm)" in line["Split"] and "C3 (bm)" in line["Fails"]
    assert "C4 (bm)" in line["Cannot tell"] and "C5 (bm)" in line["Untestable"]
    assert "Do not rely on C2, C3:" in said


def test_a_second_models_study_is_rendered_beside_the_first(tmp_path):
    """The committed study beside a copy named as another model (the same verdicts): every
    tested claim reads the same on both, and the page says What we conclude."""
    study = read_study(STUDY)
    other = copy.deepcopy(study)
    other["config"]["model"] = "qwen2.5-coder-1.5b"
    path = tmp_path / "study-qwen.json"
    path.write_text(json.dumps(other), encoding="utf-8")
    page = write_results(STUDY, tmp_path / "R.md", beside=[path]).read_text(encoding="utf-8")
    section = page.split("## The claims on every model")[1].split("\n## ")[0]
    assert "gemma-3-270m: verdict after Holm" in section and "qwen2.5-coder-1.5b: verdict" \
        in section and f"`{path}`" in section
    cells = [line.strip(" |").split(" | ")[-1] for line in section.splitlines()
             if line.startswith("| C")]
    assert cells and all(c.endswith("on both models") for c in cells)
    assert "| **the whole study** |" in section and " facts, " in section  # wall times
    assert "## What we conclude" in page and "## What we conclude" in render(study)
    assert (f"regenerate it, numbers and verdicts of every model, with `mkn reproduce --render "
            f"{STUDY} --beside {path} --results {tmp_path / 'R.md'}`") in page
    partial = {**other, "complete": False}
    path.write_text(json.dumps(partial), encoding="utf-8")
    with pytest.raises(ValueError, match="study-qwen.json: the study is partial"):
        write_results(STUDY, tmp_path / "R2.md", beside=[path])


def test_a_models_study_in_two_pieces_is_one_column_and_one_holm_family():
    """One model's study run as two studies with disjoint parts (same setup) reads as that
    study: the same rows and Holm-corrected verdicts; another setup stays its own column."""
    from mkn.report.models import one_per_model
    from mkn.report.results import claims, models_sections, with_holm

    study = read_study(STUDY)
    qwen = copy.deepcopy(study)
    qwen["config"]["model"] = "qwen2.5-coder-1.5b"
    first = {**qwen, "parts": qwen["parts"][:-1], "minutes": 30.0, "source": "a.json"}
    second = {**qwen, "parts": qwen["parts"][-1:], "minutes": 4.0, "source": "b.json"}
    merged = one_per_model([study, first, second])
    assert len(merged) == 2 and merged[1]["source"] == "a.json + b.json"
    assert merged[1]["minutes"] == 34.0
    assert with_holm(claims(merged[1])) == with_holm(claims(qwen))
    other = {**second, "config": {**second["config"], "steps": 99}}
    assert len(one_per_model([study, first, other])) == 3
    whole = "\n".join(models_sections(study, [{**qwen, "source": "q.json"}]))
    pieces = "\n".join(models_sections(study, [first, second]))
    table = [line for line in whole.splitlines() if line.startswith("| C")]
    assert table and table == [line for line in pieces.splitlines() if line.startswith("| C")]


def test_caveats_and_wall_times_follow_each_models_study():
    """The model caveat names the study's model and the languages it knows little per part;
    the zero-baseline caveat follows the recorded architecture (a normalised FFN output; by the
    name for a study from before the record); the wall-time table lists each model's parts."""
    from mkn.report.models import wall_times
    from mkn.report.results import model_caveats

    study = read_study(STUDY)
    said = "\n".join(model_caveats(study))
    assert "gemma-3-270m (18 layers x 2048 FFN neurons)" in said
    assert "fi, hu, ja, ko in paraphrased-mlama-6" in said
    assert "normalised FFN output.** gemma-3-270m normalises" in said  # by name: not recorded
    other = copy.deepcopy(study)
    other["config"]["model"] = "qwen2.5-coder-1.5b"
    assert "normalised FFN output" not in "\n".join(model_caveats(other))
    other["model"]["normalises_ffn_output"] = True  # recorded: the architecture, not the name
    assert "normalised FFN output.** qwen2.5-coder-1.5b normalises" in "\n".join(
        model_caveats(other))
    study["model"]["normalises_ffn_output"] = False
    assert "normalised FFN output" not in "\n".join(model_caveats(study))
    table = wall_times({"gemma": study, "qwen": {**other, "parts": other["parts"][:1]}})
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "not run" in rows["paraphrased-mlama-6"] and "not run" not in rows["bmlama17"]
    assert f"{len(study['parts'][0]['facts'])} facts, " in rows["bmlama17"]

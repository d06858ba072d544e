"""``mkn export``: tidy tables that hold every neuron of neurons.jsonl."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from mkn.cli import app
from mkn.interventions.controls import ControlledEffect
from mkn.report.export import SCHEMAS, hook_name
from tests.test_report import fake_locate_run

runner = CliRunner()


def _neurons_of(run) -> set[tuple]:
    out = set()
    for line in (run / "neurons.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key, generic in (("neurons", False), ("generic", True)):
            for layer, index, score in record.get(key, []):
                out.add((record["fact_id"], record["language"], layer, index, score, generic))
    return out


def test_parquet_tables_round_trip_every_neuron(tmp_path):
    run = tmp_path / "run"
    fake_locate_run(run)
    result = runner.invoke(app, ["export", str(run), "--format", "parquet"])
    assert result.exit_code == 0, result.output
    neurons = pq.read_table(run / "export" / "neurons.parquet").to_pylist()
    assert {(r["fact_id"], r["language"], r["layer"], r["index"], r["score"], r["generic"])
            for r in neurons} == _neurons_of(run)
    assert len(neurons) == len(_neurons_of(run))
    assert all(r["hook"] == hook_name(r["layer"]) == f"blocks.{r['layer']}.mlp.hook_post"
               for r in neurons)
    shared = [r for r in neurons if r["language_agnostic"]]
    assert shared and all(r["soft_language_agnostic"] for r in shared)
    items = pq.read_table(run / "export" / "items.parquet").to_pylist()
    assert {(r["fact_id"], r["language"]) for r in items} >= {(r["fact_id"], r["language"])
                                                                for r in neurons}


def test_csv_tables_and_experiment_items_in_long_format(tmp_path):
    """Issue 22 item 11: experiment_items was wide, the language baked into column names
    (suppress_controls.en.effect), and the sets an experiment used were nowhere."""
    run = tmp_path / "run"
    fake_locate_run(run)
    (run / "experiments").mkdir()

    def effect(value: float) -> dict:
        return ControlledEffect.record("suppress", [(1, 3), (0, 2)], value, [0.1, -0.1],
                                       [-0.2], [[(1, 9), (0, 5)], [(1, 4), (0, 7)]]).to_dict()

    (run / "experiments" / "cross-lingual-editing.json").write_text(json.dumps({
        "setup": {"experiment": "cross-lingual-editing", "languages": ["en", "zh"]},
        "result": {"items": [{"fact_id": "a", "source": "en", "neurons": 2,
                              "suppress_controls": {"en": effect(-0.5), "zh": effect(-0.25)},
                              "targets": ["en", "zh"]}]}}))
    out = tmp_path / "tables"
    assert runner.invoke(app, ["export", str(run), "--format", "csv", "--out",
                               str(out)]).exit_code == 0
    with (out / "neurons.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(_neurons_of(run))
    with (out / "experiment_items.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(SCHEMAS["experiment_items"])
    assert not any("." in column for column in rows[0])  # nothing baked into column names
    effects = [r for r in rows if r["measure"] == "effect"]
    # per language: the set itself, two random draws and one unrelated fact
    assert [(r["language"], r["control"], r["draw"], r["value"]) for r in effects] == [
        (lang, control, draw, value) for lang, own in (("en", "-0.5"), ("zh", "-0.25"))
        for control, draw, value in (("none", "", own), ("random", "0", "0.1"),
                                     ("random", "1", "-0.1"), ("unrelated_fact", "0", "-0.2"))]
    assert {r["set"] for r in effects} == {"suppress_controls"}
    assert json.loads(effects[0]["neurons"]) == [[0, 2], [1, 3]]  # the set, sorted
    assert json.loads(effects[1]["neurons"]) == [[0, 5], [1, 9]]  # its first random draw
    others = {r["measure"]: (r["value"], r["text"]) for r in rows if r["measure"] != "effect"}
    assert others["source"] == ("", "en") and others["neurons"] == ("2.0", "")
    assert others["targets"] == ("", '["en", "zh"]')
    bad = runner.invoke(app, ["export", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not a run directory" in bad.output


def test_empty_tables_keep_their_columns(tmp_path):
    """Issue 22 item 5: an export of a probe-only run wrote tables with no columns."""
    run = tmp_path / "run"
    fake_locate_run(run)
    for fmt in ("parquet", "csv"):
        out = tmp_path / fmt
        assert runner.invoke(app, ["export", str(run), "--format", fmt, "--out",
                                   str(out)]).exit_code == 0
        path = out / f"experiment_items.{fmt}"
        if fmt == "parquet":
            table = pq.read_table(path)
            assert table.num_rows == 0
            assert table.schema.names == list(SCHEMAS["experiment_items"])
            assert str(table.schema.field("value").type) == "double"
        else:
            header = path.read_text(encoding="utf-8").splitlines()
            assert header == [",".join(SCHEMAS["experiment_items"])]
    neurons = pq.read_table(tmp_path / "parquet" / "neurons.parquet")
    assert set(SCHEMAS["neurons"]) == set(neurons.schema.names)


def test_export_shows_only_what_resume_keeps_and_never_overwrites_foreign_tables(tmp_path):
    """Issue 21: duplicated or unfinished records were exported; foreign tables overwritten;
    a folder that is not a run was written into."""
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    fake_locate_run(clean)
    fake_locate_run(damaged)
    lines = (damaged / "neurons.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    edited = json.loads(lines[0])
    edited["neurons"][0][2] = 12345.0  # an edited score: its fact is left out
    with (damaged / "neurons.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines([json.dumps(edited) + "\n", *lines[1:], lines[-1]])  # + a duplicate
        handle.write(json.dumps({**json.loads(lines[1]), "unit": "half", "fact_id": "half"})
                     + "\n")  # an unfinished fact
    for run in (clean, damaged):
        assert runner.invoke(app, ["export", str(run), "--format", "csv"]).exit_code == 0
    with (damaged / "export" / "neurons.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # what --resume would recompute is left out: the edited fact and the duplicated one
    dropped = {edited["fact_id"], json.loads(lines[-1])["fact_id"]}
    assert {r["fact_id"] for r in rows} == {json.loads(line)["fact_id"]
                                            for line in lines} - dropped != set()
    assert not any(r["score"] == "12345.0" for r in rows)
    with (clean / "export" / "neurons.csv").open(encoding="utf-8") as handle:
        kept = [r for r in csv.DictReader(handle) if r["fact_id"] not in dropped]
    assert rows == kept  # no duplicate, no unfinished fact
    # foreign tables are never replaced; mkn's own are
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "neurons.csv").write_text("my,table\n", encoding="utf-8")
    refused = runner.invoke(app, ["export", str(clean), "--format", "csv", "--out", str(theirs)])
    assert refused.exit_code == 2 and "was not written by mkn export" in refused.output
    assert (theirs / "neurons.csv").read_text(encoding="utf-8") == "my,table\n"
    assert sorted(p.name for p in theirs.iterdir()) == ["neurons.csv"]  # nothing else written
    again = runner.invoke(app, ["export", str(clean), "--format", "csv"])
    assert again.exit_code == 0, again.output  # its own tables, written again
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("x", encoding="utf-8")
    bad = runner.invoke(app, ["export", str(stranger)])
    assert bad.exit_code == 2 and "holds no mkn results" in bad.output
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]

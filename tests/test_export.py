"""``mkn export``: tidy tables that hold every neuron of neurons.jsonl."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from mkn.cli import app
from mkn.report.export import flatten, hook_name
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


def test_csv_tables_and_experiment_items(tmp_path):
    run = tmp_path / "run"
    fake_locate_run(run)
    (run / "experiments").mkdir()
    (run / "experiments" / "enhancement.json").write_text(json.dumps({
        "setup": {"experiment": "enhancement"}, "result": {"items": [
            {"fact_id": "a", "controls": {"enhance": {"selectivity": 0.5}}, "sizes": [1, 2]},
            {"fact_id": "b", "controls": {"enhance": {"selectivity": 1}}, "sizes": []}]}}))
    out = tmp_path / "tables"
    assert runner.invoke(app, ["export", str(run), "--format", "csv", "--out",
                               str(out)]).exit_code == 0
    with (out / "neurons.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(_neurons_of(run))
    with (out / "experiment_items.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["controls.enhance.selectivity"] == "0.5" and rows[0]["sizes"] == "[1, 2]"
    assert flatten({"a": {"b": 1}, "c": [1]}) == {"a.b": 1, "c": "[1]"}
    bad = runner.invoke(app, ["export", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not a run directory" in bad.output

"""``mkn export RUN``: a run's results as tidy tables (Parquet or CSV) for pandas and polars.

Tables (one file each, ``OUT/<table>.parquet`` or ``.csv``):

- ``neurons``: one row per (fact, language, knowledge neuron), per generic neuron left out
  (``generic`` true) and per relation neuron left out of the fact set (``relation_neuron``
  true: the fact's relation set, :mod:`mkn.localization.relations`): ``hook`` names the
  neuron the TransformerLens way (``blocks.{layer}.mlp.hook_post``) beside ``layer`` and
  ``index``, so the rows join with other tools' data; ``rank`` is the neuron's place in its
  set by score; ``language_agnostic`` / ``soft_language_agnostic`` say whether the fact's
  shared sets hold it.
- ``items``: one row per (fact, language) probed: known or not, by which criterion, the mean
  p(gold) of its queries, whether it was located and how many neurons it has.
- ``experiment_items`` (long): for each item of each experiment in ``RUN/experiments/`` (or
  the run itself when it is an experiment directory), one row per (language, set, control
  draw) of every intervention the item measured: ``set`` names the intervention without the
  language (``ig.suppress``, ``suppress_controls``, ``curves.amig.8.suppress``), ``control``
  is ``none`` (the set itself), ``random``, ``magnitude_matched``, ``unrelated_fact`` or
  ``same_relation_fact``, ``draw`` numbers the control, ``value`` is the relative change of
  p(gold) and ``neurons`` the set intervened on (JSON pairs, where recorded). The item's other
  fields are rows too (``control`` empty, ``measure`` their dotted name, ``value`` a number or
  ``text`` JSON).

Every table keeps its columns when it has no rows (a probe-only run exports empty ``neurons``
and ``experiment_items`` tables with their schema).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from mkn.models.families import hook_name
from mkn.report.data import run_records
from mkn.runs.directory import replace_via_temp, write_atomic
from mkn.runs.store import file_digest as file_sha256
from mkn.runs.store import read_jsonl

FORMATS = ("parquet", "csv")


RECORDS = ("neurons", "language_agnostic", "knowledge")  # the record files the tables read


def read_records(run: Path) -> dict[str, list[dict]]:
    """The record files of ``run`` the tables read, each once: for a locate or probe run, only
    what ``--resume`` would keep (:func:`mkn.report.data.run_records`); otherwise as written."""
    if (run / "done.jsonl").exists():
        return run_records(run, [])
    return {name: read_jsonl(run / f"{name}.jsonl") for name in RECORDS}


def neuron_rows(records: Mapping[str, list[dict]]) -> list[dict]:
    """``neurons`` table: every knowledge neuron and left-out generic neuron of the run
    (``records``: :func:`read_records`)."""
    agnostic = {}
    for record in records["language_agnostic"]:
        agnostic[record["fact_id"]] = ({tuple(n) for n in record.get("neurons", [])},
                                       {tuple(n) for n in record.get("soft_neurons", [])})
    rows = []
    for record in records["neurons"]:
        strict, soft = agnostic.get(record["fact_id"], (set(), set()))
        for generic, relation, key in ((False, False, "neurons"), (True, False, "generic"),
                                       (False, True, "relation_set")):
            for rank, (layer, index, score) in enumerate(record.get(key, []), 1):
                rows.append({
                    "fact_id": record["fact_id"], "relation": record["relation"],
                    "language": record["language"], "target": record["target"],
                    "known": bool(record.get("known", True)), "hook": hook_name(int(layer)),
                    "layer": int(layer), "index": int(index), "score": float(score),
                    "rank": rank, "generic": generic, "relation_neuron": relation,
                    "language_agnostic": (layer, index) in strict,
                    "soft_language_agnostic": (layer, index) in soft})
    return rows


def item_rows(records: Mapping[str, list[dict]]) -> list[dict]:
    """``items`` table: every (fact, language) the run probed (``records``:
    :func:`read_records`)."""
    located = records["neurons"]
    sizes = {(r["fact_id"], r["language"]): (len(r.get("neurons", [])), len(r.get("generic", [])))
             for r in located}
    probed = records["knowledge"] or [  # runs written before knowledge.jsonl
        {"fact_id": r["fact_id"], "relation": r["relation"], "language": r["language"],
         "object": r.get("target"), "known": r.get("known", True), "located": True,
         "queries": [{"p_gold": p} for p in r.get("probs", [])]} for r in located]
    rows = []
    for record in probed:
        queries = record.get("queries", [])
        probs = [q["p_gold"] for q in queries if q.get("p_gold") is not None]
        neurons, generic = sizes.get((record["fact_id"], record["language"]), (0, 0))
        rows.append({
            "fact_id": record["fact_id"], "relation": record["relation"],
            "language": record["language"], "object": record.get("object"),
            "known": bool(record.get("known")), "criterion": record.get("criterion"),
            "known_greedy": record.get("known_greedy"), "known_rank": record.get("known_rank"),
            "queries": len(queries),
            "mean_p_gold": sum(probs) / len(probs) if probs else None,
            "located": bool(record.get("located")), "neurons": neurons,
            "generic_left_out": generic})
    return rows


CONTROLS = (("none", "effect", None), ("random", "random", "random_sets"),
            ("magnitude_matched", "matched", "matched_sets"),
            ("unrelated_fact", "unrelated", None), ("same_relation_fact", "same_relation", None))
EXPERIMENT_COLUMNS = ("experiment", "item", "fact_id", "language", "set", "mode", "control",
                      "draw", "measure", "value", "text", "neurons")


def is_controlled_effect(value) -> bool:
    """A :meth:`mkn.interventions.controls.ControlledEffect.to_dict` record."""
    return isinstance(value, dict) and {"mode", "effect", "random", "unrelated"} <= set(value)


def _effect_rows(effect: dict) -> list[dict]:
    rows = []
    for control, key, sets_key in CONTROLS:
        values = [effect[key]] if control == "none" else list(effect.get(key) or [])
        sets = ([effect.get("set")] if control == "none" else
                list(effect.get(sets_key) or []) if sets_key else [])
        for draw, value in enumerate(values):
            neuron_set = sets[draw] if draw < len(sets) and sets[draw] else None
            rows.append({"mode": effect["mode"], "control": control,
                         "draw": None if control == "none" else draw, "measure": "effect",
                         "value": None if value is None else float(value),
                         "neurons": None if neuron_set is None else json.dumps(neuron_set)})
    return rows


def item_long_rows(item: dict, languages: set[str]) -> list[dict]:
    """One experiment item in long format (module docstring): the language found in a field's
    path moves to ``language``; controlled effects become one row per control draw."""
    rows: list[dict] = []
    base = {"fact_id": item.get("fact_id"), "language": item.get("language")}

    def walk(value, path: list[str], language) -> None:
        if is_controlled_effect(value):
            for row in _effect_rows(value):
                rows.append({**base, "language": language, "set": ".".join(path), **row})
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                key = str(key)
                if key in languages and language == base["language"]:
                    walk(inner, path, key)
                else:
                    walk(inner, [*path, key], language)
            return
        if path in (["fact_id"], ["language"]):
            return
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else (
            float(value) if isinstance(value, bool) else None)
        rows.append({**base, "language": language, "set": ".".join(path[:-1]) or None,
                     "mode": None, "control": None, "draw": None, "measure": path[-1],
                     "value": None if number is None else float(number),
                     "text": None if number is not None or value is None else (
                         value if isinstance(value, str) else json.dumps(value,
                                                                          ensure_ascii=False)),
                     "neurons": None})

    walk(item, [], base["language"])
    return rows


def experiment_rows(run: Path) -> list[dict]:
    """``experiment_items`` table (long, module docstring): every item of every experiment
    result found in the run."""
    folders = [run / "experiments", run]
    rows = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if not (isinstance(saved, dict) and isinstance(saved.get("result"), dict)):
                continue
            setup = saved.get("setup") if isinstance(saved.get("setup"), dict) else {}
            name = setup.get("experiment", path.stem)
            languages = set(setup.get("languages") or [])
            for number, item in enumerate(saved["result"].get("items", [])):
                if isinstance(item, dict):
                    for row in item_long_rows(item, languages):
                        rows.append({column: row.get(column) for column in EXPERIMENT_COLUMNS}
                                    | {"experiment": name, "item": number})
    return rows


# Each table's columns and Parquet types: an empty table keeps them.
SCHEMAS: dict[str, dict[str, str]] = {
    "neurons": {"fact_id": "string", "relation": "string", "language": "string",
                "target": "string", "known": "bool", "hook": "string", "layer": "int64",
                "index": "int64", "score": "float64", "rank": "int64", "generic": "bool",
                "relation_neuron": "bool", "language_agnostic": "bool",
                "soft_language_agnostic": "bool"},
    "items": {"fact_id": "string", "relation": "string", "language": "string",
              "object": "string", "known": "bool", "criterion": "string",
              "known_greedy": "bool", "known_rank": "bool", "queries": "int64",
              "mean_p_gold": "float64", "located": "bool", "neurons": "int64",
              "generic_left_out": "int64"},
    "experiment_items": {"experiment": "string", "item": "int64", "fact_id": "string",
                         "language": "string", "set": "string", "mode": "string",
                         "control": "string", "draw": "int64", "measure": "string",
                         "value": "float64", "text": "string", "neurons": "string"},
}


def _columns(rows: Iterable[dict], schema: Mapping[str, str] | None = None) -> list[str]:
    return list(dict.fromkeys([*(schema or {}), *(key for row in rows for key in row)]))


def _uniform(rows: list[dict]) -> list[dict]:
    """Every column of one type (Parquet needs it): ints among floats become floats; a column
    mixing other types becomes text."""
    columns = _columns(rows)
    kinds = {c: {type(row[c]) for row in rows if row.get(c) is not None} for c in columns}
    out = []
    for row in rows:
        fixed = {}
        for c in columns:
            value, kind = row.get(c), kinds[c]
            if value is not None and len(kind) > 1:
                if kind <= {int, float, bool} and bool not in kind:
                    value = float(value)
                else:
                    value = value if isinstance(value, str) else json.dumps(value)
            fixed[c] = value
        out.append(fixed)
    return out


def _write_parquet(rows: list[dict], path: Path, schema: Mapping[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows:
        table = pa.Table.from_pylist(_uniform(rows))
    else:
        table = pa.schema([(name, pa.type_for_alias(kind)) for name, kind in schema.items()
                           ]).empty_table()
    replace_via_temp(path, lambda tmp: pq.write_table(table, tmp))


def _write_csv(rows: list[dict], path: Path, schema: Mapping[str, str]) -> None:
    import io

    columns = _columns(rows, schema)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def export_run(run: str | Path, out: str | Path | None = None,
               fmt: str = "parquet") -> dict[str, Path]:
    """Write the run's tables into ``out`` (default ``RUN/export``); returns table -> path."""
    run = Path(run)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    if not run.is_dir():
        raise ValueError(f"{run} is not a run directory")
    if not any((run / name).exists() for name in ("neurons.jsonl", "experiments")) and not list(
            run.glob("*.json")):
        raise ValueError(f"{run} holds no mkn results (neurons.jsonl or experiment JSON)")
    out = Path(out) if out is not None else run / "export"
    records = read_records(run)
    tables = {"neurons": neuron_rows(records), "items": item_rows(records),
              "experiment_items": experiment_rows(run)}
    if not any(tables.values()):
        raise ValueError(f"{run} holds no mkn results (no records a resume would keep, no "
                         "experiment JSON): nothing exported")
    written = _written(out)
    for name in tables:  # every table checked before any is written
        path = out / f"{name}.{fmt}"
        if path.is_symlink() or (path.exists() and written.get(path.name) != file_sha256(path)):
            raise ValueError(f"{path} exists and was not written by mkn export (or was changed "
                             "since); choose another --out, or delete it yourself to have mkn "
                             "write it")
    out.mkdir(parents=True, exist_ok=True)
    writer = _write_parquet if fmt == "parquet" else _write_csv
    paths = {}
    for name, rows in tables.items():
        path = out / f"{name}.{fmt}"
        writer(rows, path, SCHEMAS[name])
        paths[name] = path
        written[path.name] = file_sha256(path)
        write_atomic(out / WRITTEN, json.dumps(written, indent=1) + "\n")
    return paths


WRITTEN = ".mkn-export.json"  # the tables mkn export wrote in a folder, with their SHA-256


def _written(out: Path) -> dict[str, str]:
    """The tables mkn export wrote into ``out`` (name -> SHA-256), from its record there."""
    try:
        record = json.loads((out / WRITTEN).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}

"""What the report reads from a run directory (:func:`load_run`): records, summary,
experiments; unreadable parts become notes, never errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkn.experiments import EXPERIMENTS
from mkn.localization.probe import PROBED
from mkn.localization.run import RECORD_FILES
from mkn.localization.stats import localization_stats
from mkn.report.blocks import RUN_FILES
from mkn.runs.directory import digest, read_manifest
from mkn.runs.store import read_jsonl, verified_units

# ----------------------------------------------------------------------------- run data


@dataclass
class Experiment:
    path: str  # relative to the run directory
    setup: dict
    result: dict

    @property
    def name(self) -> str:
        return str(self.setup.get("experiment", "unknown"))


@dataclass
class RunData:
    directory: Path
    config: dict | None = None
    neurons: list[dict] = field(default_factory=list)
    agnostic: list[dict] = field(default_factory=list)
    degenerate: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    knowledge: list[dict] = field(default_factory=list)
    summary: dict | None = None
    summary_note: str = ""
    experiments: list[Experiment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def has_locate(self) -> bool:
        return bool(self.neurons or self.agnostic or self.degenerate)


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path.name}: could not be read ({error})")
        return None


def _read_records(directory: Path, name: str, problems: list[str]) -> list[dict]:
    """The records of ``name``.jsonl as written (a run without done lines); an unreadable file
    becomes a problem and no records."""
    path = directory / f"{name}.jsonl"
    try:
        return read_jsonl(path)  # JSON objects only (anything else is an error)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problems.append(f"{path.name}: could not be read ({error})")
        return []


def read_manifest_quietly(directory: Path) -> dict | None:
    """The run's manifest, or None (missing or unreadable: the report notes other problems)."""
    try:
        return read_manifest(directory)
    except ValueError:
        return None


def run_records(directory: Path, problems: list[str],
                manifest: dict | None = None) -> dict[str, list[dict]]:
    """The records of a locate run that ``--resume`` would keep (:func:`verified_units`: done,
    whole, unedited, tensors unchanged), per record file; what is left out is counted in
    ``problems``. Every reader (report, export) shows these and only these. ``manifest``: the
    run's, when the caller has read it."""
    manifest = read_manifest_quietly(directory) if manifest is None else manifest
    probe_run = (manifest or {}).get("kind") == "probe"
    kept = verified_units(directory, (PROBED,) if probe_run else RECORD_FILES)
    if kept.dropped:
        problems.append(f"{len(kept.dropped)} facts left out: unfinished, or their records or "
                        "tensors changed since they were written (--resume recomputes them)")
    if probe_run:  # a probe stores its knowledge records as PROBED
        return {**{name: [] for name in RECORD_FILES}, "knowledge": kept.records(PROBED)}
    return {name: kept.records(name) for name in RECORD_FILES}


def _n_layers(data: RunData) -> int:
    configured = (data.config or {}).get("n_layers")
    if isinstance(configured, int) and configured > 0:
        return configured
    layers = [int(n[0]) for r in data.neurons for n in r.get("neurons", [])]
    layers += [int(n[0]) for r in data.agnostic
               for key in ("neurons", "soft_neurons") for n in r.get(key, [])]
    return 1 + max(layers, default=0)


def load_run(run_dir: Path) -> RunData:
    """Everything the report uses from ``run_dir``; unreadable parts become ``problems``."""
    directory = Path(run_dir)
    data = RunData(directory)
    problems = data.problems
    manifest = read_manifest_quietly(directory) or {}
    if (directory / "config.json").exists():
        config = _read_json(directory / "config.json", problems)
        data.config = config if isinstance(config, dict) else None
        written = (manifest.get("identity") or {}).get("config_digest")
        if data.config is not None and written is not None and digest(data.config) != written:
            problems.append("config.json was changed after the run wrote it: the settings "
                            "shown are the edited ones, not those the run used")
    if (directory / "done.jsonl").exists():  # a locate run: what --resume would keep
        records = run_records(directory, problems, manifest)
    else:  # records without done lines (written before them): read as they are
        records = {name: _read_records(directory, name, problems) for name in RECORD_FILES}
    data.neurons, data.agnostic, data.degenerate, data.timings, data.knowledge = (
        records[name] for name in ("neurons", "language_agnostic", "degenerate", "timings",
                                   "knowledge"))
    summary_path = directory / "summary.json"
    if summary_path.exists():
        summary = _read_json(summary_path, problems)
        if isinstance(summary, dict):
            data.summary = summary
    facts = {r.get("fact_id") for r in data.neurons}
    if data.summary is not None and data.neurons and data.summary.get("facts") != len(facts):
        data.summary_note = (f"summary.json counts {data.summary.get('facts')} facts but the "
                             f"records hold {len(facts)}: statistics recomputed from the records.")
        data.summary = None
    elif data.summary is None and data.neurons:
        data.summary_note = "No summary.json: statistics computed from the records."
    if data.summary is None and data.neurons:
        try:
            data.summary = localization_stats(data.neurons, data.agnostic, data.degenerate,
                                              _n_layers(data), data.timings, data.knowledge)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            problems.append(f"statistics could not be computed from the records ({error!r})")
    data.experiments = _load_experiments(directory, problems)
    return data


def _load_experiments(directory: Path, problems: list[str]) -> list[Experiment]:
    experiments = []
    for folder in (directory, directory / "experiments"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if folder == directory and path.name in RUN_FILES:
                continue
            content = _read_json(path, problems)
            relative = str(path.relative_to(directory))
            if not (isinstance(content, dict) and isinstance(content.get("setup"), dict)
                    and isinstance(content.get("result"), dict)):
                if content is not None:
                    problems.append(f"{relative}: not an experiment result (no setup/result), "
                                    "ignored")
                continue
            experiments.append(Experiment(relative, content["setup"], content["result"]))
    order = {name: i for i, name in enumerate(EXPERIMENTS)}
    return sorted(experiments, key=lambda e: (order.get(e.name, len(order)), e.path))



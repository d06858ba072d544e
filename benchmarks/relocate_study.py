"""Recompute a finished study's localization statistics from its stored attributions.

A study written before a localization statistic existed (e.g. the per-item layer values that the
claims without copyable items need) can get it without attributing again: every attribution the
study computed is in its run directory (``attributions.jsonl`` and ``scores/``, read here through
:func:`mkn.runs.store.verified_units`, exactly what ``--resume`` would keep). Per part, the
sample is drawn and probed again, the generic-neuron lists are taken from the cache (their
content digests must equal the ones the study recorded), every method locates from the stored
attributions, and :func:`mkn.jobs.study.layer_and_cost` runs with this code. The new
statistics replace the old only if the located sets are the same (every layer histogram equal);
the study's headlines are then recomputed (:func:`refresh_headlines`).

    .venv/bin/python benchmarks/relocate_study.py runs/reproduce/study.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mkn
from mkn.attribution.api import Attribution
from mkn.experiments.headlines import refresh_headlines
from mkn.jobs.study import (
    StudyConfig,
    layer_and_cost,
    locate_every_method,
    part_facts,
    part_generic_lists,
)
from mkn.localization.knowledge import known_items
from mkn.report.results import read_study
from mkn.runs.directory import run_date, write_json
from mkn.runs.store import ATTRIBUTIONS, verified_units


def stored_attributions(run: Path) -> dict:
    """``{cache key: Attribution}`` of every attribution a resume would keep in ``run``."""
    from safetensors.torch import load_file

    from mkn.runs.store import tensor_path

    cache = {}
    for record in verified_units(run, (ATTRIBUTIONS,)).records(ATTRIBUTIONS):
        unit = record.pop("unit")
        key = tuple(json.loads(unit.split("attribution:", 1)[1]))
        cache[key] = Attribution(**record, **load_file(str(tensor_path(run, unit))))
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the study.json of a run directory")
    args = parser.parse_args()
    study = read_study(args.study)
    config = StudyConfig(**study["config"])
    lm = mkn.load_model(config.model, dtype=config.dtype)
    cache = stored_attributions(args.study.parent)
    print(f"{len(cache)} stored attributions", flush=True)

    def task(title, total):
        return lambda item: None

    for part, saved in zip(config.parts, study["parts"], strict=True):
        facts = part_facts(part, config)
        assert [f.id for f in facts] == saved["facts"], part.name
        known = known_items(lm, facts, part.languages, config.known)
        generic = part_generic_lists(lm, part, config, cache, task, print,
                                     [f.id for f in facts])
        digests = generic.digests
        if saved.get("generic_digest") and digests != saved["generic_digest"]:
            raise SystemExit(f"{part.name}: generic lists differ from the study's "
                             f"({digests} vs {saved['generic_digest']})")
        located = locate_every_method(lm, facts, part.languages, config, dict(cache),
                                      lambda item: None, known, generic.lists)
        stats = layer_and_cost(located, lm.n_layers,
                               config.locate_config(config.experiment_method).agnostic_fraction)
        for method, new in stats.items():
            old = saved["localization"][method]
            for key in ("language_agnostic", "per_language"):
                if json.loads(json.dumps(new[key])) != old[key]:
                    raise SystemExit(f"{part.name}/{method}: {key} differs from the study's "
                                     f"({new[key]} vs {old[key]}): not the same sets, nothing "
                                     "written")
            new["cost"] = old["cost"]  # the study's own timings
        saved["localization"] = stats
        print(f"{part.name}: sets equal the study's; per-item layer values added", flush=True)
    refresh_headlines(study)
    study["localization_recomputed"] = {"by": "benchmarks/relocate_study.py",
                                        "on": run_date(), "sets": "equal to the study's"}
    write_json(args.study, study)
    print(f"written: {args.study}")


if __name__ == "__main__":
    main()

"""Issue 26: the speed-up of each throughput lever on a study part, and the numbers it changes.

Runs one part of the study (``mkn.jobs.study.run_part``, every experiment of it) on a small
sample once per configuration: every lever off (the study as it was), each lever on alone, and
every lever on. A lever is switched off by putting back what it replaced:

- ``dedupe``: a (query, intervention) row that several jobs share is scored once
  (:func:`mkn.interventions.controls.measure_sets`); off: every job's rows are scored;
- ``stagger``: rows of one input start at the lowest layer they change, from one clean pass
  (:func:`mkn.attribution.scoring.score_rows`); off: every row runs every block;
- ``clean-memo``: the clean predictions of enhancement and injection are computed once per
  query (:class:`mkn.experiments.common.CleanPredictions`); off: once per item;
- ``trace-positions``: causal tracing restores only the states the experiment reads, several
  layers per pass (:func:`mkn.localization.tracing.causal_trace` with ``at``); off: the full
  grid of every kind, one layer per pass (tracing-vs-neurons, localization-vs-editing);
- ``row-edits``: localization-vs-editing scores all of an item's edits as rows of one batched
  pass (:func:`mkn.interventions.weights.replace_object_rows`); off: each edit written into the
  weights and scored alone.

Per experiment: seconds in each configuration and the speed-up against "none"; and the largest
difference between any number of the experiment's result in that configuration and in "none"
(float tolerance: bfloat16 rows batched differently round differently). Reference lists are
built in the first configuration and cached for the others; locating is not timed.

    .venv/bin/python benchmarks/bench_levers.py --limit 6 --out runs/levers

``--study NAME`` runs the whole study instead (``mkn reproduce``'s settings, ``--limit`` and
``--relation-neurons`` as given) with the levers of configuration ``NAME`` into ``--out``: the
old-sample study with every lever off, to set beside ``mkn reproduce`` with them on
(``benchmarks/compare_studies.py``).

    .venv/bin/python benchmarks/bench_levers.py --study none --relation-neurons keep \
        --out runs/reproduce-levers-off
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import mkn
from mkn.attribution import scoring
from mkn.experiments import common
from mkn.interventions import controls
from mkn.jobs.study import StudyConfig, load_study_config, run_part
from mkn.models.devices import cpu_summary

LEVERS = ("dedupe", "stagger", "clean-memo", "trace-positions", "row-edits")


def edit_one_by_one(lm, edits, prompt: str, old: str, new: str):
    """:func:`mkn.experiments.localization_vs_editing.edit_scores` as it was: each edit
    written into the weights and its two queries scored alone."""
    from mkn.attribution.api import predict_many
    from mkn.interventions.weights import edited, replace_object

    def log(p: float) -> float:
        return math.log(max(p, 1e-30))

    scores = []
    for neurons in edits:
        with edited(replace_object(lm, neurons, prompt, old, new)):
            p_new, p_old = predict_many(lm, [(prompt, new), (prompt, old)])
        scores.append((log(p_new.prob), p_new.prob > p_old.prob))
    return log(predict_many(lm, [(prompt, new)])[0].prob), scores


def measure_every_row(lm, jobs, clean, factor: float = 2.0, positions: str = "all"):
    """:func:`~mkn.interventions.controls.measure_sets` without the dedupe: every job's rows."""
    encoded, interventions, owners = [], [], []
    for number, (neurons, mode, queries) in enumerate(jobs):
        intervention = controls.row_intervention(neurons, mode, factor)
        for query in queries:
            encoded.append(clean.encode(query))
            interventions.append(intervention)
            owners.append(number)
    before = clean([q for _, _, queries in jobs for q in queries])
    after = [p.prob for p in controls.score_rows(lm, encoded, interventions,
                                                 positions=positions)]
    changes: list[list[float]] = [[] for _ in jobs]
    for owner, b, a in zip(owners, before, after, strict=True):
        changes[owner].append(controls.relative_change(max(b, controls.MIN_PROB), a))
    return [statistics.fmean(c) for c in changes]


@contextlib.contextmanager
def levers_off(off: set[str]) -> Iterator[None]:
    """Put back what each lever in ``off`` replaced, for the duration of the block."""
    saved = []

    def swap(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    if "dedupe" in off:
        from mkn.experiments import (
            audits,
            cross_lingual_editing,
            localization_quality,
            size_curves,
        )
        for module in (controls, audits, cross_lingual_editing, localization_quality,
                       size_curves):
            swap(module, "measure_sets", measure_every_row)
    if "stagger" in off:
        swap(scoring, "_lowest_layer", lambda intervention, n_layers, edit=None: 0)
    if "clean-memo" in off:
        def uncached(self, asked):
            self.known.clear()
            return original(self, asked)

        original = common.CleanPredictions.__call__
        swap(common.CleanPredictions, "__call__", uncached)
    if "trace-positions" in off:
        from mkn.experiments import localization_vs_editing, tracing_vs_neurons
        from mkn.localization import tracing

        def full_grid(*args, kinds=tracing.KINDS, at=None, **kwargs):
            # tracing-vs-neurons traced every kind before (its "hidden" grid unused)
            kinds = tracing.KINDS if "attn" in kinds else kinds
            return tracing.causal_trace(*args, kinds=kinds, rows_per_pass=1, **kwargs)

        for module in (tracing_vs_neurons, localization_vs_editing):
            swap(module, "causal_trace", full_grid)
    if "row-edits" in off:
        from mkn.experiments import localization_vs_editing

        swap(localization_vs_editing, "edit_scores", edit_one_by_one)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def numbers(value, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON-like value, with its path."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        yield path, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{path}/{index}")


def largest_difference(a: dict, b: dict) -> tuple[float, str, int]:
    """The largest |a - b| over the numbers both results hold at the same path (wall-clock
    fields left out), where, and how many paths differ in what they hold."""
    x = {p: v for p, v in numbers(a) if "second" not in p}
    y = {p: v for p, v in numbers(b) if "second" not in p}
    worst, where = 0.0, ""
    for path in x.keys() & y.keys():
        d = abs(x[path] - y[path])
        if math.isnan(d) or d > worst:
            worst, where = (math.inf if math.isnan(d) else d), path
    return worst, where, len(x.keys() ^ y.keys())


def whole_study(lm, args) -> None:
    """The whole study with the levers of configuration ``args.study`` (module docstring)."""
    from mkn.jobs.study import run_study

    config = StudyConfig(model=args.model, dtype=str(lm.dtype).removeprefix("torch."),
                         limit=args.limit if args.limit else None,
                         relation_neurons=args.relation_neurons)
    on = set(LEVERS) if args.study == "all" else set() if args.study == "none" else {args.study}

    def task(label, total):
        started, last = time.perf_counter(), [0.0]

        def tick(item):
            now = time.perf_counter() - started
            if now - last[0] >= 30:
                last[0] = now
                print(f"  {label}: {item} ({now:.0f} s)", flush=True)
        return tick

    command = (f"benchmarks/bench_levers.py --study {args.study} --relation-neurons "
               f"{args.relation_neurons}" + (f" --limit {args.limit}" if args.limit else ""))
    with levers_off(set(LEVERS) - on):
        study = run_study(lm, config, args.out, task, command, say=print)
    print(f"{args.out / 'study.json'}: {study['minutes']:.1f} min with levers "
          f"{', '.join(sorted(on)) or 'none'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto", help="float32: bf16's batch-composition "
                        "rounding gone, the levers' numbers should agree to ~1e-5")
    parser.add_argument("--part", default="bmlama17")
    parser.add_argument("--limit", type=int, default=6, help="facts per part (0 with "
                        "--study: the whole sample)")
    parser.add_argument("--configs", default="none,dedupe,stagger,clean-memo,all",
                        help="comma-separated: none, a lever, all, all+gl4")
    parser.add_argument("--out", type=Path, default=Path("runs/levers"))
    parser.add_argument("--study", choices=["none", *LEVERS, "all"])
    parser.add_argument("--relation-neurons", default="keep", choices=["auto", "keep"])
    parser.add_argument("--generic", default="auto", choices=["auto", "keep"])
    parser.add_argument("--config", type=Path, help="a study YAML (default: mkn reproduce's "
                        "own parts); --part names one of its parts")
    parser.add_argument("--experiments", help="comma-separated: only these of the part's")
    args = parser.parse_args()
    print(cpu_summary(), flush=True)
    lm = mkn.load_model(args.model, dtype=args.dtype)
    if args.study:
        whole_study(lm, args)
        return
    settings = dict(model=args.model, dtype=str(lm.dtype).removeprefix("torch."),
                    limit=args.limit, relation_neurons=args.relation_neurons,
                    generic=args.generic)
    config = load_study_config(args.config, **settings) if args.config else StudyConfig(
        **settings)
    part = next(p for p in config.parts if p.name == args.part)
    if args.experiments:
        part = part.model_copy(update={"experiments": args.experiments.split(",")})
    args.out.mkdir(parents=True, exist_ok=True)

    def task(label, total):
        started = time.perf_counter()
        print(f"{label}: {total} steps", flush=True)
        return lambda item: print(f"  {label}: {item} ({time.perf_counter() - started:.0f} s)",
                                  flush=True)

    results = {}
    for name in args.configs.split(","):
        on = set(LEVERS) if name.startswith("all") else set() if name == "none" else {name}
        # all+gl4: every lever and 4 Gauss-Legendre nodes in place of 12 left ones (a setting:
        # its numbers move with the sets it finds, not within float tolerance)
        settings = config.model_copy(update={"rule": "gauss-legendre", "steps": 4}) \
            if name == "all+gl4" else config
        with levers_off(set(LEVERS) - on):
            out = run_part(lm, part, settings, task)
        results[name] = out
        (args.out / f"{name}.json").write_text(json.dumps(out, default=str))
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in out["seconds"].items()),
              flush=True)
    names = list(results)
    print(f"\n{lm.name}, {str(lm.dtype).removeprefix('torch.')}, part {args.part}, "
          f"--limit {args.limit}; {cpu_summary()}\n")
    print("| experiment | " + " | ".join(f"{n} (s)" for n in names) + " | "
          + " | ".join(f"speed-up {n}" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|---|")
    experiments = [k for k in results[names[0]]["seconds"] if k != "locate"]
    for experiment in [*experiments, "total"]:
        seconds = [sum(v for k, v in results[n]["seconds"].items() if k != "locate")
                   if experiment == "total" else results[n]["seconds"][experiment]
                   for n in names]
        print(f"| {experiment} | " + " | ".join(f"{s:.0f}" for s in seconds) + " | "
              + " | ".join(f"{seconds[0] / s:.2f}x" for s in seconds[1:]) + " |")
    print("\nLargest difference of any number against 'none' (value, where):\n")
    for n in names[1:]:
        for experiment in experiments:
            worst, where, differ = largest_difference(
                results[names[0]]["experiments"][experiment]["result"],
                results[n]["experiments"][experiment]["result"])
            print(f"- {n}, {experiment}: {worst:.3g} at {where or '-'}"
                  + (f"; {differ} paths differ" if differ else ""))


if __name__ == "__main__":
    main()

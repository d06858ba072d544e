"""Where a run's time goes, from a py-spy profile (issue 26's first step).

Reads the collapsed stacks of ``py-spy record -f raw`` (one ``frame;frame;... count`` line per
distinct stack, sampled at ``--rate`` Hz) and prints two tables: the time per *phase* (building
the reference lists, each experiment, probing and locating the run's facts) and per *kind of
work* (the innermost mkn module on the stack: forward scoring, IG passes, interventions,
tracing, data, ...), each in seconds and
as a share of all samples of the main thread.

    .venv/bin/py-spy record -r 10 -f raw -o runs/profile-study.raw -- \\
        .venv/bin/mkn reproduce --limit 16 --out runs/profile-study --results runs/p.md
    .venv/bin/python benchmarks/profile_summary.py runs/profile-study.raw --rate 10
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"\((?:[^()]*/)?(mkn/[\w/]+)\.py:\d+\)")
KINDS = {"attribution/scoring": "forward scoring (probes, interventions, clean runs)",
         "attribution/": "IG passes (engine, baselines)", "interventions/": "interventions",
         "localization/tracing": "causal tracing", "localization/": "localization (other)",
         "experiments/": "experiment code", "data/": "data loading",
         "models/": "model code (hooks, loading)", "report/": "report",
         "runs/": "run directory I/O", "jobs/": "study driver"}


def modules(stack: str) -> list[str]:
    """The mkn modules on a stack, outermost first (``mkn/experiments/injection``)."""
    return [m.removeprefix("mkn/") for m in FRAME.findall(stack)]


def phase_of(found: list[str]) -> str:
    """The study phase of a stack: building a reference list (generic or relation neurons:
    probing and locating its sample), an experiment, probing or locating the run's facts."""
    if "localization/reference" in found:
        return "reference lists (probe + locate their samples)"
    experiments = [m for m in found if m.startswith("experiments/")
                   and m not in ("experiments/common", "experiments/metrics")]
    if experiments:
        return experiments[0].removeprefix("experiments/")
    if "localization/knowledge" in found:
        return "probing the run's facts"
    if "localization/locate" in found:
        return "locating the run's facts"
    return "other" if found else "outside mkn (start-up, imports)"


def kind_of(found: list[str]) -> str:
    """The innermost mkn package on the stack: the kind of work the sample was doing."""
    if not found:
        return "outside mkn (start-up, imports)"
    if "attribution/scoring" in found:  # scored rows may run in the engine's staggered blocks
        return KINDS["attribution/scoring"]
    for prefix, name in KINDS.items():
        if found[-1].startswith(prefix):
            return name
    return found[-1]


def summarize(lines: list[str]) -> tuple[Counter, Counter, int]:
    phases: Counter = Counter()
    kinds: Counter = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        found = modules(stack)
        phases[phase_of(found)] += n
        kinds[kind_of(found)] += n
        total += n
    return phases, kinds, total


def table(counts: Counter, total: int, rate: float, title: str) -> str:
    rows = [f"| {name} | {n / rate:.0f} | {100 * n / total:.1f}% |"
            for name, n in counts.most_common()]
    return "\n".join([f"| {title} | seconds | share |", "|---|---|---|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy's sampling rate (Hz)")
    args = parser.parse_args()
    phases, kinds, total = summarize(args.profile.read_text(encoding="utf-8").splitlines())
    if not total:
        raise SystemExit(f"{args.profile}: no samples (not a py-spy -f raw profile?)")
    print(f"{total} samples, {total / args.rate / 60:.1f} min sampled\n")
    print(table(phases, total, args.rate, "phase"))
    print()
    print(table(kinds, total, args.rate, "kind of work"))


if __name__ == "__main__":
    main()

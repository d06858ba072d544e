"""Two runs of the same study side by side: wall time per part and phase, and what changed.

For issue 26's "the same study, at least 3x faster, its numbers unchanged": ``BEFORE`` and
``AFTER`` are ``study.json`` files of the same configuration and sample (checked), e.g. every
lever off (``benchmarks/bench_levers.py --study none``) and ``mkn reproduce``. Prints

- seconds per part and phase in each, and the speed-up;
- per experiment, the largest |difference| of any headline number (intervals, p-values,
  shares) and where, and how many headline numbers differ by more than ``--tolerance``;
- every claim whose verdict (after Holm) differs.

With ``--grown`` the two studies may have different samples (the same config at a larger n, e.g.
``study-powered.yaml`` and ``study-powered-150.yaml``): headline numbers are then not compared;
every claim is listed with the facts it was measured on and its verdict after Holm in each.

    .venv/bin/python benchmarks/compare_studies.py runs/reproduce-levers-off/study.json \\
        runs/reproduce-levers-on/study.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_levers import largest_difference, numbers  # noqa: E402  (benchmarks/ on the path)
from mkn.report import power
from mkn.report.results import CLAIMS, MIN_FACTS, claims, read_study, with_holm


def phase_rows(before: dict, after: dict) -> list[list[str]]:
    rows, total = [], [0.0, 0.0]
    for a, b in zip(before["parts"], after["parts"], strict=True):
        for phase, seconds in a["seconds"].items():
            other = b["seconds"].get(phase)
            rows.append([a["part"]["name"], phase, f"{seconds:.0f}",
                         "-" if other is None else f"{other:.0f}",
                         "-" if not other else f"{seconds / other:.2f}x"])
            total[0] += seconds
            total[1] += other or 0.0
    rows.append(["all", "total (sum of phases)", f"{total[0]:.0f}", f"{total[1]:.0f}",
                 f"{total[0] / total[1]:.2f}x"])
    return rows


def grown_rows(before: dict, after: dict) -> str:
    """Per claim and part: the facts sampled and measured and the verdict after Holm in each
    study (a markdown table), then how many verdicts changed."""
    def measured(study: dict) -> dict:
        return {(n["claim"], n["part"]): n["measured"]
                for n in power.claim_needs(study, CLAIMS, MIN_FACTS)}

    old, new = with_holm(claims(before)), with_holm(claims(after))
    n_old, n_new = measured(before), measured(after)
    facts = {p["part"]["name"]: (len(b["facts"]), len(p["facts"]))
             for b, p in zip(before["parts"], after["parts"], strict=True)}
    by_key = {(row[0], row[2]): row for row in old}
    lines = ["| claim | part | facts (before -> after) | measured on | verdict before | "
             "verdict after |", "|---|---|---|---|---|---|"]
    changed = 0
    for row in new:
        key = (row[0], row[2])
        was = by_key.get(key)
        changed += was is None or was[-1].split(" (")[0] != row[-1].split(" (")[0]  # not counts
        lines.append(f"| {row[0]} | {row[2]} | {facts[row[2]][0]} -> {facts[row[2]][1]} | "
                     f"{n_old.get(key, '-')} -> {n_new.get(key, '-')} | "
                     f"{'-' if was is None else was[-1]} | {row[-1]} |")
    return "\n".join(["", *lines, "", f"Verdicts after Holm: {len(new) - changed} of {len(new)} "
                                       "unchanged (a verdict's counts in parentheses aside)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--grown", action="store_true",
                        help="the same parts on different samples: compare verdicts and n only")
    args = parser.parse_args()
    before, after = read_study(args.before), read_study(args.after)
    if [p["part"]["name"] for p in before["parts"]] != [p["part"]["name"] for p in after["parts"]]:
        raise SystemExit("the two studies have different parts: not the same study")
    if [p["facts"] for p in before["parts"]] != [p["facts"] for p in after["parts"]] \
            and not args.grown:
        raise SystemExit("the two studies have different samples: not the same study "
                         "(--grown compares their verdicts and facts measured)")
    print(f"before: {args.before} ({before['minutes']:.1f} min), after: {args.after} "
          f"({after['minutes']:.1f} min): {before['minutes'] / after['minutes']:.2f}x; "
          f"machine: {after.get('machine')}\n")
    print("| part | phase | before (s) | after (s) | speed-up |\n|---|---|---|---|---|")
    for row in phase_rows(before, after):
        print("| " + " | ".join(row) + " |")
    if args.grown:
        print(grown_rows(before, after))
        return
    print(f"\nHeadline numbers per experiment (largest |difference|; numbers that differ by "
          f"more than {args.tolerance:g}):\n")
    for a, b in zip(before["parts"], after["parts"], strict=True):
        for name, experiment in a["experiments"].items():
            old, new = experiment.get("headline", {}), b["experiments"][name].get("headline", {})
            worst, where, _ = largest_difference(old, new)
            x, y = dict(numbers(old)), dict(numbers(new))
            over = sum(abs(x[p] - y[p]) > args.tolerance for p in x.keys() & y.keys())
            print(f"- {a['part']['name']}, {name}: {worst:.3g} at {where or '-'}; {over} of "
                  f"{len(x.keys() & y.keys())} over the tolerance")
    old_rows, new_rows = with_holm(claims(before)), with_holm(claims(after))
    changed = [(o[0], o[2], o[-1], n[-1]) for o, n in zip(old_rows, new_rows, strict=True)
               if o[-1] != n[-1]]
    print(f"\nVerdicts after Holm: {len(old_rows) - len(changed)} of {len(old_rows)} unchanged"
          + "".join(f"\n- {c} ({part}): {o} -> {n}" for c, part, o, n in changed))


if __name__ == "__main__":
    main()

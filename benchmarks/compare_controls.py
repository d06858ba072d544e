"""Side-by-side controls of several models (issue 24): the saved ``--json`` results of
``bench_controls.py`` runs, known items, per method, set (generic neurons left out or kept)
and intervention: own p(gold), random sets, facts of other relations and of the same relation,
each a median with its bootstrap 95% interval over facts, and whether the target holds (own
p(gold) drops >= 80% and other-relation facts move <= 15%, medians).

    .venv/bin/python benchmarks/compare_controls.py runs/controls-gemma-rel-bm-4per.json \\
        runs/controls-qwen15-bm.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from mkn.experiments.common import control_summary, fmt_ci, markdown_table

OWN, OTHER = -0.80, 0.15  # the target: own drop >= 80%, other relations within 15% (medians)
SETS = {"left out": "generic left out", "kept": "generic kept"}


def rows_of(result: dict) -> list[list]:
    """One line per (method, set, intervention) of the known items of one run."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in result["rows"]:
        if row.get("kind") != "edit" and row["known"] and row["generic"] in SETS:
            groups[row["method"], row["generic"], row["mode"]].append(row)
    lines = []
    for (method, variant, mode), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][0], list(SETS).index(kv[0][1]),
                                            kv[0][2] != "suppress")):
        s = control_summary([(r["fact_id"], r) for r in rows])
        target = ""
        if mode == "suppress":
            own, other = s["effect"]["value"], s["unrelated_moved"]["value"]
            target = "yes" if own <= OWN and other <= OTHER else "no"
        lines.append([f"{result['model']} ({result['dtype']})", method, SETS[variant], mode,
                      f"{len({r['fact_id'] for r in rows})}/{len(rows)}",
                      fmt_ci(s["effect"]), fmt_ci(s["random_effect"]),
                      fmt_ci(s["unrelated_effect"]), fmt_ci(s["unrelated_moved"]),
                      fmt_ci(s["same_relation_effect"]), target])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="bench_controls.py --json files")
    args = parser.parse_args()
    lines = []
    for path in args.results:
        result = json.loads(path.read_text(encoding="utf-8"))
        if "rows" not in result or "model" not in result:
            raise SystemExit(f"{path}: not a bench_controls.py --json result")
        print(f"{path}: {result['model']}, {result['data']}, {len(result['facts'])} held-out "
              f"facts ({result['left_out_in_reference']} sampled facts left out: in the "
              f"reference sample), {result['seconds'] / 60:.1f} min; "
              f"{result.get('command', '')}")
        lines += rows_of(result)
    print()
    print(markdown_table(["model", "method", "set", "intervention", "facts/items",
                          "own p(gold) [95% CI]", "random set [95% CI]",
                          "unrelated facts [95% CI]", "unrelated |change| [95% CI]",
                          "same-relation facts [95% CI]", "target met"], lines))


if __name__ == "__main__":
    main()

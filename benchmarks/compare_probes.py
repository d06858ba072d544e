"""Side-by-side probe tables of several models on the same sample (issue 24).

Reads the ``knowledge.jsonl`` of ``mkn probe`` runs (same data, same facts: checked) and prints,
per language, each model's known items (the default criterion: gold first among the candidates
where the data has them, else greedy decoding), by rank, by greedy decoding and the copyable
ones among the known (gold object written in the prompt), then the totals and how many
languages have at least ``--enough`` known facts (what a study part needs).

    .venv/bin/python benchmarks/compare_probes.py runs/probe-bm17-balanced-gemma-3-270m \\
        runs/probe-bm17-balanced-qwen2.5-coder-0.5b runs/probe-bm17-balanced-qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def read_run(run: Path) -> tuple[str, list[dict]]:
    """(model name, item records) of one probe run directory."""
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run / "knowledge.jsonl").read_text(
        encoding="utf-8").splitlines() if line.strip()]
    return config.get("model", run.name), rows


def per_language(rows: list[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        c = counts[row["language"]]
        c["items"] += 1
        c["known"] += bool(row["known"])
        c["rank"] += bool(row.get("known_rank"))
        c["greedy"] += bool(row.get("known_greedy"))
        c["copyable_known"] += bool(row["known"] and row.get("copyable"))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--enough", type=int, default=30,
                        help="known facts a language needs to count as testable")
    args = parser.parse_args()
    runs = [read_run(run) for run in args.runs]
    samples = {frozenset((r["fact_id"], r["language"]) for r in rows) for _, rows in runs}
    if len(samples) != 1:
        raise SystemExit("the runs probed different samples; compare runs of one sample")
    counts = {model: per_language(rows) for model, rows in runs}
    languages = sorted({lang for c in counts.values() for lang in c})
    models = list(counts)
    print("| language | " + " | ".join(f"{m}: known (rank / greedy; copyable)" for m in models)
          + " |")
    print("|---|" + "---|" * len(models))
    for lang in languages:
        cells = []
        for model in models:
            c = counts[model][lang]
            cells.append(f"{c['known']}/{c['items']} ({c['rank']} / {c['greedy']}; "
                         f"{c['copyable_known']})")
        print(f"| {lang} | " + " | ".join(cells) + " |")
    totals = []
    for model in models:
        known = sum(c["known"] for c in counts[model].values())
        items = sum(c["items"] for c in counts[model].values())
        copy = sum(c["copyable_known"] for c in counts[model].values())
        greedy = sum(c["greedy"] for c in counts[model].values())
        totals.append(f"{known}/{items} ({100 * known / items:.0f}%; greedy {greedy}; "
                      f"copyable {copy})")
    print("| all | " + " | ".join(totals) + " |")
    testable = [str(sum(c["known"] >= args.enough for c in counts[m].values())) for m in models]
    print(f"| languages with >= {args.enough} known | " + " | ".join(testable) + " |")


if __name__ == "__main__":
    main()

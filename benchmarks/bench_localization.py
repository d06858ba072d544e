"""Localization on the real model and real data: statistics and cost per fact and language.

Runs ``mkn locate`` (the Python API) on gemma-3-270m for N facts of
- paraphrased-mlama-6 (all 6 languages) and
- bmlama17 (en + zh),
and prints, per dataset: knowledge neurons per language (how many facts the model knows, mean
count, layer distribution), cross-language overlap, language-agnostic and degenerate neurons, and
the cost in seconds per fact and language. Results stay in ``--out`` (resumable).

Usage: ``python benchmarks/bench_localization.py [--limit 20] [--steps 20] [--max-queries 3]
[--method amig] [--out runs/bench-localization] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mkn
from mkn.data import load_facts
from mkn.localization.locate import LocateConfig
from mkn.localization.run import run_locate

DATASETS = {
    "paraphrased-mlama-6": ("mlama:paraphrased-mlama-6", ["en", "fr", "fi", "hu", "ja", "ko"]),
    "bmlama17-en-zh": ("bmlama:bmlama17", ["en", "zh"]),
}


def _print_summary(name: str, summary: dict, wall: float) -> None:
    print(f"\n== {name}: {summary['facts']} facts, {wall / 60:.1f} min wall")
    print(f"{'lang':<6}{'known':>8}{'mean KN':>9}  neurons by layer")
    for lang, s in summary["per_language"].items():
        print(f"{lang:<6}{s['known']:>5}/{s['facts']:<3}{s['mean_neurons']:>8.1f}  "
              f"{s['layer_histogram']}")
    langs = summary["languages"]
    print("overlap (mean Jaccard)  " + " ".join(f"{b:>5}" for b in langs))
    for a in langs:
        print(f"{a:<24}" + " ".join(f"{summary['overlap_jaccard'][a][b]:>5.2f}" for b in langs))
    agnostic = summary["language_agnostic"]
    print(f"language-agnostic: {agnostic['facts_with_any']} facts with any, mean "
          f"{agnostic['mean_neurons']:.2f} strict / {agnostic['mean_soft_neurons']:.2f} soft; "
          f"by layer {agnostic['layer_histogram']} (soft {agnostic['soft_layer_histogram']})")
    d = summary["degenerate"]
    print(f"degenerate: pairs in {d['with_pairs']}/{d['records']} fact-languages, mean "
          f"{d['mean_pairs']:.2f} pairs")
    c = summary["cost"]
    print(f"cost: {c['mean_seconds']:.1f} s mean, {c['median_seconds']:.1f} s median per fact "
          f"and language ({c['fact_language_pairs']} pairs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-queries", type=int, default=3)
    parser.add_argument("--method", default="amig")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-localization"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lm = mkn.load_model(args.model)
    config = LocateConfig(method=args.method, steps=args.steps, max_queries=args.max_queries)
    results = {}
    for name in args.datasets.split(","):
        spec, languages = DATASETS[name]
        facts = load_facts(spec, languages, limit=args.limit)
        print(f"{name}: {facts.summary()}", flush=True)
        start = time.perf_counter()
        done: list[str] = []
        total = len(facts)

        def tick(fact_id: str, done=done, total=total) -> None:
            done.append(fact_id)
            print(f"  {len(done)}/{total} {fact_id}", flush=True)

        summary = run_locate(lm, facts, languages, config, args.out / name, resume=True,
                             meta={"model": args.model, "data": spec, "limit": args.limit},
                             on_fact=tick)
        wall = time.perf_counter() - start
        _print_summary(name, summary, wall)
        results[name] = {"summary": summary, "wall_seconds": wall,
                         "config": config.model_dump()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

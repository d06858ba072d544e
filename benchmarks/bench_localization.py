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
from mkn.models.devices import cpu_summary

DATASETS = {
    "paraphrased-mlama-6": ("mlama:paraphrased-mlama-6", ["en", "fr", "fi", "hu", "ja", "ko"]),
    "bmlama17-en-zh": ("bmlama:bmlama17", ["en", "zh"]),
}


def summary_markdown(name: str, spec: str, summary: dict, config: dict, model: str) -> str:
    """Markdown tables of one dataset's localization statistics (from the run's records)."""
    langs = summary["languages"]
    lines = [f"### {name}", "",
             f"`{spec}`, {summary['facts']} facts x {len(langs)} languages, model {model}, "
             f"method {config['method']}, {config['steps']} steps, rule {config['rule']}, "
             f"at most {config['max_queries']} queries per language, thresholds: AMIG defaults "
             f"(en 0.3, others 0.2), refinement p = {config['refine_p']}.", "",
             "| language | facts known | mean knowledge neurons | neurons by layer (sum) |",
             "|---|---|---|---|"]
    for lang, s in summary["per_language"].items():
        lines.append(f"| {lang} | {s['known']}/{s['facts']} | {s['mean_neurons']:.1f} | "
                     f"{' '.join(map(str, s['layer_histogram']))} |")
    lines += ["", "Overlap of the languages' knowledge-neuron sets (mean Jaccard over facts):",
              "", "| | " + " | ".join(langs) + " |", "|---" * (len(langs) + 1) + "|"]
    for a in langs:
        lines.append(f"| {a} | " + " | ".join(f"{summary['overlap_jaccard'][a][b]:.2f}"
                                             for b in langs) + " |")
    agnostic, d, c = summary["language_agnostic"], summary["degenerate"], summary["cost"]
    lines += [
        "",
        f"- language-agnostic neurons (in every language): {agnostic['facts_with_any']}/"
        f"{summary['facts']} facts have some, mean {agnostic['mean_neurons']:.2f} per fact; "
        f"by layer {agnostic['layer_histogram']}",
        f"- soft (in at least half the languages): mean {agnostic['mean_soft_neurons']:.2f} per "
        f"fact; by layer {agnostic['soft_layer_histogram']}",
        f"- degenerate pairs: found in {d['with_pairs']}/{d['records']} fact-languages, mean "
        f"{d['mean_pairs']:.2f} pairs",
        f"- cost per fact and language (attribution of every query + degenerate search): mean "
        f"{c['mean_seconds']:.1f} s, median {c['median_seconds']:.1f} s over "
        f"{c['fact_language_pairs']} pairs",
    ]
    return "\n".join(lines)


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
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    print(cpu_summary(), flush=True)
    lm = mkn.load_model(args.model)
    print(f"dtype {lm.dtype_choice}", flush=True)
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
        markdown = summary_markdown(name, spec, summary, config.model_dump(), args.model)
        print(f"\n{markdown}\n(wall {wall / 60:.1f} min for this call)", flush=True)
        results[name] = {"summary": summary, "wall_seconds": wall,
                         "config": config.model_dump(), "markdown": markdown}
    if args.markdown:
        args.markdown.write_text("\n\n".join(r["markdown"] for r in results.values()) + "\n",
                                 encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

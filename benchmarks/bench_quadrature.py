"""Fewer quadrature nodes at equal accuracy? Left Riemann (Dai et al., AMIG) against
Gauss-Legendre and the trapezoid rule, each against a 128-node reference (issue 26's lever).

For known items of a data source (the model's greedy continuation or candidate rank gets the
gold object, :mod:`mkn.localization.knowledge`), every (rule, steps) attribution of one query is
compared with the reference attribution of the same query (Gauss-Legendre, 128 nodes by
default):

- ``gap``: the completeness gap over all layers, sum_l |sum_i a_li - (p(x) - p(b_l))| /
  sum_l |p(x) - p(b_l)| (0 for the exact integral), and the largest per-layer relative gap;
- ``top-k``: the share of the reference's ``k`` highest-scoring neurons among the rule's;
- ``set``: Jaccard of the coarse knowledge-neuron sets (score > t * max, the language's
  threshold of :func:`mkn.localization.neurons.threshold_for`) of rule and reference;
- seconds per attribution.

Medians over items. A rule with fewer nodes that matches the study's (left, 12) on all three at
a lower cost is a speed-up for free.

    .venv/bin/python benchmarks/bench_quadrature.py --items 12
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mkn
from mkn.data import load_facts
from mkn.localization.knowledge import known_items
from mkn.localization.neurons import coarse_neurons, threshold_for
from mkn.models.devices import cpu_summary


def overlap_top(scores: torch.Tensor, reference: torch.Tensor, k: int) -> float:
    """Share of the reference's top-``k`` neurons that are in the top-``k`` of ``scores``."""
    top = set(torch.topk(scores.flatten().float(), k).indices.tolist())
    ref = set(torch.topk(reference.flatten().float(), k).indices.tolist())
    return len(top & ref) / k


def jaccard(a: list, b: list) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--data", default="bmlama:bmlama17")
    parser.add_argument("--language", default="en")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--method", default="amig")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--reference", type=int, default=128)
    parser.add_argument("--rules", default="left:4,6,8,12,20;trapezoid:4,6,8,12;"
                        "gauss-legendre:2,3,4,6,8,12")
    args = parser.parse_args()
    print(cpu_summary(), flush=True)
    lm = mkn.load_model(args.model, dtype=args.dtype)
    facts = load_facts(args.data, [args.language], limit=max(60, 4 * args.items), seed=0)
    known = known_items(lm, facts, [args.language], "auto")
    chosen = [f for f in facts if known.known(f.id, args.language)][:args.items]
    queries = [(f.prompts(args.language)[0], f.languages[args.language].object) for f in chosen]
    print(f"{len(queries)} known items of {len(facts)} probed ({args.data}, {args.language}); "
          f"{lm.name} in {str(lm.dtype).removeprefix('torch.')}; {args.method}", flush=True)
    t = threshold_for(args.language, {})
    started = time.perf_counter()
    reference = [mkn.attribute(lm, p, o, method=args.method, steps=args.reference,
                               rule="gauss-legendre") for p, o in queries]
    print(f"reference: gauss-legendre, {args.reference} nodes, "
          f"{(time.perf_counter() - started) / len(queries):.1f} s per item", flush=True)
    configs = [(rule, int(n)) for part in args.rules.split(";")
               for rule, steps in [part.split(":")] for n in steps.split(",")]
    configs.append(("left", args.reference))
    print(f"\n| rule | nodes | gap, all layers (median) | worst layer's relative gap (median) "
          f"| top-{args.k} overlap (median) | set Jaccard (median) | s per attribution |")
    print("|---|---|---|---|---|---|---|")
    for rule, steps in configs:
        gaps, worst, tops, sets, seconds = [], [], [], [], []
        for (prompt, obj), ref in zip(queries, reference, strict=True):
            found = mkn.attribute(lm, prompt, obj, method=args.method, steps=steps, rule=rule)
            gaps.append(found.weighted_completeness_gap)
            worst.append(found.relative_completeness_gap)
            tops.append(overlap_top(found.scores, ref.scores, args.k))
            sets.append(jaccard(coarse_neurons(found.scores, t), coarse_neurons(ref.scores, t)))
            seconds.append(found.seconds)
        print(f"| {rule} | {steps} | {statistics.median(gaps):.3g} | "
              f"{statistics.median(worst):.3g} | "
              f"{statistics.median(tops):.2f} | {statistics.median(sets):.2f} | "
              f"{statistics.median(seconds):.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Do bfloat16 attributions agree with float32 ones on the real model?

The reproduction study runs gemma-3-270m in bfloat16 (about 2.5x faster on CPU). For a seeded
sample of its mLAMA queries this attributes each query in both dtypes (same method, steps,
rule) and reports, per query: the Pearson correlation of all neuron scores, the overlap of the
top-20 neurons, the Jaccard overlap of the coarse knowledge-neuron sets (score > 0.2 x max) and
the relative difference of p(gold).

    .venv/bin/python benchmarks/bench_dtype_agreement.py --queries 12
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import mkn
from mkn.data import load_facts
from mkn.localization.neurons import coarse_neurons, jaccard
from mkn.models.devices import cpu_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--method", default="amig")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    facts = load_facts("mlama:paraphrased-mlama-6", relations=["P1376", "P178", "P176", "P36"],
                       per_relation=3, seed=args.seed)
    pool = [(f.prompts(lang)[0], f.languages[lang].object, lang) for f in facts
            for lang in f.languages]
    sample = random.Random(args.seed).sample(pool, min(args.queries, len(pool)))
    print(cpu_summary(), flush=True)
    models = {dtype: mkn.load_model(args.model, dtype=dtype) for dtype in ("float32", "bfloat16")}
    rows, seconds = [], {dtype: 0.0 for dtype in models}
    print(f"{args.model}, {args.method}, {args.steps} steps, {len(sample)} queries "
          f"(paraphrased-mlama-6, seed {args.seed}); float32 vs bfloat16")
    print(f"{'lang':<5} {'r':>7} {'top20':>6} {'KN jacc':>8} {'dp/p':>7}  query -> object")
    for prompt, target, lang in sample:
        result = {}
        for dtype, lm in models.items():
            start = time.perf_counter()
            result[dtype] = mkn.attribute(lm, prompt, target, method=args.method,
                                          steps=args.steps)
            seconds[dtype] += time.perf_counter() - start
        a, b = result["float32"], result["bfloat16"]
        r = float(torch.corrcoef(torch.stack([a.scores.flatten(), b.scores.flatten()]))[0, 1])
        top = len({(n[0], n[1]) for n in a.top(20)} & {(n[0], n[1]) for n in b.top(20)}) / 20
        kn = jaccard(set(coarse_neurons(a.scores, 0.2)), set(coarse_neurons(b.scores, 0.2)))
        dp = abs(b.prob - a.prob) / max(a.prob, 1e-12)
        rows.append((r, top, kn, dp))
        print(f"{lang:<5} {r:>7.4f} {top:>6.2f} {kn:>8.2f} {dp:>7.3f}  {prompt} -> {target}")
    for i, name in enumerate(("Pearson r", "top-20 overlap", "KN Jaccard", "|dp|/p")):
        values = [row[i] for row in rows]
        print(f"{name}: median {statistics.median(values):.4f}, min {min(values):.4f}, "
              f"max {max(values):.4f}")
    print(f"attribution time: float32 {seconds['float32']:.1f} s, bfloat16 "
          f"{seconds['bfloat16']:.1f} s ({seconds['float32'] / seconds['bfloat16']:.2f}x)")


if __name__ == "__main__":
    main()

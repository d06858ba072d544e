"""Batched vs single attribution per item on the real default model (issue 22).

``mkn.attribute(lm, [prompts], [targets])`` against one ``mkn.attribute(lm, prompt, target)``
call per item, on the same prompts, interleaved over ``--repeats`` rounds, in the dtype
``--dtype`` (default auto: what this CPU computes fastest) and float32. Prints the CPU, its
flags and whether it computes bf16 natively, the seconds per item of each way, and the largest
difference between the two ways' scores (they are the same computation: 0 expected).

Usage: ``python benchmarks/bench_batched.py [--items 6] [--repeats 2] [--steps 20]``
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPTS = [("The capital of France is", "Paris"), ("The capital of Japan is", "Tokyo"),
           ("The official language of Brazil is", "Portuguese"),
           ("Le capital de l'Italie est", "Rome"), ("Die Hauptstadt von Spanien ist", "Madrid"),
           ("日本的首都是", "东京"), ("The currency of the United Kingdom is the", "pound"),
           ("Albert Einstein was born in", "Germany")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtypes", default="auto,float32")
    args = parser.parse_args()

    import torch

    import mkn
    from mkn.models.devices import cpu_summary

    print(cpu_summary())
    prompts = [p for p, _ in PROMPTS[:args.items]]
    targets = [t for _, t in PROMPTS[:args.items]]
    print("| dtype | items | single (s/item) | batched (s/item) | batched/single | "
          "max |score difference| |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        lm = mkn.load_model("gemma-3-270m", dtype=dtype)
        mkn.attribute(lm, prompts[0], targets[0], steps=2)  # warm-up
        single, batched, diff = [], [], 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            one = [mkn.attribute(lm, p, t, steps=args.steps) for p, t in zip(
                prompts, targets, strict=True)]
            single.append((time.perf_counter() - start) / len(prompts))
            start = time.perf_counter()
            many = mkn.attribute(lm, prompts, targets, steps=args.steps)
            batched.append((time.perf_counter() - start) / len(prompts))
            diff = max(diff, float((many.scores - torch.stack([a.scores for a in one]))
                                   .abs().max()))
        s, b = statistics.median(single), statistics.median(batched)
        print(f"| {dtype} ({str(lm.dtype).removeprefix('torch.')}) | {len(prompts)} | {s:.2f} "
              f"| {b:.2f} | {b / s:.2f}x | {diff:.2g} |", flush=True)


if __name__ == "__main__":
    main()

"""Seconds per query of every registered attribution method and of causal tracing, on the real
default model and real data (issue 23).

Takes the first ``--items`` (fact, language) items the model knows (``--known``, default auto) of
each data source, and times on each: every registered method (``mkn.attribute``, ``--steps``
for path methods) and ``causal_trace`` (``--samples`` noise draws, the three kinds). Prints the
CPU and its flags first, then one markdown row per method: median seconds per query and the
forward/backward rows it needs (IG: layers x steps rows + its baseline's passes; grad-x-act:
one row per layer; tracing: 3 kinds x layers passes of positions x samples rows, + 2).

Usage: ``python benchmarks/bench_methods.py [--data bmlama:bmlama17,mlama:paraphrased-mlama-6]
[--items 6] [--steps 12] [--samples 10]``
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="bmlama:bmlama17,mlama:paraphrased-mlama-6")
    parser.add_argument("--language", default="en")
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--known", default="auto")
    args = parser.parse_args()


    import mkn
    from mkn.attribution.methods import get_method, method_names
    from mkn.data import load_facts
    from mkn.localization.knowledge import known_items
    from mkn.localization.tracing import causal_trace
    from mkn.models.devices import cpu_summary

    print(cpu_summary())
    lm = mkn.load_model("gemma-3-270m")
    print(f"model gemma-3-270m, dtype {lm.dtype_choice}; {lm.n_layers} layers x "
          f"{lm.n_neurons} neurons")
    items = []
    for data in args.data.split(","):
        facts = load_facts(data, [args.language], limit=200, seed=0)
        known = known_items(lm, list(facts), [args.language], args.known)
        for fact in facts:
            for lang in known.languages_of(fact.id):
                if len(items) < args.items * (1 + args.data.split(",").index(data)):
                    items.append((data, fact.prompts(lang)[0], fact.languages[lang].object,
                                  fact.languages[lang].subject))
    print(f"{len(items)} known items: " + "; ".join(f"{p!r} -> {t!r}" for _, p, t, _ in items))
    times: dict[str, list[float]] = {}
    for _, prompt, target, subject in items:
        for name in method_names():
            start = time.perf_counter()
            mkn.attribute(lm, prompt, target, method=name, steps=args.steps)
            times.setdefault(name, []).append(time.perf_counter() - start)
        start = time.perf_counter()
        try:
            causal_trace(lm, prompt, target, subject, samples=args.samples)
        except ValueError as error:  # a subject the prompt spells differently
            print(f"trace skipped: {error}")
            continue
        times.setdefault("causal-trace", []).append(time.perf_counter() - start)
    rows = {name: (f"{lm.n_layers} x {args.steps} IG rows (+ baseline passes)"
                   if get_method(name).path else f"{lm.n_layers} rows (one per layer)")
            for name in method_names()}
    if "patching" in rows:
        from mkn.attribution.methods.patching import CANDIDATES, SAMPLES

        rows["patching"] = (f"a {SAMPLES}-row noised pass, {lm.n_layers} attribution-patching "
                            f"rows, {CANDIDATES} candidate rows (each from its own layer)")
    rows["causal-trace"] = (f"3 kinds x {lm.n_layers} passes of positions x {args.samples} "
                            "rows, + 2")
    print("\n| method | queries | seconds per query (median) | min | max | rows it needs |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | "
              f"{min(values):.2f} | {max(values):.2f} | {rows[name]} |")


if __name__ == "__main__":
    main()

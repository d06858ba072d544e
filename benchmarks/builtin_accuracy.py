"""How many built-in facts does the model know? Per-language accuracy of greedy prediction.

For each (fact, language, query) the query is encoded like the attribution engine does
(:func:`mkn.attribution.queries.encode`: the text before ``[Y]`` for a causal LM) and the query
counts as *right* when the gold object's first target token is the argmax at the prediction
position; ``p(gold)`` is that token's probability. One forward pass per query, batched (queries
sorted by length, right-padded, logits kept only at the prediction positions).

    .venv/bin/python benchmarks/builtin_accuracy.py                 # builtin set, default model
    .venv/bin/python benchmarks/builtin_accuracy.py --per-query     # every query's prediction
    .venv/bin/python benchmarks/builtin_accuracy.py --spec mlama:paraphrased-mlama-6 --limit 50
    .venv/bin/python benchmarks/builtin_accuracy.py --spec mlama:paraphrased-mlama-6 \
        --per-relation 6 --seed 0          # which relations does the model know?

``--check N`` re-scores N queries one by one with the attribution engine
(:func:`mkn.attribution.engine.activations`) to confirm the batched numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch

import mkn
from mkn.attribution.engine import clean_run
from mkn.attribution.queries import PredictionStep, encode
from mkn.attribution.scoring import score_steps
from mkn.data import load_facts
from mkn.models.devices import cpu_summary


@dataclass
class Result:
    fact: str
    relation: str
    lang: str
    prompt: str
    object: str
    right: bool
    p_gold: float
    predicted: str
    error: str = ""


def measure(lm, facts, batch_size: int = 32) -> list[Result]:
    if not lm.causal:
        raise SystemExit("this benchmark scores causal LMs (one prediction position per query)")
    results: list[Result] = []
    steps: list[PredictionStep] = []
    pending: list[Result] = []
    for fact in facts:
        for lang, view in fact.languages.items():
            for prompt in view.prompts():
                res = Result(fact.id, fact.relation, lang, prompt, view.object, False, 0.0, "")
                results.append(res)
                try:
                    steps.append(encode(lm, prompt, view.object).steps[0])
                    pending.append(res)
                except ValueError as err:
                    res.error = str(err)
    for res, step, (prob, argmax) in zip(pending, steps, score_steps(lm, steps, batch_size),
                                         strict=True):
        res.right = argmax == step.target_id
        res.p_gold = prob
        res.predicted = lm.tokenizer.convert_ids_to_tokens(argmax)
    return results


def check(lm, results: list[Result], n: int, seed: int = 0) -> float:
    """Largest |p_batched - p_engine| over ``n`` random queries."""
    sample = random.Random(seed).sample([r for r in results if not r.error],
                                        min(n, len(results)))
    worst = 0.0
    for res in sample:
        step = encode(lm, res.prompt, res.object).steps[0]
        prob = clean_run(lm, step).prob
        worst = max(worst, abs(prob - res.p_gold))
    return worst


def table(results: list[Result], key: str) -> list[str]:
    groups: dict[str, list[Result]] = defaultdict(list)
    for res in results:
        groups[getattr(res, key)].append(res)
    facts_by: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for res in results:
        facts_by[getattr(res, key)][res.fact + "/" + res.lang].append(res.right)
    lines = [f"{key:<10} {'queries':>7} {'right':>6} {'acc':>6} {'mean p':>7} "
             f"{'fact-langs':>10} {'any right':>9} {'all right':>9}"]
    total_right = 0
    for name in sorted(groups, key=lambda k: (k != "en", k)) if key == "lang" else sorted(groups):
        rs = groups[name]
        right = sum(r.right for r in rs)
        total_right += right
        per_fact = facts_by[name].values()
        anyr = sum(any(v) for v in per_fact)
        allr = sum(all(v) for v in per_fact)
        lines.append(f"{name:<10} {len(rs):>7} {right:>6} {right / len(rs):>6.1%} "
                     f"{sum(r.p_gold for r in rs) / len(rs):>7.3f} {len(per_fact):>10} "
                     f"{anyr:>9} {allr:>9}")
    lines.append(f"{'all':<10} {len(results):>7} {total_right:>6} "
                 f"{total_right / max(1, len(results)):>6.1%} "
                 f"{sum(r.p_gold for r in results) / max(1, len(results)):>7.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default="builtin", help="fact source (default: builtin)")
    ap.add_argument("--languages", default=None, help="comma-separated, default: all")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--per-relation", type=int, default=None,
                    help="at most N facts per relation (a balanced sample)")
    ap.add_argument("--seed", type=int, default=None, help="sample at random with this seed")
    ap.add_argument("--model", default=mkn.DEFAULT_MODEL)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--per-query", action="store_true", help="print every query")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="re-score N queries with the attribution engine")
    ap.add_argument("--json", default=None, help="write all results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    langs = args.languages.split(",") if args.languages else None
    facts = load_facts(args.spec, languages=langs, limit=args.limit, seed=args.seed,
                       per_relation=args.per_relation)
    print(f"# {cpu_summary()}", flush=True)
    t0 = time.perf_counter()
    lm = mkn.load_model(args.model)
    t1 = time.perf_counter()
    results = measure(lm, facts, args.batch_size)
    t2 = time.perf_counter()
    print(f"# {facts.summary()}")
    print(f"# model {lm.name}: loaded in {t1 - t0:.1f}s; {len(results)} queries scored in "
          f"{t2 - t1:.1f}s ({torch.get_num_threads()} threads)")
    print("# right = the gold object's first token is the argmax at the prediction position")
    if args.per_query:
        for r in results:
            mark = "ERR" if r.error else ("ok " if r.right else "-- ")
            print(f"{mark} {r.lang} {r.p_gold:.3f} {r.prompt} -> {r.object} "
                  f"(predicted {r.predicted!r}) {r.error}")
    print()
    print("\n".join(table(results, "lang")))
    print()
    print("\n".join(table(results, "relation")))
    errors = [r for r in results if r.error]
    if errors:
        print(f"\n{len(errors)} queries could not be encoded:")
        for r in errors:
            print(f"  {r.fact} {r.lang}: {r.error}")
    right = sum(r.right for r in results)
    print(f"\noverall: {right}/{len(results)} queries right ({right / max(1, len(results)):.1%})")
    if args.check:
        worst = check(lm, results, args.check)
        print(f"check: max |p(batched) - p(engine)| over {args.check} queries = {worst:.2e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in results], f, ensure_ascii=False, indent=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which rule for generic neurons? Chosen on facts disjoint from the study's.

The generic-neuron threshold (:mod:`mkn.localization.generic`) is a rule tuned on data, so it is
chosen here on facts the study never measures (issue 20: the 0.07 of an earlier session was
chosen on 32 bmlama17 facts, 28 of them in the study's sample):

1. The study's facts on ``--data`` (every part of :data:`mkn.jobs.study.DEFAULT_PARTS`
   that reads it, seeded as the study draws them) are removed from the data set.
2. From the rest, a *reference* sample of known facts (:func:`reference_facts`, as the library
   draws it) gives every rule its generic neurons; an *evaluation* sample of other known facts
   is drawn from what is left. The three overlaps (study / reference / evaluation) are checked
   in code, printed, and must be 0.
3. Every known (fact, language) item of the evaluation sample is located with ``--method``
   (generic neurons kept); each rule leaves its generic neurons out of the set, which is then
   suppressed (x0) at every position; own: the relative change of the fact's p(gold);
   unrelated: |mean relative change| of ``--unrelated`` known facts of other relations in the
   same language; size: neurons in the set. Medians over items, intervals over facts.
4. The rule is chosen by the criterion fixed before the run: among the rules whose median own
   drop is at least 80%, the one with the smallest median unrelated change (ties: the larger
   threshold, which leaves fewer neurons out).

    .venv/bin/python benchmarks/bench_generic_rule.py --data bmlama:bmlama17 \\
        --languages en,es,nl,ko,zh --markdown /tmp/generic-rule.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import mkn
from mkn.experiments.common import markdown_table, queries, unrelated_facts
from mkn.experiments.metrics import clustered_interval
from mkn.interventions.controls import CleanProbs, controlled_effect
from mkn.jobs.study import StudyConfig, part_facts
from mkn.localization.generic import GenericNeurons, check_held_out
from mkn.localization.locate import LocateConfig, locate_fact
from mkn.localization.reference import build_reference, reference_facts, reference_pool
from mkn.models.devices import cpu_summary

OWN_DROP = -0.8  # the criterion: a rule must keep the median own change at or below this


def study_facts(data: str) -> set[str]:
    """The ids of every fact the study (default configuration) measures on ``data``."""
    config = StudyConfig()
    return {f.id for part in config.parts if part.data == data
            for f in part_facts(part, config)}


def overlaps(study: set[str], reference: set[str], evaluation: set[str]) -> dict[str, int]:
    """The three pairwise overlaps; every one must be 0 (:func:`check_held_out` raises)."""
    return {"study & reference": check_held_out(reference, study),
            "study & evaluation": check_held_out(evaluation, study),
            "reference & evaluation": check_held_out(reference, evaluation)}


def choose(rows: list[dict]) -> dict | None:
    """The rule chosen by the criterion of the module docstring (None: no rule meets it)."""
    eligible = [r for r in rows if r["own"] is not None and r["own"] <= OWN_DROP]
    return min(eligible, key=lambda r: (r["unrelated"], -r["threshold"]), default=None)


def measure(args) -> dict:
    lm = mkn.load_model(args.model, dtype=args.dtype)
    started = time.perf_counter()
    excluded = study_facts(args.data)
    pool = [f for f in reference_pool(args.data, args.languages, args.seed)
            if f.id not in excluded]
    config = LocateConfig(method=args.method, steps=args.steps, max_queries=args.max_queries,
                          degenerate=False)
    reference, ref_known, _ = reference_facts(lm, pool, args.languages, config.known,
                                              args.reference_facts)
    chosen = {f.id for f in reference}
    rest = [f for f in pool if f.id not in chosen]
    evaluation, known, _ = reference_facts(lm, rest, args.languages, config.known,
                                           args.eval_facts)
    overlap = overlaps(excluded, chosen, {f.id for f in evaluation})
    print(f"study facts on {args.data}: {len(excluded)} left out; reference {len(reference)}, "
          f"evaluation {len(evaluation)} known facts; overlaps {overlap}", flush=True)
    cache: dict = {}
    items = build_reference(lm, reference, args.languages, config, ref_known, cache=cache)
    rules = {threshold: GenericNeurons(items, threshold) for threshold in args.thresholds}
    clean = CleanProbs(lm)
    measured: dict[float, list[dict]] = {t: [] for t in [None, *args.thresholds]}
    for number, fact in enumerate(evaluation, 1):
        located = locate_fact(lm, fact, args.languages, config, cache, known)
        for lang, result in located.languages.items():
            others = [queries(g, lang) for g in unrelated_facts(
                fact, evaluation, lang, args.unrelated, args.seed, known)]
            for threshold in measured:
                neurons = (result.neurons if threshold is None
                           else rules[threshold].split(result.neurons)[0])
                if not neurons:  # every neuron generic: counted, no set to suppress
                    measured[threshold].append({"fact_id": fact.id, "size": 0})
                    continue
                effect = controlled_effect(lm, neurons, "suppress", queries(fact, lang), others,
                                           draws=1, seed=args.seed, clean=clean)
                measured[threshold].append({
                    "fact_id": fact.id, "size": len(neurons), "own": effect.effect,
                    "unrelated": None if effect.unrelated_effect is None
                    else abs(effect.unrelated_effect)})
        print(f"{number}/{len(evaluation)} facts, {time.perf_counter() - started:.0f} s",
              flush=True)
    rows = []
    for threshold, values in measured.items():
        with_set = [v for v in values if v["size"]]
        rows.append({
            "threshold": threshold if threshold is not None else float("inf"),
            "rule": "nothing is generic" if threshold is None
            else f"fact share outside its top relation >= {threshold:g}",
            "generic": 0 if threshold is None else len(rules[threshold].neurons()),
            "items": len(values), "without_set": len(values) - len(with_set),
            "own": statistics.median(v["own"] for v in with_set) if with_set else None,
            "unrelated_ci": clustered_interval([(v["fact_id"], v["unrelated"]) for v in with_set
                                                if v["unrelated"] is not None]),
            "size": statistics.median(v["size"] for v in values)})
        rows[-1]["unrelated"] = rows[-1]["unrelated_ci"]["value"]
    return {"model": args.model, "dtype": str(lm.dtype).removeprefix("torch."),
            "cpu": cpu_summary(), "data": args.data, "languages": args.languages,
            "overlaps": overlap, "study_facts": len(excluded), "reference_facts": len(reference),
            "reference_items": len(items), "evaluation_facts": len(evaluation),
            "seconds": time.perf_counter() - started, "rows": rows, "chosen": choose(rows)}


def table(result: dict) -> str:
    lines = [[r["rule"], r["generic"], r["items"], r["without_set"], r["own"],
              f"{r['unrelated_ci']['value']:.3g} [{r['unrelated_ci']['ci95'][0]:.3g}, "
              f"{r['unrelated_ci']['ci95'][1]:.3g}]" if r["unrelated"] is not None else "n/a",
              r["size"]] for r in result["rows"]]
    chosen = result["chosen"]
    return (markdown_table(["rule (generic when ...)", "generic neurons", "items",
                            "items left without a set", "median own change",
                            "median unrelated |change| [95% CI]", "median size"], lines)
            + "\n\nChosen by the fixed criterion (median own change <= "
            f"{OWN_DROP:g}, then the smallest unrelated change): "
            + (chosen["rule"] if chosen else "no rule meets it"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--data", default="bmlama:bmlama17")
    parser.add_argument("--languages", type=lambda s: s.split(","),
                        default=["en", "es", "nl", "ko", "zh"])
    parser.add_argument("--method", default="amig")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--max-queries", type=int, default=4)
    parser.add_argument("--reference-facts", type=int, default=48)
    parser.add_argument("--eval-facts", type=int, default=24)
    parser.add_argument("--unrelated", type=int, default=3)
    parser.add_argument("--thresholds", type=lambda s: [float(t) for t in s.split(",")],
                        default=[0.05, 0.07, 0.1, 0.15])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(cpu_summary(), flush=True)
    result = measure(args)
    text = (f"{args.data}, languages {','.join(args.languages)}; {args.model} "
            f"({result['dtype']}), {args.method}, {args.steps} steps, at most {args.max_queries} "
            f"queries; {result['cpu']}; {result['study_facts']} study facts left out; reference "
            f"sample {result['reference_facts']} known facts ({result['reference_items']} "
            f"items), evaluation {result['evaluation_facts']} other known facts; overlaps "
            f"{result['overlaps']}; {result['seconds'] / 60:.1f} min\n\n" + table(result))
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

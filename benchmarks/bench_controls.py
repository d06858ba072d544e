"""Do knowledge neurons mean anything? Selectivity and specificity on a real model and real data.

For a fact sample of one data source (and languages), every (fact, language) item is probed
(:mod:`mkn.localization.knowledge`) and located with each method *whatever the model knows*
(``known=any``), so that known and unknown items can be set side by side. Each item's
knowledge-neuron set is then suppressed (x0) and enhanced (x2), with and without the generic
neurons of the cached reference list (:mod:`mkn.localization.generic`), and, with
``--relation-facts N``, split into its fact set and its relation set (relation neurons of its
relation at each ``--relation-shares`` threshold, :mod:`mkn.localization.relations`, from N known
reference facts per relation held out from the measured ones), each measured beside its
controls (:mod:`mkn.interventions.controls`): random sets with as many neurons per layer,
unrelated facts of other relations and other facts of the *same* relation, known in the same
language. Reported per group, each a median with a bootstrap 95% interval over facts: the
relative change of the fact's own p(gold), of p(gold) under random sets, of unrelated and of
same-relation facts, selectivity, specificity and relation specificity.

    .venv/bin/python benchmarks/bench_controls.py --data bmlama:bmlama17 --languages en,zh,fr,es \\
        --relations P37,P176,P1412 --per-relation 6 --markdown /tmp/controls-bm.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import mkn
from mkn.cli import ProgressBars
from mkn.data import load_facts
from mkn.experiments.common import (
    control_summary,
    fmt_ci,
    markdown_table,
    neighbourhood,
    queries,
    same_relation_facts,
)
from mkn.experiments.common import unrelated_facts as pick_unrelated
from mkn.experiments.injection import SUCCESS, counterfactual, measure_edit
from mkn.experiments.metrics import clustered_interval
from mkn.interventions.controls import (
    CleanProbs,
    controlled_effect,
    random_like,
    set_content,
    stable_seed,
)
from mkn.interventions.locality import locality
from mkn.interventions.weights import replace_object
from mkn.localization.knowledge import KnownItems, known_items
from mkn.localization.locate import LocateConfig, locate_fact
from mkn.localization.reference import (
    REFERENCE_POOL,
    reference_facts,
    reference_generic,
    reference_pool,
    reference_relations,
)
from mkn.localization.relations import MIN_RELATION_FACTS, contrastive_set
from mkn.models.devices import cpu_summary
from mkn.report.relation_evidence import KIND, answer

MODES = ("suppress", "enhance")
LABELS = {"left out": "generic left out", "kept": "all (generic kept)"}  # the rest: generic out


def measure(args, bars: ProgressBars) -> dict:
    args.max_queries = args.max_queries or None  # 0: every query
    lm = mkn.load_model(args.model, dtype=args.dtype)
    started = time.perf_counter()
    sample = load_facts(args.data, args.languages, limit=args.limit, seed=args.seed,
                        relations=args.relations, per_relation=args.per_relation)
    languages = sample.languages
    cache: dict = {}
    generic = {}
    for method in args.methods:
        config = LocateConfig(method=method, steps=args.steps, max_queries=args.max_queries)
        generic[method], path, built = reference_generic(lm, args.data, languages, config,
                                                         cache=cache, task=bars.task)
        print(f"generic ({method}): {len(generic[method].neurons())} from "
              f"{generic[method].facts} known reference facts "
              f"({'built' if built else 'cached'}: {path})", flush=True)
    seconds_reference = time.perf_counter() - started
    # held out: the measured facts are not those the generic neurons were found on
    reference = {f for g in generic.values() for f in g.source.get("facts", [])}
    held_out = [f for f in sample if f.id not in reference]
    if args.known_facts:  # facts known in at least one language, balanced by relation
        facts, probed, _ = reference_facts(lm, held_out, languages, "auto", args.known_facts,
                                           bars.task("probing the sample",
                                                     min(len(held_out), REFERENCE_POOL)))
        known = probed.subset(f.id for f in facts)  # their probe, not probed again
        if len(facts) < args.known_facts:
            print(f"only {len(facts)} of {args.known_facts} facts known among the first "
                  f"{min(len(held_out), REFERENCE_POOL)} held-out sampled facts: a larger "
                  "--per-relation or another --seed gives more", flush=True)
    else:
        facts = held_out
        known = known_items(lm, facts, languages, "auto", bars.task("probing", len(facts)))
    print(f"{len(sample) - len(held_out)} sampled facts left out (in the reference sample); "
          + known.describe(), flush=True)
    everything = KnownItems("any", known.languages, known.knowledge)  # locate unknown items too
    relation_lists, means, contrasted = {}, {}, {}
    if args.relation_facts:  # relation neurons, on reference facts held out from these facts
        started_relations = time.perf_counter()
        for method in args.methods:
            config = LocateConfig(method=method, steps=args.steps, max_queries=args.max_queries)
            relation_lists[method], path, built = reference_relations(
                lm, args.data, languages, config, {f.relation for f in facts},
                held_out=[f.id for f in facts], per_relation=args.relation_facts, cache=cache,
                task=bars.task)
            covered = relation_lists[method].covered()
            print(f"relation neurons ({method}): reference facts per relation {covered}; "
                  f"held-out overlap {relation_lists[method].source['held_out']['overlap']}; "
                  f"{'built' if built else 'cached'}: {path}", flush=True)
        if args.contrastive:
            pool = {fact.id: fact for fact in reference_pool(args.data, languages)}
            for method in args.methods:
                # one query per item, as the reference lists were located
                config = LocateConfig(method=method, steps=args.steps, max_queries=1,
                                      known="any", degenerate=False)
                means[method], contrasted[method] = relation_means(
                    lm, pool, relation_lists[method], config, cache, bars)
        seconds_reference += time.perf_counter() - started_relations
    clean = CleanProbs(lm)
    rows: list[dict] = []
    edited_variants = {"left out"} | {f"{kind} >= {share:g}" for kind in ("fact set",
                                                                          "relation set")
                                      for share in args.relation_shares[:1]}
    if args.contrastive:
        edited_variants.add(f"contrastive >= {args.contrastive:g}")
    done, settings = resumed(args, [f.id for f in facts])
    tick = bars.task("measured facts", len(facts))
    rows += done.get("rows", [])
    for number, fact in enumerate(facts, 1):
        if fact.id in done.get("done_facts", []):
            tick(fact.id)
            continue
        # the same set (found by another method, or a variant that drops nothing) is measured
        # once: its controls are seeded by the fact, the language and the set's content
        effects: dict[tuple, dict] = {}
        edits: dict[tuple, list[dict]] = {}
        for method in args.methods:
            config = LocateConfig(method=method, steps=args.steps, max_queries=args.max_queries,
                                  known="any", degenerate=False)
            located = locate_fact(lm, fact, languages, config, cache, everything)
            for lang, result in located.languages.items():
                is_known = known.known(fact.id, lang)
                controls = [queries(g, lang) for g in pick_unrelated(fact, facts, lang,
                                                                     args.unrelated, args.seed,
                                                                     known)]
                kin = [queries(g, lang) for g in same_relation_facts(
                    fact, facts, lang, args.same_relation, args.seed, known)]
                kept, dropped = generic[method].split(result.neurons)
                variants = [("kept", result.neurons), ("left out", kept)]
                for share in args.relation_shares if relation_lists else ():
                    listed = relation_lists[method].with_threshold(share)
                    fact_set, relation_set = listed.split(fact.relation, kept)
                    variants += [(f"fact set >= {share:g}", fact_set),
                                 (f"relation set >= {share:g}", relation_set)]
                mean = means.get(method, {}).get((fact.relation, lang))
                if mean is not None:  # the relation has reference facts known in lang
                    variants.append((f"contrastive >= {args.contrastive:g}",
                                     contrastive_set(kept, result.scores, mean,
                                                     args.contrastive)))
                for variant, neurons in variants:
                    if not neurons:
                        continue
                    content = set_content(neurons)
                    if args.edits and is_known and variant in edited_variants:
                        if (lang, content) not in edits:
                            edits[lang, content] = edit_rows(lm, fact, facts, lang, neurons,
                                                             known, clean, args.seed)
                        rows += [r | {"method": method, "generic": variant}
                                 for r in edits[lang, content]]
                    for mode in MODES:
                        if (lang, mode, content) not in effects:
                            effects[lang, mode, content] = controlled_effect(
                                lm, neurons, mode, queries(fact, lang), controls, args.draws,
                                stable_seed(args.seed, fact.id, lang), clean=clean,
                                positions=args.positions, same_relation=kin).to_dict()
                        rows.append({"fact_id": fact.id, "relation": fact.relation,
                                     "language": lang, "known": is_known, "method": method,
                                     "generic": variant, "generic_in_set": len(dropped),
                                     **effects[lang, mode, content]})
        print(f"{number}/{len(facts)} facts, {time.perf_counter() - started:.0f} s "
              f"({len(effects)} distinct set effects measured)", flush=True)
        tick(fact.id)
        if args.json:  # after every fact: a killed run goes on with --resume
            done.setdefault("done_facts", []).append(fact.id)
            save_partial(args.json, {"settings": settings, "rows": rows,
                                     "done_facts": done["done_facts"]})
    return {"command": "python benchmarks/bench_controls.py " + shlex.join(sys.argv[1:]),
            "model": args.model, "dtype": str(lm.dtype).removeprefix("torch."),
            "cpu": cpu_summary(), "data": args.data,
            "languages": languages, "facts": [f.id for f in facts],
            "left_out_in_reference": len(sample) - len(held_out),
            "relations": sorted({f.relation for f in facts}), "steps": args.steps,
            "max_queries": args.max_queries, "draws": args.draws, "unrelated": args.unrelated,
            "same_relation": args.same_relation, "relation_facts": args.relation_facts,
            "relation_shares": args.relation_shares if relation_lists else [],
            "contrastive": args.contrastive,
            "contrastive_facts": {m: {f"{r} {lang}": n for (r, lang), n in sorted(c.items())}
                                  for m, c in contrasted.items()},
            "relation_covered": {m: r.covered() for m, r in relation_lists.items()},
            "relation_overlap": {m: r.source["held_out"]["overlap"]
                                 for m, r in relation_lists.items()},
            "relation_neurons": {m: {f"{share:g}": r.with_threshold(share).sizes()
                                     for share in args.relation_shares}
                                 for m, r in relation_lists.items()},
            "knowledge": known.to_summary(), "seconds": time.perf_counter() - started,
            "seconds_reference": seconds_reference, "rows": rows}


def relation_means(lm, pool: dict, listed, config: LocateConfig, cache: dict,
                   bars: ProgressBars) -> tuple[dict[tuple[str, str], torch.Tensor],
                                                             dict[tuple[str, str], int]]:
    """``mean_{g in F_r} a_g`` per (relation, language), and the number of facts averaged:
    the attribution scores of the reference facts of each covered relation of ``listed``, in
    the languages where they are known (its items), averaged (the contrast of
    :func:`contrastive_set`); none where fewer than MIN_RELATION_FACTS are known. ``pool``:
    the reference pool's facts by id."""
    where: dict[str, list[str]] = defaultdict(list)
    for item in listed.items:
        if listed.covers(item.relation):
            where[item.fact_id].append(item.language)
    tick = bars.task(f"contrastive: the {config.method} scores of the reference facts",
                     len(where))
    scores: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    for fact_id, langs in where.items():
        fact = pool[fact_id]
        located = locate_fact(lm, fact, sorted(set(langs)), config, cache)
        for lang, result in located.languages.items():
            scores[fact.relation, lang].append(result.scores.float())
        tick(fact_id)
    enough = {key: found for key, found in scores.items() if len(found) >= MIN_RELATION_FACTS}
    return ({key: torch.stack(found).mean(0) for key, found in enough.items()},
            {key: len(found) for key, found in enough.items()})


def run_settings(args, facts: list[str]) -> dict:
    """What a partial run was measured with: a resume must match it."""
    return {k: v for k, v in vars(args).items()
            if k not in ("json", "markdown", "resume")} | {"facts": facts}


def resumed(args, facts: list[str]) -> tuple[dict, dict]:
    """The rows and finished facts of a killed run with the same settings (``--resume``), and
    the settings; an error when the saved run had others."""
    settings = json.loads(json.dumps(run_settings(args, facts), default=str))
    partial = args.json.with_suffix(".partial.json") if args.json else None
    if not (args.resume and partial and partial.exists()):
        return {}, settings
    saved = json.loads(partial.read_text(encoding="utf-8"))
    if saved["settings"] != settings:
        changed = sorted(k for k in settings if saved["settings"].get(k) != settings[k])
        raise SystemExit(f"{partial}: saved with other settings ({', '.join(changed)})")
    print(f"resumed: {len(saved['done_facts'])} facts done in {partial}", flush=True)
    return saved, settings


def save_partial(path: Path, data: dict) -> None:
    partial = path.with_suffix(".partial.json")
    temporary = partial.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(partial)


def edit_rows(lm, fact, facts, lang: str, neurons, known, clean: CleanProbs,
              seed: int) -> list[dict]:
    """Dai et al.'s edit of ``fact`` in ``lang`` to a counterfactual object (another fact of its
    relation, :func:`mkn.experiments.injection.counterfactual`) through ``neurons`` and through a
    random set shaped like them: efficacy (p(new) > p(old) on the edit query), generalization
    (its other queries), portability (the languages that know the fact) and locality (the change
    of p(gold) of same-relation and other-relation facts known in each language)."""
    import random

    other = counterfactual(fact, facts, random.Random(stable_seed(seed, fact.id, "new")))
    if other is None:
        return []
    prompt = queries(fact, lang)[0][0]
    targets = [t for t in known.languages_of(fact.id) if t != lang]
    around = neighbourhood(fact, [g for g in facts if g.id != other.id], known.languages,
                           3, seed, known)
    rng = random.Random(stable_seed(seed, fact.id, lang, set_content(neurons), "edit"))
    out = []
    for kind, chosen in (("set", neurons), ("random", random_like(neurons, lm.n_neurons, rng))):
        edit = replace_object(lm, chosen, prompt, fact.languages[lang].object,
                              other.languages[lang].object)
        measured = measure_edit(lm, edit, fact, other, lang, targets)
        moved = locality(lm, edit, around, clean)
        out.append({"kind": "edit", "fact_id": fact.id, "relation": fact.relation,
                    "language": lang, "set": kind,
                    "neurons": len(chosen),
                    "efficacy": [r[SUCCESS] for r in measured["reliability"]],
                    "generalization": [r[SUCCESS] for r in measured["generalization"]],
                    "portability": [r[SUCCESS] for rows in measured["portability"].values()
                                    for r in rows],
                    "same_relation": [v for g in moved.values() for v in g["same_relation"]
                                      if v is not None],
                    "other_relation": [v for g in moved.values() for v in g["other_relation"]
                                       if v is not None]})
    return out


def _rate(rows: list[dict], key: str) -> str:
    flags = [x for r in rows for x in r[key]]
    return f"{sum(flags) / len(flags):.2f} ({len(flags)})" if flags else "-"


def edit_table(result: dict) -> str:
    """Edits through each set and its random control: success rates, and the median change of
    the neighbours' p(gold) (per edit: the mean over its neighbours) with a 95% interval."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in result["rows"]:
        if row.get("kind") == "edit":
            groups[(row["method"], row["generic"], row["set"] == "random")].append(row)
    lines = []
    for (method, variant, is_random), rows in sorted(groups.items()):
        moved = {key: fmt_ci(clustered_interval(
            [(r["fact_id"], sum(r[key]) / len(r[key])) for r in rows if r[key]],
            seed=result.get("seed", 0))) for key in ("same_relation", "other_relation")}
        lines.append([method, ("random set shaped like: " if is_random else "")
                      + LABELS.get(variant, variant), len(rows), _rate(rows, "efficacy"),
                      _rate(rows, "generalization"), _rate(rows, "portability"),
                      moved["same_relation"], moved["other_relation"]])
    if not lines:
        return ""
    return ("\n\nEdits (Dai et al.'s, to another fact's object of the same relation; known "
            "items): success by p(new) > p(old) (queries), and locality: the relative change "
            "of p(gold) of 3 same-relation and 3 other-relation facts known in each language\n\n"
            + markdown_table(["method", "edited set", "edits", "efficacy", "generalization",
                              "portability", "same-relation facts [95% CI]",
                              "other-relation facts [95% CI]"], lines))


def table(result: dict) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in result["rows"]:
        if row.get("kind") != "edit":
            groups[(row["method"], row["generic"], row["known"], row["mode"])].append(row)
    order = ["left out", "kept"] + [f"{kind} >= {share:g}" for share in
                                   result.get("relation_shares", [])
                                   for kind in ("fact set", "relation set")] + [
        f"contrastive >= {result.get('contrastive', 0):g}"]
    lines = []
    for (method, variant, is_known, mode), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][0], not kv[0][2], order.index(kv[0][1]),
                                            kv[0][3] != "suppress")):
        s = control_summary([(r["fact_id"], r) for r in rows])
        lines.append([method, LABELS.get(variant, variant),
                      "known" if is_known else "unknown", mode, s["items"],
                      fmt_ci(s["effect"]), fmt_ci(s["random_effect"]),
                      fmt_ci(s["unrelated_effect"]), fmt_ci(s["same_relation_effect"]),
                      fmt_ci(s["selectivity"]), fmt_ci(s["specificity"]),
                      fmt_ci(s["relation_specificity"])])
    return markdown_table(["method", "set", "items", "intervention", "n",
                           "own p(gold) [95% CI]", "random set [95% CI]",
                           "unrelated facts [95% CI]", "same-relation facts [95% CI]",
                           "selectivity [95% CI]", "specificity [95% CI]",
                           "relation specificity [95% CI]"], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU "
                        "computes it natively, float32 elsewhere")
    parser.add_argument("--data", default="bmlama:bmlama17")
    parser.add_argument("--languages", type=lambda s: s.split(","), default=None)
    parser.add_argument("--relations", type=lambda s: s.split(","), default=None)
    parser.add_argument("--per-relation", type=int, default=6)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--known-facts", type=int, default=None,
                        help="measure this many facts known in at least one language (probed "
                             "from the sample, balanced by relation) instead of the sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["amig", "matrice"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--max-queries", type=int, default=2,
                        help="queries attributed per language (0: all, the library default)")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--unrelated", type=int, default=3)
    parser.add_argument("--same-relation", type=int, default=3,
                        help="other facts of the fact's relation measured beside it")
    parser.add_argument("--relation-facts", type=int, default=0,
                        help="known reference facts per relation for relation neurons (0: none); "
                             "each set is then also split into its fact set and relation set")
    parser.add_argument("--relation-shares", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.5], help="relation-neuron thresholds to compare (share of "
                        "the relation's reference facts)")
    parser.add_argument("--contrastive", type=float, default=0.0,
                        help="with --relation-facts: also measure each set's contrastive fact "
                             "set, the neurons whose attribution exceeds the mean of the "
                             "relation's reference facts by this share of the largest excess "
                             "(0: not measured; mkn.localization.relations.contrastive_set)")
    parser.add_argument("--edits", action="store_true",
                        help="also edit every known item through its set (generic left out, "
                             "and its fact and relation sets at the first share) and a random "
                             "set: efficacy, generalization, portability, locality")
    parser.add_argument("--positions", choices=("all", "prediction"), default="all",
                        help="where interventions apply: every position (the library's "
                             "default) or the prediction positions only")
    parser.add_argument("--json", type=Path, default=None, help="save the raw rows here (and, "
                        "after every fact, the rows so far beside it: NAME.partial.json)")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the partial rows of a killed run with the same settings")
    parser.add_argument("--markdown", type=Path, default=None, help="save the table here")
    parser.add_argument("--summary", type=Path, default=None,
                        help="with --relation-facts: save the slim summary that RESULTS and "
                             "BENCHMARKS read (mkn.report.relation_evidence), e.g. "
                             "docs/results/relation-neurons-bmlama17.json")
    parser.add_argument("--render", type=Path, default=None,
                        help="only print the tables of a saved --json file, or of its "
                             "NAME.partial.json (the facts done so far)")
    args = parser.parse_args()
    if args.render:
        result = rendered(args.render)
        print(header(result) + "\n\n" + table(result) + edit_table(result))
        if args.summary and "seconds" in result:  # a finished run
            write_summary(result, args.summary)
        return
    torch.manual_seed(0)
    print(cpu_summary(), flush=True)
    with ProgressBars() as bars:
        result = measure(args, bars)
    text = header(result) + "\n\n" + table(result) + edit_table(result)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    if args.summary:
        write_summary(result, args.summary)


def write_summary(result: dict, path: Path) -> None:
    """Print the plain-words answer and save the slim summary (a run with relation neurons)."""
    if not result.get("relation_shares"):
        raise SystemExit("--summary needs a run with --relation-facts")
    slim = summary(result)
    print("\n\n".join(answer(slim)))
    path.write_text(json.dumps(slim, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


SUMMARY_KEYS = {"own": "effect", "same": "same_relation_effect", "other": "unrelated_effect",
                "random": "random_effect"}


def variant_kind(variant: str) -> tuple[str, float | None]:
    """``(kind, share)`` of a set's label: full, kept, fact, relation or contrastive."""
    if variant in ("left out", "kept"):
        return ("full" if variant == "left out" else "kept"), None
    name, share = variant.split(" >= ")
    return name.split()[0], float(share)


def summary(result: dict) -> dict:
    """The slim summary of a run with relation neurons that the report reads
    (:mod:`mkn.report.relation_evidence`): known items, suppression, per set; and the edits."""
    methods = sorted({row["method"] for row in result["rows"]})
    if len(methods) != 1:  # the slim summary has no method column: one method's rows only
        raise SystemExit(f"--summary summarizes one method's sets; this run measured "
                         f"{', '.join(methods) or 'none'} (rerun with --methods NAME)")
    groups: dict[str, list[dict]] = defaultdict(list)
    edits: dict[tuple, list[dict]] = defaultdict(list)
    for row in result["rows"]:
        if row.get("kind") == "edit":
            edits[row["generic"], row["set"] == "random"].append(row)
        elif row["known"] and row["mode"] == "suppress":
            groups[row["generic"]].append(row)
    sets = []
    for variant, rows in groups.items():
        kind, share = variant_kind(variant)
        sets.append({"set": variant, "kind": kind, "share": share, "items": len(rows),
                     "neurons": statistics.median(r["neurons"] for r in rows),
                     **{key: _slim(clustered_interval([(r["fact_id"], r[field]) for r in rows
                                                       if r.get(field) is not None]))
                        for key, field in SUMMARY_KEYS.items()}})
    order = {"full": 0, "kept": 1, "fact": 2, "relation": 3, "contrastive": 4}
    sets.sort(key=lambda r: (r["share"] or 0, order[r["kind"]]))
    slim_edits = []
    for (variant, is_random), rows in edits.items():
        kind, share = variant_kind(variant)
        slim_edits.append({
            "set": variant, "kind": kind, "share": share, "random": is_random, "edits": len(rows),
            **{key: [sum(x for r in rows for x in r[key]), sum(len(r[key]) for r in rows)]
               for key in ("efficacy", "generalization", "portability")},
            **{key: _slim(clustered_interval([(r["fact_id"], statistics.fmean(r[field]))
                                              for r in rows if r[field]]))
               for key, field in (("same", "same_relation"), ("other", "other_relation"))}})
    overlap = result.get("relation_overlap", {})
    return {"kind": KIND, "command": result["command"], "model": result["model"],
            "method": methods[0],
            "dtype": result["dtype"], "cpu": result["cpu"], "data": result["data"],
            "languages": result["languages"], "facts": len(result["facts"]),
            "relation_facts": result["relation_facts"],
            "reference_overlap": max(overlap.values()) if overlap else None,
            "minutes": result["seconds"] / 60, "sets": sets, "edits": slim_edits}


def _slim(entry: dict) -> dict:
    return {k: entry[k] for k in ("value", "ci95", "n", "facts")}


def rendered(path: Path) -> dict:
    """A saved result, or a partial one (its settings, rows and finished facts) shaped like
    it."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    if "settings" not in saved:
        return saved
    return {**saved["settings"], "rows": saved["rows"], "done_facts": saved["done_facts"],
            "relations": sorted({r["relation"] for r in saved["rows"]})}


def header(result: dict) -> str:
    """What was measured, in one paragraph (a partial run says how far it got)."""
    done = result.get("done_facts")
    facts = (f"{len(result['facts'])} facts" if done is None
             else f"{len(done)} of {len(result['facts'])} facts (partial run)")
    relations = ""
    if result.get("relation_shares"):
        relations = (f"; relation neurons from {result['relation_facts']} known reference "
                     f"facts per relation, shares {', '.join(map(str, result['relation_shares']))}"
                     + (f", contrastive {result['contrastive']:g}" if result.get("contrastive")
                        else ""))
    took = (f"; {result['seconds'] / 60:.1f} min ({result['seconds_reference'] / 60:.1f} for "
            "the reference lists)" if "seconds" in result else "")
    return (f"{result['data']}, languages {','.join(result['languages'])}, {facts} of "
            f"{', '.join(result['relations'])}; {result['model']} "
            f"({result.get('dtype', 'auto')}), {result['steps']} steps, "
            + (f"at most {result['max_queries']} queries" if result["max_queries"]
               else "every query")
            + f" attributed; {result['draws']} random draws, {result['unrelated']} unrelated "
            f"facts, {result['same_relation']} same-relation facts{relations}{took}")

if __name__ == "__main__":
    main()

"""Fact neurons or relation neurons? The plain-words answer, from a measured summary (issue 25).

``benchmarks/bench_controls.py --summary FILE`` writes a slim summary of one controls run with
relation neurons (``kind: relation-neurons``): per set (the full set, its fact set and relation
set at each relation-neuron share, the contrastive fact set) the median relative change of the
fact's own p(gold) under suppression, of facts of the same relation, of other relations and of
random sets of the same shape, each with its bootstrap 95% interval over facts (known items,
reference facts held out), and the edits through each set. :func:`answer` reads it against the
target of issue 25 and :func:`section` renders it for BENCHMARKS and RESULTS (``mkn reproduce
--render`` adds every ``relation-neurons-*.json`` found beside the study's JSON). Nothing here
is typed by hand: the words follow from the numbers.
"""

from __future__ import annotations

from pathlib import Path

from mkn.experiments.common import few_facts, fmt_ci, markdown_table
from mkn.localization.relations import DEFAULT_THRESHOLD
from mkn.runs.directory import read_json

KIND = "relation-neurons"
PATTERN = "relation-neurons-*.json"
# issue 25's target for a fact set: own p(gold) drops >= 80% (median), same-relation facts
# move <= 20%, other relations <= 15%
TARGET = {"own": -0.80, "same": 0.20, "other": 0.15}


def _value(entry: dict | None) -> float | None:
    return None if not entry else entry.get("value")


def meets(row: dict) -> bool:
    """The set meets the target by its medians (a missing control fails it)."""
    own, same, other = (_value(row.get(k)) for k in ("own", "same", "other"))
    return (own is not None and same is not None and other is not None
            and own <= TARGET["own"] and abs(same) <= TARGET["same"]
            and abs(other) <= TARGET["other"])


def _pct(entry: dict | None) -> str:
    """A relative change as a signed percentage with its interval."""
    if not entry or entry.get("value") is None:
        return "not measured"
    low, high = entry["ci95"]
    return (f"{100 * entry['value']:+.0f}% [{100 * low:+.0f}, {100 * high:+.0f}]"
            + few_facts(entry.get("facts")))


def _rate(edit: dict) -> str:
    done, total = edit["efficacy"]
    return f"{done} of {total} edits take" if total else "no edit"


def _name(row: dict) -> str:
    kind, share = row["kind"], row.get("share")
    if kind == "full":
        return "the full set (generic neurons left out)"
    if kind == "kept":
        return "the full set with the generic neurons kept"
    if kind == "fact":
        return f"the fact set (relation neurons at share >= {share:g} left out)"
    if kind == "relation":
        return f"the relation set (share >= {share:g})"
    return f"the contrastive fact set (>= {share:g} of the largest excess over the relation's mean)"


def answer(summary: dict) -> list[str]:
    """Plain-words paragraphs: are there fact-specific neurons on this model, and how large are
    they against relation neurons? (module docstring)"""
    sets = summary["sets"]
    full = next((r for r in sets if r["kind"] == "full"), None)
    facts = sorted((r for r in sets if r["kind"] == "fact"), key=lambda r: r["share"])
    out = []
    if full:
        out.append(
            f"On {summary['model']} and {summary['data']} ({full['items']} known items of "
            f"{summary['facts']} held-out facts, reference facts of each relation held out: "
            f"overlap {summary.get('reference_overlap', '?')}), suppressing a fact's full set "
            f"(median {full['neurons']:g} neurons) changes its own p(gold) by {_pct(full['own'])},"
            f" facts of the same relation by {_pct(full['same'])} and facts of other relations "
            f"by {_pct(full['other'])} (random sets of the same shape: "
            f"{_pct(full['random'])}).")
    met = [r for r in facts if meets(r)]
    if met:
        best = min(met, key=lambda r: r["own"]["value"])
        partial = best["own"]["ci95"][1] > TARGET["own"]
        relation = next((r for r in sets if r["kind"] == "relation"
                         and r["share"] == best["share"]), None)
        out.append(
            f"**Yes, there are fact-specific neurons, and the target is met** by {_name(best)}: "
            f"median {best['neurons']:g} neurons, own p(gold) {_pct(best['own'])}, same "
            f"relation {_pct(best['same'])}, other relations {_pct(best['other'])} (target: own "
            f"<= {100 * TARGET['own']:.0f}%, same relation within {100 * TARGET['same']:.0f}%, "
            f"other relations within {100 * TARGET['other']:.0f}%)."
            + (" The target holds for the medians; the interval of the own drop reaches "
               f"{100 * best['own']['ci95'][1]:+.0f}%, so it is not met by the whole interval."
               if partial else ""))
        if relation:
            damage = (_value(relation["same"]) is not None
                      and abs(relation["same"]["value"]) > TARGET["same"])
            out.append(
                (f"Against the full set's median {full['neurons']:g} neurons, the fact set "
                 f"keeps {best['neurons']:g}; " if full else "")
                + f"the relation set at that share (median "
                f"{relation['neurons']:g} neurons, on the {relation['items']} items that have "
                f"any) changes own p(gold) by {_pct(relation['own'])} and same-relation facts by "
                f"{_pct(relation['same'])}"
                + (": the damage to the relation's other facts sits in the relation neurons."
                   if damage else "."))
    elif facts:
        curve = "; ".join(f"share >= {r['share']:g}: own {_pct(r['own'])}, same relation "
                          f"{_pct(r['same'])}" for r in facts)
        out.append("**No relation-neuron threshold meets the target on this model.** The "
                   f"trade-off (own drop against same-relation drop): {curve}.")
        local = [r for r in facts if _value(r["same"]) is not None
                 and abs(r["same"]["value"]) <= TARGET["same"]]
        if local:
            best = min(local, key=lambda r: r["own"]["value"])
            out.append(
                "So there are fact-specific neurons, but they hold less of the fact than the "
                f"papers' sets: {_name(best)} (median {best['neurons']:g} neurons) keeps the "
                f"relation's other facts within {100 * TARGET['same']:.0f}% "
                f"({_pct(best['same'])}) and changes its own p(gold) by {_pct(best['own'])}"
                + (f", against {_pct(full['own'])} for the full set." if full else "."))
        else:
            out.append("No fact set keeps the relation's other facts within "
                       f"{100 * TARGET['same']:.0f}%: on this model and data the located sets "
                       "are mostly relation neurons.")
    contrastive = next((r for r in sets if r["kind"] == "contrastive"), None)
    if contrastive:
        out.append(
            f"The contrastive score ({_name(contrastive)}; measured on the {contrastive['items']}"
            f" items whose relation has enough known reference facts in their language) gives "
            f"own {_pct(contrastive['own'])}, same relation {_pct(contrastive['same'])}, other "
            f"relations {_pct(contrastive['other'])}: it "
            + ("meets the target too." if meets(contrastive) else "does not meet the target"
               + (", so the numbers support leaving relation neurons out over the contrast."
                  if met else ".")))
    default = next((r for r in facts if r["share"] == DEFAULT_THRESHOLD), None)
    if default:
        out.append(f"mkn's default fact set (relation share >= {DEFAULT_THRESHOLD:g}) "
                   + ("meets the target here." if meets(default) else
                      f"does not meet the target here (own {_pct(default['own'])}, same "
                      f"relation {_pct(default['same'])})."))
    edits = {(e["set"], e["random"]): e for e in summary.get("edits", [])}
    if edits:
        parts = []
        for (name, is_random), e in edits.items():
            if is_random:
                continue
            control = edits.get((name, True))
            parts.append(f"{_name(e)}: {_rate(e)} (random set of its shape: "
                         f"{_rate(control) if control else '-'}), same-relation neighbours "
                         f"{_pct(e['same'])}, other relations {_pct(e['other'])}")
        out.append("Editing (Dai et al.'s edit to another object of the relation, p(new) > "
                   "p(old)) through each set: " + "; ".join(parts) + ".")
    return out


def table(summary: dict) -> str:
    """The suppression effects of every set, with intervals (known items)."""
    rows = [[_name(r), r["items"], f"{r['neurons']:g}", fmt_ci(r["own"]), fmt_ci(r["same"]),
             fmt_ci(r["other"]), fmt_ci(r["random"]), "yes" if meets(r) else "no"]
            for r in summary["sets"]]
    return markdown_table(["set (suppressed)", "items", "neurons (median)",
                           "own p(gold) [95% CI]", "same-relation facts [95% CI]",
                           "other-relation facts [95% CI]", "random set [95% CI]",
                           "meets the target"], rows)


def _share(pair: list[int] | None) -> str:
    return f"{pair[0]}/{pair[1]}" if pair and pair[1] else "-"


def edit_table(summary: dict) -> str:
    """Edits through each set and a random set of its shape: queries where p(new) > p(old)
    (the edit query, its paraphrases, the other languages that know the fact), and locality."""
    rows = [[("random set shaped like " if e["random"] else "") + _name(e), e["edits"],
             _share(e["efficacy"]), _share(e.get("generalization")),
             _share(e.get("portability")), fmt_ci(e["same"]), fmt_ci(e["other"])]
            for e in sorted(summary.get("edits", []), key=lambda e: (e["share"] or 0, e["kind"],
                                                                     e["random"]))]
    return markdown_table(["edited set", "edits", "efficacy", "generalization", "portability",
                           "same-relation facts [95% CI]", "other-relation facts [95% CI]"],
                          rows)


def block(summary: dict) -> list[str]:
    """One summary: where it came from, the suppression and edit tables, and the answer."""
    return [f"`{summary['command']}` ({summary['model']}, {summary['dtype']}, "
            f"{summary['minutes']:.1f} min on {summary['cpu']})", "",
            "Suppression (x0) of each set, known items; medians with bootstrap 95% intervals "
            "over facts:", "", table(summary), "",
            "Edits (Dai et al.'s, to another object of the relation; success: p(new) > p(old)) "
            "and their locality (relative change of p(gold) of same- and other-relation facts "
            "known in each language; per edit the mean over its neighbours):", "",
            edit_table(summary), "", *[p + "\n" for p in answer(summary)]]


def section(summaries: list[dict]) -> list[str]:
    """A RESULTS section: per summary, where it came from, the table and the answer."""
    if not summaries:
        return []
    out = ["## Fact neurons or relation neurons? (issue 25)", "",
           "From `benchmarks/bench_controls.py` (its summaries saved beside the study's JSON; "
           "not part of the study run). A *relation neuron* of relation r is a knowledge neuron "
           "of at least a share of r's reference facts (held out from the measured facts); a "
           "fact's *fact set* leaves them out, its *relation set* is the rest "
           "(`mkn.localization.relations`).", ""]
    for summary in summaries:
        out += [f"### {summary['data']}", "", *block(summary)]
    return out + [in_short(summaries), ""]


def in_short(summaries: list[dict]) -> str:
    """One sentence over every summary: where a fact set meets the target, where none does."""
    met = [s["data"] for s in summaries if any(meets(r) for r in s["sets"] if r["kind"] == "fact")]
    missed = [s["data"] for s in summaries if s["data"] not in met]
    models = ", ".join(sorted({s["model"] for s in summaries}))
    return (f"**In short ({models}):** "
            + (f"a fact set with the relation neurons left out meets the target on "
               f"{', '.join(met)}" if met else "no fact set meets the target on any data set")
            + (f"; on {', '.join(missed)} none does, and the trade-off above is the best there"
               if missed and met else "")
            + ". " + _relation_reading(summaries))


def _relation_reading(summaries: list[dict]) -> str:
    """Whether suppressing the full sets moves same-relation facts more than other-relation
    facts, by intervals that do not overlap, in every summary."""
    full = [r for s in summaries for r in s["sets"] if r["kind"] == "full"
            and _value(r["same"]) is not None and _value(r["other"]) is not None]
    apart = [r for r in full if r["same"]["ci95"][1] < r["other"]["ci95"][0]]
    if full and len(apart) == len(full):
        return ("Suppressing a full set lowers other facts of its own relation more than facts "
                "of other relations on every data set here (the intervals do not overlap): read "
                "a knowledge-neuron set as partly its relation's neurons unless the relation "
                "neurons are left out.")
    return (f"Suppressing a full set lowers same-relation facts more than other-relation facts "
            f"(intervals apart) on {len(apart)} of {len(full)} data sets.")


def load(folder: Path, model: str | None = None) -> list[dict]:
    """Every relation-neuron summary in ``folder`` (``relation-neurons-*.json``), by name, of
    ``model`` only when given (its name, as a study names it); a file of another kind is refused
    in one line."""
    found = []
    for path in sorted(Path(folder).glob(PATTERN)):
        summary = read_json(path)
        if not isinstance(summary, dict) or summary.get("kind") != KIND:
            raise ValueError(f"{path}: not a relation-neuron summary (kind {KIND!r} expected)")
        if model is None or Path(str(summary.get("model"))).name == model:
            found.append(summary)
    return found

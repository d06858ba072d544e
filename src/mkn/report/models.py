"""Several models' studies side by side, per claim, and what they conclude in plain words.

Each model's claim rows are those of its own page (:func:`mkn.report.results.claims` with
Holm's correction over that model's claims: a model is its own family of tests). A claim tested
on a data part is matched across models by (claim id, part name); a model whose study did not
run that part has no row for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mkn.localization.stats import markdown_table

# Verdict classes, read from the first word of a verdict after Holm
AGREES, DISAGREES, INCONCLUSIVE, UNTESTABLE, NOT_APPLICABLE, ABSENT = (
    "agrees", "disagrees", "inconclusive", "untestable", "not applicable", "not run")


def verdict_class(verdict: str | None) -> str:
    """The class of a verdict after Holm ("inconclusive after Holm" is inconclusive; "not
    measured" and "untested" count as untestable here)."""
    if verdict is None:
        return ABSENT
    first = verdict.split()[0]
    if first in (AGREES, DISAGREES, INCONCLUSIVE):
        return first
    if verdict.startswith("not applicable"):
        return NOT_APPLICABLE
    return UNTESTABLE


def across(classes: Mapping[str, str]) -> str:
    """One cell for a claim over models (``{model: class}``): the shared class, or the split."""
    tested = {m: c for m, c in classes.items() if c != ABSENT}
    if len(set(tested.values())) == 1:
        shared = next(iter(tested.values()))
        if len(tested) == 1:
            return f"{shared} (one model ran it)"
        return f"{shared} on {'both models' if len(tested) == 2 else 'every model'}"
    return "; ".join(f"{model} {cls}" for model, cls in tested.items())


def matched(rows: Mapping[str, Sequence[list]]) -> list[tuple[str, str, str, dict[str, list]]]:
    """``(id, statement, part, {model: row})`` for every (claim, part) any model tested, in the
    first model's order (then the others' extra rows). Rows are ``with_holm(claims(study))``."""
    keyed: dict[tuple[str, str], tuple[str, dict[str, list]]] = {}
    for model, model_rows in rows.items():
        for row in model_rows:
            entry = keyed.setdefault((row[0], row[2]), (row[1], {}))
            entry[1][model] = row
    return [(cid, statement, part, by_model)
            for (cid, part), (statement, by_model) in keyed.items()]


def side_by_side(rows: Mapping[str, Sequence[list]],
                 counts: Mapping[str, Mapping[tuple[str, str], dict]] | None = None) -> str:
    """Per claim and part: each model's verdict after Holm (with its p), and the claim across
    models. ``counts``: per model, ``{(claim, part): {"measured": n, "needed": n}}`` (facts
    measured, and facts needed for the power target from that model's own interval;
    :func:`mkn.report.power.claim_needs`), shown in each cell where known."""
    models = list(rows)
    header = ["id", "data", *[f"{m}: verdict after Holm (p Holm; facts measured / needed)"
                              for m in models], "across models"]
    table = []
    for cid, _, part, by_model in matched(rows):
        cells = [_cell(by_model[m], (counts or {}).get(m, {}).get((cid, part)))
                 if m in by_model else f"{ABSENT} on this model"
                 for m in models]
        classes = {m: verdict_class(by_model[m][-1] if m in by_model else None)
                   for m in models}
        table.append([cid, part, *cells, across(classes)])
    return markdown_table(header, table)


# what two studies of one model must share to be read as one study (one column, one Holm family)
SAME_SETUP = ("model", "dtype", "seed", "steps", "rule", "max_queries", "methods",
              "experiment_method", "known", "generic", "relation_neurons")


def one_per_model(studies: Sequence[dict]) -> list[dict]:
    """``studies`` with those of one model and setup (:data:`SAME_SETUP`) and disjoint data
    parts merged into one (parts in order, minutes added, sources joined): a model's study run
    in pieces (e.g. a part that needs another sample size) is one column and one family of tests
    beside the other models."""
    merged: list[dict] = []
    for study in studies:
        setup = {k: study["config"].get(k) for k in SAME_SETUP}
        names = {p["part"]["name"] for p in study["parts"]}
        into = next((m for m in merged if {k: m["config"].get(k) for k in SAME_SETUP} == setup
                     and not names & {p["part"]["name"] for p in m["parts"]}), None)
        if into is None:
            merged.append(study)
            continue
        merged[merged.index(into)] = {
            **into, "parts": [*into["parts"], *study["parts"]],
            "config": {**into["config"], "parts": [*into["config"].get("parts", []),
                                                   *study["config"].get("parts", [])]},
            "minutes": (into.get("minutes") or 0) + (study.get("minutes") or 0),
            "source": f"{into.get('source', '?')} + {study.get('source', '?')}"}
    return merged


def wall_times(studies: Mapping[str, dict]) -> str:
    """Per data part, each model's facts and wall time (minutes, the sum of the part's phases),
    and each study's whole wall time."""
    parts: dict[str, dict[str, str]] = {}
    for model, study in studies.items():
        for part in study["parts"]:
            parts.setdefault(part["part"]["name"], {})[model] = (
                f"{len(part['facts'])} facts, {sum(part['seconds'].values()) / 60:.1f} min")
    rows = [[name, *[by_model.get(m, ABSENT) for m in studies]]
            for name, by_model in parts.items()]
    rows.append(["**the whole study**", *[f"{s['minutes']:.1f} min" if s.get("minutes")
                                          is not None else "?" for s in studies.values()]])
    return markdown_table(["part", *studies], rows)


def _cell(row: list, count: Mapping | None) -> str:
    inside = [row[-2]]
    if count and count.get("measured") is not None:
        needed = count.get("needed")
        inside.append(f"{count['measured']} / {needed if needed is not None else '-'}")
    return f"{row[-1]} ({'; '.join(inside)})"


def _claim_list(items: list[tuple[str, str, str]]) -> str:
    return "; ".join(f"{cid} ({part}): {statement}" for cid, statement, part in items)


def conclusions(rows: Mapping[str, Sequence[list]]) -> list[str]:
    """"What we conclude": the claims that hold (agree on a model, disagree on none), fail,
    split, cannot be told apart from their null, or cannot be tested on any model here; then
    what a user should and should not take from knowledge-neuron results, in words that follow
    from those verdicts."""
    groups: dict[str, list[tuple[str, str, str]]] = {k: [] for k in (
        "replicated", "one model", "fails", "split", "cannot tell", "untestable")}
    for cid, statement, part, by_model in matched(rows):
        classes = [verdict_class(row[-1]) for row in by_model.values()]
        tested = [c for c in classes if c not in (UNTESTABLE, NOT_APPLICABLE, ABSENT)]
        item = (cid, statement, part)
        if not tested:
            groups["untestable"].append(item)
        elif AGREES in tested and DISAGREES in tested:
            groups["split"].append(item)
        elif DISAGREES in tested:
            groups["fails"].append(item)
        elif AGREES in tested:
            replicated = tested.count(AGREES) == len(tested) and len(tested) > 1
            groups["replicated" if replicated else "one model"].append(item)
        else:
            groups["cannot tell"].append(item)
    models = ", ".join(rows)
    words = {
        "replicated": f"**Holds on every model that could test it** ({models})",
        "one model": ("**Holds on one model, not shown on another** (inconclusive, untestable "
                      "or not run there)" if len(rows) > 1 else f"**Holds** on {models}"),
        "fails": "**Fails**: the interval lies on the other side of the null",
        "split": "**Split**: holds on one model and fails on another",
        "cannot tell": "**Cannot tell**: inconclusive after Holm on every model that tested it",
        "untestable": "**Untestable on these models** (too few known items, not applicable or "
                      "not measured)"}
    out = [f"Generated from the verdicts after Holm above ({models}); a claim is one (claim, "
           "data part) row.", ""]
    out += [f"- {words[key]}: {_claim_list(items)}." for key, items in groups.items() if items]
    held = {cid for key in ("replicated", "one model") for cid, _, _ in groups[key]}
    failed = {cid for key in ("fails", "split") for cid, _, _ in groups[key]}
    out += ["", "What a user should and should not take from knowledge-neuron results here:", ""]
    out.append("- A neuron set's effect is evidence only beside its controls: random sets of "
               "the same shape, magnitude-matched sets and facts of the same relation. Every "
               "verdict above is a difference against such a control, not a raw effect.")
    if held:
        out.append(f"- Where a claim holds ({', '.join(sorted(held))}), it holds as a "
                   "difference on average over facts, not for every fact: read the intervals.")
    if failed:
        out.append(f"- Do not rely on {', '.join(sorted(failed))}: on at least one model the "
                   "effect goes the other way.")
    if groups["cannot tell"] or groups["one model"]:
        out.append("- An inconclusive verdict is not evidence against a claim: its interval "
                   "still holds effects on both sides of the null (where the study was sized "
                   "from a pilot, the sample-size section names the claims short of their "
                   "power target).")
    if groups["untestable"]:
        out.append("- A claim untestable here (a language or family the model hardly knows) "
                   "says nothing either way about that claim.")
    out.append("- A claim that holds on one model and was not replicated on another is a "
               "property of that model until shown elsewhere"
               + (": these pages test a single model." if len(rows) == 1 else "."))
    return out

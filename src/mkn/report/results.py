"""``docs/RESULTS.md`` from a study's ``study.json`` alone (see :mod:`mkn.jobs.study`).

Every number in the page comes from the JSON; the verdicts on the papers' claims are computed
from the bootstrap intervals by :func:`verdict`, so rerunning the study rewrites the reading too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mkn.experiments import EXPERIMENTS
from mkn.experiments.common import markdown_table
from mkn.experiments.metrics import holm
from mkn.report import models, power, relation_evidence
from mkn.runs.directory import check_ours, read_json, write_atomic, write_json

CAVEATS = """\
- **What "known" means.** BMLAMA items are known when the gold object ranks first among ten
  candidates of its relation (chance: 10%, so some known items are lucky); mLAMA items when
  greedy decoding reproduces the object on most paraphrases (strict). A relation that ranks first
  without ever being decoded (P413 in bmlama17) was left out of the sample.
- **Protocol.** One protocol for every method: AMIG's thresholds (en 0.3, others 0.2 of the
  maximum), refinement p = 0.3, the same sampled facts, queries and integration steps, generic
  neurons left out with one reference list per method, and the same interventions (x0 / x2 at
  every position). Effects are relative changes of p(gold): enhancements of small probabilities
  are unbounded, so medians, not means, summarise them.
- **Controls.** Random sets have as many neurons in each layer as the set they control (2-3
  draws, seeded by the set's content: the same set gets the same draws whichever method found
  it); magnitude-matched sets (localization quality) are random neurons of the same layers
  with a similar clean activation magnitude; unrelated facts are of other relations and known
  in the same language, same-relation facts of the fact's own relation. Selectivity and
  specificity are oriented so that higher is better.
- **Hold-out.** Each part's generic-neuron reference sample is drawn from facts outside the
  part's sample (the overlap is checked and printed above; a non-zero overlap stops the run);
  the generic rule's threshold was chosen on facts disjoint from the study's
  (benchmarks/bench_generic_rule.py, docs/BENCHMARKS.md).
- **Copying.** An item is *copyable* when its gold object appears in its prompt before the
  slot ("Toyota Isis" -> Toyota); every claim is judged on all items and again without the
  facts that have one.
- **MATRICE with one query.** MATRICE's uncertainty within a language is over its paraphrases;
  with one query per language (BMLAMA) its per-language ranking equals AMIG's (a tie on every
  item), and only its cross-language weighting differs.
- **Precision.** The study runs in the dtype that `--dtype auto` chose on its machine (the
  setup line names it and the CPU): bfloat16 where the CPU computes it natively, float32
  elsewhere. On 12 of its queries
  (benchmarks/bench_dtype_agreement.py, docs/BENCHMARKS.md) bfloat16 scores correlate with
  float32 at r >= 0.99 and share 90-100% of the top-20 neurons and ~90% of the knowledge-neuron
  set, but p(gold) differs by 6% (median, up to 23%): single small effects are within bfloat16
  noise, the aggregated comparisons above are not.
"""


@dataclass(frozen=True)
class Measured:
    """One measured row of a claim: what was measured, the verdict and its p-value."""

    text: str
    verdict: str
    p: float | None = None
    method: str = ""  # claims measured per method (the layer claim)
    entry: dict | None = None  # the tested interval (what a power plan scales)
    null: float | None = None


@dataclass(frozen=True)
class Claim:
    """A pre-registered claim: the statement, the experiment whose output tests it, the test
    statistic and its null, and ``measure(part) -> [Measured]``; ``before``: how earlier pages
    worded it (to pair old and new verdicts)."""

    id: str
    statement: str
    experiment: str
    statistic: str
    null: str
    measure: Callable[[dict], list[Measured]]
    null_value: float | None = 0.0  # None: no numeric null (two intervals compared)
    before: tuple[str, ...] = ()


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def with_ci(entry: dict | None) -> str:
    """``0.42 [0.31, 0.55] (n=120)`` from an ``interval`` entry."""
    if not entry or entry.get("value") is None:
        return "n/a (no items)"
    low, high = entry["ci95"]
    facts = f", {entry['facts']} facts" if "facts" in entry else ""
    return f"{fmt(entry['value'])} [{fmt(low)}, {fmt(high)}] (n={entry['n']}{facts})"


def verdict(entry: dict | None, threshold: float) -> str:
    """``agrees`` when the whole 95% interval is strictly on the claimed side of ``threshold``
    (low > threshold), ``disagrees`` when it is wholly strictly on the other side
    (high < threshold); an interval that touches the null is ``inconclusive``."""
    if not entry or entry.get("value") is None:
        return "not measured"
    low, high = entry["ci95"]
    above, below = low > threshold, high < threshold
    return "agrees" if above else "disagrees" if below else "inconclusive"


def separated(a: dict, b: dict) -> str:
    """``agrees`` when interval ``a`` lies wholly below interval ``b`` (a stronger decrease)."""
    if not a or not b or a.get("value") is None or b.get("value") is None:
        return "not measured"
    if a["ci95"][1] < b["ci95"][0]:
        return "agrees"
    if a["ci95"][0] > b["ci95"][1]:
        return "disagrees"
    return "inconclusive"


def upper_share(histogram: Sequence[int]) -> float | None:
    """Share of neurons in the upper third of the layers."""
    total = sum(histogram)
    if not total:
        return None
    return sum(histogram[len(histogram) * 2 // 3:]) / total


def _tied(entry: dict) -> bool:
    return entry.get("value") == 0.5 and entry.get("ci95") == [0.5, 0.5]


MIN_FACTS = 8  # a claim measured on fewer facts is untestable here (pre-registered)


def tested(entry: dict | None, null: float) -> list:
    """``[verdict, p]``: the strict verdict of ``entry`` against ``null`` and its bootstrap
    p-value (None where the entry has none: a study written before p-values). Measured on
    fewer than :data:`MIN_FACTS` facts (the model knows too little here), it is *untestable*
    and left out of Holm."""
    entry = entry or {}
    facts = entry.get("facts", entry.get("n"))
    if entry.get("value") is not None and facts is not None and facts < MIN_FACTS:
        return [f"untestable (the model knows too little here: {facts} facts, fewer than "
                f"{MIN_FACTS})", None]
    return [verdict(entry, null), entry.get("p", {}).get(str(float(null)))]


HOLM_ALPHA = 0.05


def with_holm(rows: list[list]) -> list[list]:
    """Claim rows ``[..., verdict, p]`` -> ``[..., verdict, p, Holm p, verdict after Holm]``:
    Holm's correction over every claim with a p-value; a
    decided verdict whose Holm-adjusted p is not below 0.05 becomes inconclusive."""
    adjusted = holm([row[-1] for row in rows])
    out = []
    for row, p_holm in zip(rows, adjusted, strict=True):
        *head, said, p = row
        decided = said in ("agrees", "disagrees")
        if decided and p_holm is None:
            after = f"{said} (no p-value: not corrected)"
        elif decided and p_holm >= HOLM_ALPHA:
            after = "inconclusive after Holm"
        else:
            after = said
        out.append([*head, said, fmt(p) if p is not None else "-",
                    fmt(p_holm) if p_holm is not None else "-", after])
    return out


def _paired(part: dict, experiment: str, pair: str, key: str | None, what: str,
            same_sets: tuple[str, str] | None = None) -> list[Measured]:
    """A claim judged on a paired share (> 0.5: the first method wins); ``same_sets``: the two
    methods whose identical sets make the comparison not applicable."""
    entry = part["experiments"][experiment]["headline"]["paired"].get(pair)
    if entry is not None and key is not None:
        entry = entry.get(key)
    if entry is None:
        return [Measured("not measured", "not measured")]
    text = f"{what}: {with_ci(entry)}"
    if same_sets and (part["localization"].get(same_sets[0], {}).get("same_sets_as")
                      == same_sets[1]):
        return [Measured(text, f"not applicable ({same_sets[0]} found exactly "
                               f"{same_sets[1]}'s sets: not a separate result)")]
    if _tied(entry):
        return [Measured(text, "not applicable (a tie on every item: the two rankings are "
                               "identical here)")]
    return [Measured(text, *tested(entry, 0.5), entry=entry, null=0.5)]


def _curves(pair: str, same: tuple[str, str] | None = None) -> Callable[[dict], list]:
    def measure(part: dict) -> list[Measured]:
        entry = part["experiments"]["size-curves"]["headline"]["paired"].get(pair, {})
        return _paired(part, "size-curves", pair, "suppress_selectivity",
                       f"share of items where {pair} on the area under the suppression "
                       f"selectivity curve (specificity: "
                       f"{with_ci(entry.get('suppress_specificity'))})", same)
    return measure


def _shared(pair: str, what: str, same: tuple[str, str] | None = None
            ) -> Callable[[dict], list]:
    return lambda part: _paired(part, "shared-sets", pair, None, what, same)


def _fact_checking(part: dict) -> list[Measured]:
    h = part["experiments"]["fact-checking"]["headline"]
    beside = (f"AUC(DKN) {with_ci(h.get('auc_degenerate_neurons'))}, AUC(model) "
              f"{with_ci(h.get('auc_model_judge'))}; F1(DKN) "
              f"{with_ci(h.get('degenerate_neurons'))} beside an always-true judge's "
              f"{with_ci(h.get('f1_always_true'))}")
    if "auc_difference_pairs" in h:  # AMIG's claim: pairs against random candidate pairs
        return [Measured(f"AUC(DKN) - AUC(random pairs of the same top candidates): "
                         f"{with_ci(h['auc_difference_pairs'])}; AUC(DKN) - AUC(random neurons "
                         f"of the same shape): {with_ci(h['auc_difference_random'])}; {beside}",
                         *tested(h["auc_difference_pairs"], 0.0),
                         entry=h["auc_difference_pairs"], null=0.0)]
    if "auc_difference_random" in h:  # a study written before the candidate-pair control
        return [Measured(f"AUC(DKN) - AUC(random neurons of the same shape): "
                         f"{with_ci(h['auc_difference_random'])}; {beside}",
                         *tested(h["auc_difference_random"], 0.0))]
    return [Measured(f"F1(DKN) - F1(random): {with_ci(h.get('f1_difference_random'))} "
                     "(a study written before the AUC)", *tested(h.get("f1_difference_random"),
                                                                0.0))]


def _enhancement(part: dict) -> list[Measured]:
    h = part["experiments"]["enhancement"]["headline"]
    return [Measured(f"selectivity: {with_ci(h.get('selectivity'))}; "
                     + (f"weak items that become known (the run's criterion): "
                        f"{with_ci(h['known_gain_weak_language'])}; "
                        if "known_gain_weak_language" in h else "")
                     + f"greedy accuracy gain: {with_ci(h['accuracy_gain_weak_language'])}",
                     *tested(h.get("selectivity"), 0.0), entry=h.get("selectivity"), null=0.0)]


def _injection(part: dict) -> list[Measured]:
    h = part["experiments"]["injection"]["headline"]
    return [Measured(f"portability minus random-edit portability: "
                     f"{with_ci(h.get('portability_over_random'))}; portability "
                     f"{with_ci(h['portability'])}"
                     + (f" over the {h['edits']['took']} edits that took on their own query "
                        f"(p(new) > p(old); {h['edits']['did_not_take']} did not)"
                        if "edits" in h else ""),
                     *tested(h.get("portability_over_random"), 0.0),
                     entry=h.get("portability_over_random"), null=0.0)]


def _paraphrases(part: dict) -> list[Measured]:
    jaccard = part["experiments"]["audits"]["headline"]["jaccard"]
    if not jaccard["paraphrases"]["n"]:
        return []
    return [Measured(f"Jaccard across paraphrases {with_ci(jaccard['paraphrases'])}; same "
                     f"relation {with_ci(jaccard['same_relation'])}",
                     separated(jaccard["same_relation"], jaccard["paraphrases"]))]


def _symmetry(part: dict) -> list[Measured]:
    symmetry = part["experiments"]["audits"]["headline"]["symmetry"]
    if not symmetry["pairs"]:
        return []
    return [Measured(f"selectivity on the reversed fact: "
                     f"{with_ci(symmetry['reversed_selectivity'])}; Jaccard of the two sets "
                     f"{with_ci(symmetry['jaccard_reversed'])}",
                     *tested(symmetry["reversed_selectivity"], 0.0),
                     entry=symmetry["reversed_selectivity"], null=0.0)]


def _layers(part: dict) -> list[Measured]:
    rows = []
    for method, stats in part["localization"].items():
        share = upper_share(stats["language_agnostic"]["layer_histogram"])
        kn_share = upper_share([sum(col) for col in zip(
            *[s["layer_histogram"] for s in stats["per_language"].values()], strict=True)])
        pooled = (f"pooled over neurons: knowledge neurons {fmt(kn_share)}, language-agnostic "
                  f"{fmt(share)} (uniform: 0.333)")
        if stats.get("same_sets_as"):
            rows.append(Measured(pooled, f"not applicable (the same sets as "
                                         f"{stats['same_sets_as']}: not a separate result)",
                                 method=method))
        elif "upper_third_excess" in stats:  # per (fact, language), clustered by fact
            rows.append(Measured(f"share of an item's knowledge neurons in the upper third of "
                                 f"layers minus 1/3: {with_ci(stats['upper_third_excess'])}; "
                                 f"{pooled}", *tested(stats["upper_third_excess"], 0.0),
                                 method=method, entry=stats["upper_third_excess"], null=0.0))
        else:  # a study written before the per-fact statistic
            rows.append(Measured(f"share in the upper third of layers: {pooled}",
                                 "untested (a share pooled over neurons, no interval)"
                                 if kn_share is not None else "not measured", method=method))
    return rows


def _consistency(part: dict) -> list[Measured]:
    h = part["experiments"]["query-consistency"]["headline"]
    entry = h.get("selectivity_difference")
    text = (f"median suppression selectivity, consistent minus inconsistent items: "
            f"{with_ci(entry)}; share of consistent items {with_ci(h.get('consistent_share'))}; "
            f"Spearman (consistency, selectivity) {with_ci(h.get('spearman'))}")
    if not entry or entry.get("value") is None:
        return [Measured(text, "untestable (fewer than 3 facts in a group, or no item with "
                               "two attributed queries)")]
    return [Measured(text, *tested(entry, 0.0), entry=entry, null=0.0)]


# The pre-registered claims: each with its test statistic and null, fixed before the study ran.
# A part tests a claim when it ran the claim's experiment ("localization": every part).
CLAIMS = (
    Claim("C1", "AMIG: AMIG localizes better than B-KN (top-k sets at equal k, per language)",
          "size-curves", "share of (fact, language) items where AMIG's suppression-selectivity "
          "curve has the larger area (a method without neurons loses)", "share = 0.5",
          _curves("amig > ig"), 0.5),
    Claim("C2", "Cao et al.: MATRICE localizes better than AMIG-style IG (top-k sets at equal "
          "k, per language)", "size-curves", "as C1, MATRICE against AMIG", "share = 0.5",
          _curves("matrice > amig", ("matrice", "amig")), 0.5),
    Claim("C3", "Cao et al.: MATRICE's language-agnostic set moves the fact in more languages, "
          "more selectively, than AMIG's (equal k)", "shared-sets",
          "share of facts where MATRICE's shared set has the larger area of mean selectivity "
          "over languages", "share = 0.5",
          _shared("matrice > amig", "share of facts where matrice > amig on the area of the "
                  "mean selectivity over languages", ("matrice", "amig")), 0.5),
    Claim("C4", "AMIG: language-agnostic neurons move the other languages more than one "
          "language's own neurons do (equal k)", "shared-sets",
          "share of facts where the shared set beats the source language's own set in the "
          "other languages", "share = 0.5",
          _shared("amig > amig-source", "share of facts where the shared set beats the source "
                  "language's set in the other languages"), 0.5),
    Claim("C5", "AMIG: degenerate pairs check facts better than random pairs of the same top "
          "candidates", "fact-checking", "ROC AUC of the degenerate-neuron judge minus that of "
          "random pairs of each training fact's own top-k candidates, on (gold, wrong) pairs",
          "difference = 0", _fact_checking,
          before=("AMIG: degenerate neurons check facts",)),
    Claim("C6", "Cao et al.: enhancing shared neurons from other languages raises a weak "
          "language's p(gold), more than random sets do", "enhancement",
          "median selectivity (effect minus the random set's) per weak item", "selectivity = 0",
          _enhancement),
    Claim("C7", "Cao et al.: knowledge injected through one language's neurons transfers to "
          "the others, more than through random neurons", "injection",
          "portability minus random-edit portability, over the edits that took", "difference = 0",
          _injection),
    Claim("C8", "KN thesis (Niu et al. audit): a fact's paraphrases share their knowledge "
          "neurons, more than different facts of the relation do", "audits",
          "Jaccard across a fact's paraphrases against Jaccard across facts of its relation "
          "(two intervals apart; no p-value, left out of Holm)", "intervals overlap",
          _paraphrases, None),
    Claim("C9", "KN thesis (Niu et al. audit): suppressing the neurons of (A, r, B) also "
          "suppresses (B, r, A) for a symmetric relation", "audits",
          "median selectivity of the suppression on the reversed fact", "selectivity = 0",
          _symmetry),
    Claim("C10", "Dai / AMIG: knowledge neurons sit in the upper layers", "localization",
          "per (fact, language): share of its knowledge neurons in the upper third of the "
          "layers minus 1/3, clustered by fact; one row per method", "excess = 0", _layers),
    Claim("C11", "Query localization (Chen et al. 2025): facts whose paraphrases share their "
          "neurons (consistent knowledge) are edited through them more successfully than "
          "inconsistent ones", "query-consistency", "median suppression selectivity of "
          "consistent minus inconsistent (fact, language) items (consistent: paraphrase "
          "overlap above the 95th percentile of two different facts' overlap)",
          "difference = 0", _consistency),
)


def claims(study: dict) -> list[list]:
    """``[id, claim, data, measured, verdict, p]`` for every pre-registered claim (:data:`CLAIMS`)
    that a part of ``study`` tests."""
    rows = []
    for part in study["parts"]:
        name = part["part"]["name"]
        for claim in CLAIMS:
            if claim.experiment != "localization" and claim.experiment not in part["experiments"]:
                continue
            for m in claim.measure(part):
                statement = claim.statement + (f" ({m.method})" if m.method else "")
                rows.append([claim.id + (f"/{m.method}" if m.method else ""), statement, name,
                             m.text, m.verdict, m.p])
    return rows


def claims_table() -> str:
    """The pre-registered claims (:data:`CLAIMS`): each one's test statistic and null."""
    return markdown_table(["id", "claim", "tested by", "statistic", "null"],
                          [[c.id, c.statement, f"`{c.experiment}`", c.statistic, c.null]
                           for c in CLAIMS])


# --- old and new verdicts -----------------------------------------------------------------------

def parse_claim_rows(page: str) -> list[dict]:
    """The claim rows of an earlier RESULTS.md (``claim``, ``data``, ``measured`` and its
    ``verdict``: the last column, after Holm where the page had it), read from its claims table:
    the verdicts a new study is compared with."""
    rows, header = [], None
    for line in page.splitlines():
        if not line.startswith("|"):
            if rows:  # the first claims table only (all items)
                break
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if header is None:
            header = cells
            continue
        if set(line) <= set("|- ") or header[:3] not in (["claim", "data", "measured"],
                                                         ["id", "data", "measured"]):
            continue
        row = dict(zip(header, cells, strict=False))
        rows.append({"id": row.get("id"), "claim": row.get("claim", ""), "data": row["data"],
                     "measured": row["measured"], "verdict": cells[-1]})
    return rows


def claim_id(text: str) -> str | None:
    """The pre-registered id of a claim as an earlier page worded it (``C10/amig`` for a
    per-method one)."""
    for claim in CLAIMS:
        for wording in (claim.statement, *claim.before):
            if text.startswith(wording):
                method = re.search(r"\((ig|amig|matrice)\)$", text)
                return claim.id + (f"/{method.group(1)}" if method else "")
    return None


_INTERVAL = re.compile(r"(-?[\d.e+-]+) \[(-?[\d.e+-]+), (-?[\d.e+-]+)\]")


def _tested_interval(measured: str) -> tuple[str, float, float] | None:
    """The tested interval of an earlier page's measured cell: after the last "): " of a paired
    share (its specificity comes first), else the first one."""
    text = measured.rsplit("): ", 1)[-1] if "(specificity:" in measured else measured
    found = _INTERVAL.search(text)
    return None if found is None else (found.group(0), float(found.group(2)),
                                       float(found.group(3)))


def change_reason(before: dict | None, now: list, nulls: dict[str, float], claims: int) -> str:
    """One line: why a claim's verdict changed (``now``: a row of :func:`with_holm` with its id
    first; ``nulls``: claim id -> its null)."""
    if before is None:
        return "new claim (not on the earlier page)"
    old, said, after = before["verdict"].split(" (")[0], now[-4], now[-1].split(" (")[0]
    if before["measured"].startswith(("F1(DKN)", "share in the upper third")) and not \
            after.startswith("not applicable"):
        return ("unchanged; " if old == after else "") + (
            f"tested now by {now[-5].split(':')[0]}; before by "
            f"{before['measured'].split(':')[0]}"
            + (" (pooled over neurons, no interval)" if "upper" in before["measured"]
               else " (which an always-true judge beats)"))
    if old == after:
        return "unchanged"
    if after.startswith("not applicable"):
        return ("the two methods found identical sets here: not a separate result (identical "
                "sets now get identical controls)")
    if after.startswith("untestable"):
        return (f"now {now[-1]}"
                + ("; transfer is counted only over the edits that took on their own query"
                   if "edits that took" in now[-5] else ""))
    if said == old and after.startswith("inconclusive after Holm"):
        return f"Holm's correction over the page's {claims} claims (p {now[-3]}, Holm {now[-2]})"
    tested = _tested_interval(before["measured"])
    null = nulls.get(now[0].split("/")[0])
    if tested and null is not None and old in ("agrees", "disagrees") and null in tested[1:]:
        return (f"the earlier interval {tested[0]} touches the null {null:g}: inconclusive "
                "under the strict rule")
    new = _INTERVAL.search(now[-5].rsplit("): ", 1)[-1] if "(specificity:" in now[-5]
                           else now[-5])
    return (f"the rerun measured {new.group(0) if new else 'another value'}"
            f"{f' (before {tested[0]})' if tested else ''}: more queries per item, a held-out "
            "generic list and content-seeded controls")


def before_after(rows: list[list], earlier: list[dict]) -> str:
    """Old and new verdict of every claim side by side, with a one-line reason for each change
    (``rows``: :func:`with_holm` of :func:`claims`; ``earlier``: :func:`parse_claim_rows`)."""
    by_key = {(r.get("id") or claim_id(r["claim"]), r["data"]): r for r in earlier}
    nulls = {c.id: c.null_value for c in CLAIMS if c.null_value is not None}
    table = []
    for row in rows:
        before = by_key.pop((row[0], row[2]), None)
        table.append([row[0], row[2], before["verdict"] if before else "-", row[-1],
                      change_reason(before, row, nulls, len(rows))])
    for (key, data), before in by_key.items():  # claims no longer on the page
        table.append([key or before["claim"], data, before["verdict"], "-",
                      "not tested by this study"])
    return markdown_table(["id", "data", "verdict before", "verdict now (after Holm)",
                           "why it changed"], table)


def reading(rows: list[list[str]]) -> list[str]:
    """The claims grouped by their verdict after Holm's correction (the last column), in
    words."""
    out = ["Reading, generated from the verdicts after Holm's correction above:", ""]
    for label, meaning in (("agrees", "Where our numbers agree with the papers"),
                           ("disagrees", "Where they do not"),
                           ("inconclusive", "Where this sample cannot tell"),
                           ("untested", "Claims without a test here"),
                           ("untestable", "Untestable here: the model knows too little"),
                           ("not", "Not measured or not applicable here")):
        matching = [f"{row[0]} ({row[2]})" for row in rows
                    if row[-1].split()[0] == label.split()[0]]
        if matching:
            out.append(f"- **{meaning}** ({len(matching)} of {len(rows)}): "
                       + "; ".join(matching) + ".")
    return out


def layer_table(part: dict) -> str:
    rows = []
    for method, stats in part["localization"].items():
        sets = {f"KN {lang}": s["layer_histogram"] for lang, s in stats["per_language"].items()}
        sets["language-agnostic"] = stats["language_agnostic"]["layer_histogram"]
        sets["language-agnostic (soft)"] = stats["language_agnostic"]["soft_layer_histogram"]
        for label, histogram in sets.items():
            rows.append([method, label, sum(histogram), *histogram])
    layers = len(next(iter(part["localization"].values()))["language_agnostic"]
                 ["layer_histogram"])
    return markdown_table(["method", "neurons", "total", *[f"L{i}" for i in range(layers)]],
                          rows)


def overview_table(part: dict) -> str:
    rows = []
    for method, stats in part["localization"].items():
        agnostic = stats["language_agnostic"]
        rows.append([method, *[fmt(s["mean_neurons"]) for s in stats["per_language"].values()],
                     f"{agnostic['facts_with_any']}/{stats['facts']}",
                     fmt(agnostic["mean_neurons"]), fmt(agnostic["mean_soft_neurons"])])
    languages = next(iter(part["localization"].values()))["per_language"]
    return markdown_table(["method", *[f"mean KN {lang}" for lang in languages],
                           "facts with agnostic", "mean agnostic", "mean agnostic (soft)"], rows)


def cost_table(study: dict) -> str:
    rows = []
    for part in study["parts"]:
        for method, stats in part["localization"].items():
            cost = stats["cost"]
            rows.append([part["part"]["name"], method, cost["fact_language_pairs"],
                         cost["mean_attribution_seconds"], cost["median_attribution_seconds"]])
    return markdown_table(["data", "method", "(fact, language) pairs",
                           "mean s / fact-language", "median s / fact-language"], rows)


def phase_table(study: dict) -> str:
    """Minutes of each phase, and each part's wall time (the sum of its phases)."""
    rows = []
    for part in study["parts"]:
        rows += [[part["part"]["name"], phase, seconds / 60]
                 for phase, seconds in part["seconds"].items()]
        rows.append([f"**{part['part']['name']}**", "**the whole part**",
                     sum(part["seconds"].values()) / 60])
    return markdown_table(["data", "phase", "minutes"], rows)


def headline_lines(headline: dict) -> list[str]:
    """The headline intervals of one experiment as bullet lines."""
    lines = []

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            label = f"{prefix}{key}"
            if isinstance(value, dict) and "ci95" in value:
                lines.append(f"- {label}: {with_ci(value)}")
            elif isinstance(value, dict):
                walk(f"{label} / ", value)

    walk("", headline)
    return lines


SECTIONS = (
    ("localization-quality", "1. Localization quality (AMIG Eq. 11), with controls",
     "SR = |d_rel/d_unrel| (enhance x2) + |d_rel/d_unrel| (suppress x0) per (fact, language); "
     "medians with bootstrap intervals, and paired shares (how often one method's SR beats "
     "another's on the same item)."),
    ("size-curves", "1b. Methods at equal size (deletion / insertion curves)",
     "Each method's neurons ranked by its score, the top k suppressed (x0) or enhanced (x2) for "
     "k = 1 ... 100, beside random sets of the same shape and unrelated facts; a random ranking "
     "is the floor. The deletion/insertion evaluation of Samek et al. 2017 and Petsiuk et al. "
     "2018, applied to neurons: methods compared at the same k."),
    ("shared-sets", "1c. Language-agnostic sets at equal size (MATRICE's own claim)",
     "The top k of each cross-language ranking (MATRICE's score, AMIG's and B-KN's minimum over "
     "languages, MATRICE's ablations and a variant, and one language's own AMIG ranking) "
     "suppressed or enhanced in every language the model knows the fact in."),
    ("cross-lingual-editing", "3. Cross-lingual editing",
     "Relative change of p(gold) in each language (columns) when the neurons of a language "
     "(rows), the language-agnostic neurons (in every language) or the soft language-agnostic "
     "neurons (in at least half of the languages) are suppressed or enhanced; medians over "
     "facts."),
    ("fact-checking", "4. Fact-checking with degenerate neurons",
     "Degenerate pairs found on half of each relation's facts; on the other half, (query, "
     "true object) and (query, wrong candidate) pairs judged true when the kept neurons' mean "
     "attribution exceeds 0. Standard precision/recall/F1, true facts positive."),
    ("enhancement", "5a. Knowledge enhancement",
     "Facts wrong in one language and right in others: enhance (x2) the neurons shared by the "
     "languages it gets right; accuracy in the weak language before/after, and on the other "
     "facts in that language."),
    ("injection", "5b. New knowledge injection",
     "Dai et al.'s weight edit of the source language's neurons towards a counterfactual object "
     "of the same relation; reliability, generalization (paraphrases), portability (other "
     "languages), locality (unrelated facts' top-1 unchanged)."),
    ("audits", "7. Audits of the knowledge-neuron thesis (Niu et al. 2024)",
     "Paraphrase invariance: Jaccard overlap of knowledge-neuron sets across a fact's "
     "paraphrases and languages against different facts of the same and of other relations. "
     "Bijective symmetry: for P47 and P530, the sets of (A, r, B) and (B, r, A), and whether "
     "suppressing the first lowers the second beyond random sets."),
)


def known_counts(part: dict) -> str:
    """``en 30/36, fr 12/36`` (known of probed, per language) for one part."""
    if "knowledge" in part:  # the knowledge filter: items known / probed
        return ", ".join(f"{lang} {c['known']}/{c['items']}"
                         for lang, c in part["knowledge"]["per_language"].items())
    return ", ".join(f"{lang} {n}" for lang, n in part["known"].items())  # older studies


def knowledge_notes(study: dict) -> list[str]:
    """How knowledge was decided and what was left out, in words."""
    filtered = [part for part in study["parts"] if "knowledge" in part]
    if not filtered:
        return ["Facts the model does not know were located and measured like the others (this "
                "study predates the knowledge filter)."]
    knowledge = filtered[0]["knowledge"]
    skipped = sum(c["skipped"] for part in filtered
                  for c in part["knowledge"]["per_language"].values())
    if knowledge["criterion"] == "any":
        return ["Every (fact, language) item was located and measured, known or not "
                "(`known = any`)."]
    return [f"Only knowledge the model has: a (fact, language) item is known by "
            f"`{knowledge['criterion']}` ({knowledge['definition']}) on most of its queries; "
            f"only known items are located and measured, the other {skipped} items are "
            "skipped and counted above (mkn.localization.knowledge)."]


def generic_notes(study: dict) -> list[str]:
    """How many generic neurons each part's methods left out, and their reference items."""
    lines = []
    for part in study["parts"]:
        lists = part.get("generic") or {}
        if part.get("generic_kept"):
            lines.append(f"- {part['part']['name']}: none left out ({part['generic_kept']}).")
        if not lists:
            continue
        counts = ", ".join(f"{method} {max(c['generic'] for c in per_language.values())}"
                           for method, per_language in lists.items() if per_language)
        items = ", ".join(f"{lang} {c['reference_items']}"
                          for lang, c in next(iter(lists.values())).items())
        held = [h for h in (part.get("generic_held_out") or {}).values() if h]
        held_text = (f"; the reference sample holds out the part's {held[0]['facts']} measured "
                     f"facts, overlap {max(h['overlap'] for h in held)} (checked)" if held else
                     "; the reference sample was not held out from the measured facts (a study "
                     "written before the hold-out)")
        thresholds = sorted(set((part.get("generic_threshold") or {}).values()))
        threshold_text = (f"; generic at a fact share of {', '.join(f'{t:g}' for t in thresholds)}"
                          if thresholds else "; its threshold was not recorded (a study written "
                          "before the field; docs/BENCHMARKS.md says which default it ran with)")
        lines.append(f"- {part['part']['name']}: {counts} (reference items located per language: "
                     f"{items}{held_text}{threshold_text}).")
    if not lines:
        return []
    return ["Generic neurons (knowledge neurons of many reference facts of other relations; "
            "mkn.localization.generic) are left out of every set; per part and method, how "
            "many:", "", *lines]


def claims_section(study: dict, earlier: list[dict] | None = None) -> list[str]:
    """The pre-registered claims, their verdicts on all items and without copyable items
    (each with Holm's correction over its own table), and, given an ``earlier`` page's rows
    (:func:`parse_claim_rows`), the old and new verdicts side by side."""
    from mkn.experiments.headlines import without_copyable

    rows = with_holm(claims(study))
    header = ["id", "data", "measured", "verdict", "p", "p (Holm)", "verdict after Holm"]
    out = ["## The papers' claims, as measured here", "",
           "The claims, their test statistics and nulls, registered in one table "
           "(`mkn.report.results.CLAIMS`) before the study ran:", "", claims_table(), "",
           "Verdict: *agrees* when the whole 95% interval is strictly on the claimed side "
           "(share > 0.5, difference > 0, or the two intervals apart), *disagrees* when it is "
           "wholly strictly on the other side, *inconclusive* otherwise (an interval that "
           "touches the null, e.g. [0.35, 0.5] for a share, is inconclusive). Paired shares "
           "count a tie as half a win. *p* is the two-sided bootstrap p-value against the "
           "claim's null; *p (Holm)* is Holm's step-down adjustment over every claim of the "
           "table with a p-value, and a verdict whose adjusted p is not below 0.05 is "
           "*inconclusive after Holm*. A method whose sets equal another's is *not applicable*, "
           f"not a second result; a claim measured on fewer than {MIN_FACTS} facts is "
           "*untestable* (the model knows too little there), not a verdict. A study written "
           "before p-values has none (\"-\"): its verdicts stay uncorrected.", "",
           "### On all known items", "",
           markdown_table(header, [[r[0], *r[2:]] for r in rows]), "", *reading(rows), ""]
    clean = without_copyable(study)
    if clean is None:
        out += ["This study predates the copy flag: its claims are not tested without copyable "
                "items.", ""]
    else:
        left = ", ".join(f"{part['part']['name']} {len(part.get('copyable_facts', []))} of "
                         f"{len(part['facts'])}" for part in study["parts"])
        clean_rows = with_holm(claims(clean))
        out += ["### Without copyable items", "",
                "The same claims with every fact left out that has an item whose gold object "
                "appears in its prompt before the slot (`copyable`: answerable by copying; "
                f"facts left out per part: {left}). The audits' statistics are computed in the "
                "run and are not recomputed here (not measured).", "",
                markdown_table(header, [[r[0], *r[2:]] for r in clean_rows]), "",
                *reading(clean_rows), ""]
    if earlier:
        out += ["### Before and after the review (issue 20)", "",
                "The verdicts of the page this study replaces (its last column) beside this "
                "study's verdicts after Holm on all items; the reason for each change is "
                "generated from the two rows.", "", before_after(rows, earlier), ""]
    return out


def model_name(study: dict) -> str:
    return Path(str(study["config"]["model"])).name


def models_sections(study: dict, beside: Sequence[dict]) -> list[str]:
    """The claims of ``study`` and of the studies ``beside`` it (other models) side by side,
    then "What we conclude" from all of them (:mod:`mkn.report.models`). Studies of one model
    and setup with different parts are read as one (:func:`mkn.report.models.one_per_model`)."""
    study, *beside = models.one_per_model([study, *beside])
    rows: dict[str, list[list]] = {}
    counts: dict[str, dict[tuple[str, str], dict]] = {}
    studies: dict[str, dict] = {}
    for number, one in enumerate([study, *beside]):
        name = model_name(one)
        name = name if name not in rows else f"{name} ({number + 1})"
        rows[name], studies[name] = with_holm(claims(one)), one
        target = one.get("power_plan") or {}
        counts[name] = {(need["claim"], need["part"]): need for need in power.claim_needs(
            one, CLAIMS, MIN_FACTS, target.get("power", 0.8), target.get("alpha", 0.05))}
    out = []
    if beside:
        out += ["## The claims on every model", "",
                "Each model's verdicts after Holm's correction over its own claims (a model is "
                "its own family of tests), per claim and data part; the last column reads them "
                "together. The other models' studies: "
                + ", ".join(f"{model_name(one)} (`{one.get('source', '?')}`, "
                            f"{fmt(one.get('minutes'))} minutes)" for one in beside)
                + ". In each cell: the p-value after Holm, then the facts the claim was "
                "measured on and the facts it needs for power "
                f"{study.get('power_plan', {}).get('power', 0.8):g} at that model's own "
                "effect (`-`: no effect to power, or not measured).", "",
                models.side_by_side(rows, counts), "",
                "Wall time of each model's study per part (2 cores; each model's page has the "
                "time of every phase):", "", models.wall_times(studies), ""]
    said = models.conclusions(rows)
    config = study["config"]
    if "ig" in config["methods"] and config.get("rule", "left") == "left":
        said.append(f"- The `ig` (B-KN) sets here integrate with the left rule and "
                    f"{config['steps']} nodes, which is far from B-KN's integral on this model "
                    "(docs/BENCHMARKS.md: with 12 left nodes half of a 128-node reference's "
                    "top-20 neurons are missing; 4 Gauss-Legendre nodes find 90%). Read C1 and "
                    "C10/ig as claims about that unconverged B-KN, as the papers' own left-rule "
                    "code computes it, not about integrated gradients.")
    return out + ["## What we conclude", "", *said, ""]


def render(study: dict, source: str = "study.json", earlier: list[dict] | None = None,
           evidence: list[dict] | None = None, beside: Sequence[dict] = (),
           results: str | None = None) -> str:
    """The page; ``evidence``: relation-neuron summaries to add (:mod:`.relation_evidence`);
    ``beside``: other models' studies, their claims shown beside this one's; ``results``: where
    the page goes (named in the command that regenerates a page with other models)."""
    config = study["config"]
    again = ("" if not beside else
             " This page sets other models' studies beside it; regenerate it, numbers and "
             f"verdicts of every model, with `mkn reproduce --render {source} "
             + " ".join(f"--beside {one.get('source', '?')}" for one in beside)
             + (f" --results {results}" if results else "") + "`.")
    out = [
        f"# Reproduction study: {config['model']}",
        "",
        f"Produced by `{study['command']}` from {study['started']} to "
        f"{study.get('finished', '?')} ({fmt(study.get('minutes'))} minutes on "
        f"{study.get('machine', '?')}). Every number below is read from the run's output, "
        f"`{source}`"
        + (f" (statistics recomputed from its raw measurements by `mkn reproduce --render` on "
           f"{study['statistics_refreshed']})" if "statistics_refreshed" in study else "")
        + (f"; its localization statistics were recomputed from the run's stored "
           f"attributions by `{study['localization_recomputed']['by']}` on "
           f"{study['localization_recomputed']['on']} (the located sets checked equal to the "
           "run's)" if "localization_recomputed" in study else "")
        + "; do not edit by hand, rerun the command." + again,
        "",
        f"Setup: model {config['model']} ({study['model']['layers']} layers x "
        f"{study['model']['neurons']} FFN neurons; weights: "
        f"{study['model'].get('weights', 'not recorded (a study written before)')}, run in "
        f"{config['dtype']}), methods "
        f"{', '.join(config['methods'])}, {config['steps']} integration steps "
        f"({config.get('rule', 'left')} rule), at "
        f"most {config['max_queries']} queries per fact and language attributed (all queries "
        f"measured), seed {config['seed']}, experiments 3-5 use `{config['experiment_method']}` "
        "neurons; 95% intervals are percentile bootstraps (2000 resamples) that resample facts "
        "(with all their languages, where n counts (fact, language) items).",
        "",
        "## Samples",
        "",
    ]
    rows = []
    for part in study["parts"]:
        p = part["part"]
        rows.append([p["name"], f"`{p['data']}`", ",".join(p["languages"]), len(part["facts"]),
                     ", ".join(part["relations"]), known_counts(part)])
    out += [markdown_table(["part", "data", "languages", "facts", "relations",
                            "facts the model knows, per language"], rows), "",
            *knowledge_notes(study), "", *generic_notes(study), ""]
    out += [f"- {part['part']['name']}: {part['part']['chosen']}." for part in study["parts"]
            if part["part"].get("chosen")]
    out += subsample_notes(study)
    out += ["", *power_section(study)]
    out += claims_section(study, earlier)
    out += models_sections(study, beside)
    for key, title, text in SECTIONS[:3]:
        out += section(study, key, title, text)
    out += ["## 2. Layer distribution", "",
            "Knowledge neurons per fact and language (mean count), and how many of all located "
            "neurons fall in each layer (L0 = first).", ""]
    for part in study["parts"]:
        out += [f"### {part['part']['name']}", "", overview_table(part), "", layer_table(part),
                ""]
    for key, title, text in SECTIONS[3:]:
        out += section(study, key, title, text)
    for key, title, text in other_sections(study):
        out += section(study, key, title, text)
    out += relation_evidence.section(evidence or [])
    out += ["## 6. Cost", "",
            "Attribution seconds per (fact, language) (all its attributed queries), per method; "
            "`matrice` reuses `amig`'s per-query attributions, so its cost is AMIG's plus a "
            "negligible aggregation.", "", cost_table(study), "", "Wall time of each phase "
            "(locating once with every method, then each experiment on the cached attributions):",
            "", phase_table(study), "", "## Caveats", "", *model_caveats(study), CAVEATS]
    return "\n".join(out)


NORMALISED_FFN_IG = (
    "- **`ig` on a normalised FFN output.** {name} normalises each FFN's output before the "
    "residual sum (a post-FFN RMSNorm, as Gemma 2 and 3 do), so scaling one layer's activations "
    "from the zero baseline leaves the output almost unchanged until alpha is near 0: the "
    "zero-baseline integral is degenerate (README). B-KN's weakness here is partly this "
    "architecture, not only the method.")


def model_caveats(study: dict) -> list[str]:
    """The caveats that depend on the study's model: its size against the papers' models, the
    languages where it knows little (under a quarter of a part's facts), and the degenerate zero
    baseline where the model normalises its FFN output (recorded by the study; a study from
    before the record: by the model's name, Gemma)."""
    model = study["model"]
    weak = {part["part"]["name"]: [lang for lang, counts in
                                   part["knowledge"]["per_language"].items()
                                   if counts["items"] and counts["known"] < counts["items"] / 4]
            for part in study["parts"]}
    said = "; ".join(f"{', '.join(langs)} in {name}" for name, langs in weak.items() if langs)
    lines = [f"- **Model.** {model_name(study)} ({model['layers']} layers x {model['neurons']} "
             "FFN neurons) is far smaller than the papers' m-BERT / mGPT / LLaMA-2."
             + (f" It knows under a quarter of a part's facts in some languages ({said}; see "
                "\"facts the model knows\" per part): most of their items are skipped rather "
                "than measured." if said else "")]
    if model.get("normalises_ffn_output", "gemma" in model_name(study).lower()):
        lines.append(NORMALISED_FFN_IG.format(name=model_name(study)))
    return lines


def subsample_notes(study: dict) -> list[str]:
    """A line per part with experiments measured on a subsample of its facts (``max_facts``)."""
    out = []
    for part in study["parts"]:
        subsets = [f"{name} on {len(e['subsample'])}" for name, e in
                   part["experiments"].items() if "subsample" in e]
        if subsets:
            out.append(f"- {part['part']['name']}: measured on a subsample of its "
                       f"{len(part['facts'])} facts, every relation in turn (max_facts): "
                       f"{', '.join(subsets)}.")
    return out


def power_section(study: dict) -> list[str]:
    """The sample size of each claim: the pilot's facts and effect, the facts the power target
    asks for, and the facts this study measured (:mod:`mkn.report.power`); nothing for a study
    sized without a pilot."""
    planned = study.get("power_plan")
    if not planned:
        return []
    here = {(row["claim"], row["part"]): row["measured"]
            for row in power.claim_needs(study, CLAIMS, MIN_FACTS, planned["power"],
                                         planned["alpha"])}
    short = sorted({f"{row['claim']} ({row['part']})" for row in planned["claims"]
                    if row["needed"] is not None
                    and (here.get((row["claim"], row["part"])) or 0) < row["needed"]})
    sizes = ", ".join(f"{name} {n}" for name, n in planned["per_relation"].items())
    own = "".join(f"; {name}: at most {n}, its own budget"
                  for name, n in planned.get("cap_per_part", {}).items())
    return ["## Sample size: the power target of each claim", "",
            f"Each part was sized from the pilot study `{planned['pilot']}`: for every claim it "
            f"measured, the facts needed to detect the pilot's effect with power "
            f"{planned['power']:g} in a two-sided test at {planned['alpha']:g} (the standard "
            "error read from the pilot's interval and scaled as 1/sqrt(n); "
            "`mkn.experiments.metrics.facts_for_power`), divided by the share of sampled facts "
            "the claim could use in the pilot. A part samples enough facts per relation for "
            f"its most demanding claim, at most {planned['cap_per_relation']}{own} (facts per "
            f"relation: {sizes}). Holm's correction asks for more than this per-claim target.",
            "", power.table(planned, here), "",
            ("Short of the target here: " + ", ".join(short) + "." if short
             else "Every planned claim reached its target."), ""]


def other_sections(study: dict) -> list[tuple[str, str, str]]:
    """A section for every experiment the study ran that has none of its own above (any
    registered experiment a study configuration names): its name, and the first paragraph of
    its module's docstring."""
    named = {key for key, _, _ in SECTIONS}
    ran = dict.fromkeys(name for part in study["parts"] for name in part["experiments"])
    out = []
    for name in ran:
        if name in named:
            continue
        module = EXPERIMENTS.get(name)
        doc = (vars(module).get("__doc__") if module is not None else None) or ""
        doc = doc.strip().split("\n\n")[0]
        out.append((name, f"Experiment: {name}", " ".join(doc.split()) or
                    "(an experiment registered without a description)"))
    return out


def section(study: dict, key: str, title: str, text: str) -> list[str]:
    out = [f"## {title}", "", text, ""]
    for part in study["parts"]:
        experiment = part["experiments"].get(key)
        if experiment is None:
            continue
        out += [f"### {part['part']['name']}", "", experiment["table"], ""]
        lines = headline_lines(experiment["headline"])
        if lines:
            out += ["Bootstrap 95% intervals:", "", *lines, ""]
    return out


def read_study(study_json: Path) -> dict:
    """A ``study.json`` as ``mkn reproduce`` wrote it (its raw per-item results are large), or
    gzip-compressed (``study.json.gz``)."""
    try:
        study = read_json(study_json)
        if not isinstance(study, dict) or not isinstance(study.get("parts"), list):
            raise ValueError("no parts")
    except ValueError as error:
        raise ValueError(f"{study_json}: not a study written by mkn reproduce ({error})"
                         ) from None
    return study


def write_results(study_json: Path, out: Path, refresh: bool = False,
                  before: Path | None = None, beside: Sequence[Path] = ()) -> Path:
    """Render ``study_json`` (plain or ``.gz``) to ``out``; ``refresh``: first recompute the
    headline statistics from the saved raw results (when the study has them) and save them back
    into ``study_json``; ``before``: an earlier RESULTS.md whose verdicts are shown beside the
    new ones; ``beside``: other models' study.json files, their claims beside this one's."""
    others = []
    for path in beside:
        other = read_study(path)
        if not other.get("complete", True):
            raise ValueError(f"{path}: the study is partial; finish it before setting it beside")
        others.append({**other, "source": str(path)})
    earlier = None
    if before is not None:
        try:
            earlier = parse_claim_rows(Path(before).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{before}: cannot read the earlier page ({error})") from None
        if not earlier:
            raise ValueError(f"{before}: no claims table (not a page mkn reproduce wrote)")
    study = read_study(study_json)
    if not study.get("complete", True):
        finished = sum(len(p.get("experiments", {})) for p in study["parts"])
        planned = sum(len(p["experiments"]) for p in study["config"]["parts"])
        raise ValueError(f"{study_json}: the study is partial ({finished} of {planned} "
                         "experiments finished); continue it with mkn reproduce --resume and the "
                         "same options")
    if refresh and study.get("raw_results", True):  # a study kept without them: as saved
        from mkn.experiments.headlines import refresh_headlines

        refresh_headlines(study)
        study["statistics_refreshed"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(study_json, study)
    check_ours(out, RESULTS_MARKER, "choose another --results, or delete that file yourself to "
               "have mkn write it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, render(study, source=str(study_json), earlier=earlier,
                                    evidence=relation_evidence.load(Path(study_json).parent,
                                                                    model_name(study)),
                                    beside=others, results=str(out)))


RESULTS_MARKER = "Produced by `mkn reproduce"  # in the header of every page render() writes

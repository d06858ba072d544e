"""``docs/RESULTS.md`` from a study's ``study.json`` alone (see :mod:`mkn.experiments.reproduce`).

Every number in the page comes from the JSON; the verdicts on the papers' claims are computed
from the bootstrap intervals by :func:`verdict`, so rerunning the study rewrites the reading too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from mkn.experiments.common import markdown_table
from mkn.experiments.metrics import holm
from mkn.runs.directory import check_ours, read_json, write_atomic, write_json

CAVEATS = """\
- **Model.** gemma-3-270m is far smaller than the papers' m-BERT / mGPT / LLaMA-2. It knows few
  mLAMA facts outside English and French (see "facts the model knows" per part), so most
  (fact, language) items of fi, hu, ja and ko are skipped rather than measured.
- **What "known" means.** BMLAMA items are known when the gold object ranks first among ten
  candidates of its relation (chance: 10%, so some known items are lucky); mLAMA items when
  greedy decoding reproduces the object on most paraphrases (strict). A relation that ranks first
  without ever being decoded (P413 in bmlama17) was left out of the sample.
- **`ig` on Gemma.** Gemma 3 normalises the FFN output (post-FFN RMSNorm), so scaling one layer's
  activations from the zero baseline leaves the output almost unchanged until alpha is near 0:
  the zero-baseline integral is degenerate (README). B-KN's weakness here is partly this
  architecture, not only the method.
- **Protocol.** One protocol for every method: AMIG's thresholds (en 0.3, others 0.2 of the
  maximum), refinement p = 0.3, the same sampled facts, queries and integration steps, generic
  neurons left out with one reference list per method, and the same interventions (x0 / x2 at
  every position). Effects are relative changes of p(gold): enhancements of small probabilities
  are unbounded, so medians, not means, summarise them.
- **Controls.** Random sets have as many neurons in each layer as the set they control (2-3
  seeded draws); unrelated facts are of other relations and known in the same language.
  Selectivity and specificity are oriented so that higher is better.
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


def _paired_claim(claim: str, name: str, entry: dict | None, what: str) -> list[str]:
    """A claim judged on a paired share (> 0.5: the first method wins)."""
    if entry is None:
        return [claim, name, "not measured", "not measured", None]
    if _tied(entry):
        return [claim, name, f"{what}: {with_ci(entry)}",
                "not applicable (a tie on every item: the two rankings are identical here)", None]
    return [claim, name, f"{what}: {with_ci(entry)}", *tested(entry, 0.5)]


def tested(entry: dict | None, null: float) -> list:
    """``[verdict, p]``: the strict verdict of ``entry`` against ``null`` and its bootstrap
    p-value (None where the entry has none: a study written before p-values)."""
    p = (entry or {}).get("p", {}).get(str(float(null)))
    return [verdict(entry, null), p]


HOLM_ALPHA = 0.05


def with_holm(rows: list[list]) -> list[list]:
    """Claim rows ``[claim, data, measured, verdict, p]`` -> ``[claim, data, measured, verdict,
    p, Holm p, verdict after Holm]``: Holm's correction over every claim with a p-value; a
    decided verdict whose Holm-adjusted p is not below 0.05 becomes inconclusive."""
    adjusted = holm([row[4] for row in rows])
    out = []
    for row, p_holm in zip(rows, adjusted, strict=True):
        decided = row[3] in ("agrees", "disagrees")
        if decided and p_holm is None:
            after = f"{row[3]} (no p-value: not corrected)"
        elif decided and p_holm >= HOLM_ALPHA:
            after = "inconclusive after Holm"
        else:
            after = row[3]
        out.append([*row[:4], fmt(row[4]) if row[4] is not None else "-",
                    fmt(p_holm) if p_holm is not None else "-", after])
    return out


def claims(study: dict) -> list[list[str]]:
    """The papers' claims and the knowledge-neuron thesis, each judged on selectivity and
    specificity at equal size (or, where a claim has no size, against its control)."""
    rows = []
    for part in study["parts"]:
        name, experiments = part["part"]["name"], part["experiments"]
        if "size-curves" in experiments:
            paired = experiments["size-curves"]["headline"]["paired"]
            for pair, claim in (("amig > ig", "AMIG: AMIG localizes better than B-KN"),
                                ("matrice > amig", "Cao et al.: MATRICE localizes better than "
                                                   "AMIG-style IG")):
                entry = paired.get(pair, {})
                rows.append(_paired_claim(
                    f"{claim} (top-k sets at equal k, per language)", name,
                    entry.get("suppress_selectivity"),
                    f"share of items where {pair} on the area under the suppression "
                    f"selectivity curve (specificity: "
                    f"{with_ci(entry.get('suppress_specificity'))})"))
        if "shared-sets" in experiments:
            paired = experiments["shared-sets"]["headline"]["paired"]
            rows.append(_paired_claim(
                "Cao et al.: MATRICE's language-agnostic set moves the fact in more languages, "
                "more selectively, than AMIG's (equal k)", name, paired.get("matrice > amig"),
                "share of facts where matrice > amig on the area of the mean selectivity over "
                "languages"))
            rows.append(_paired_claim(
                "AMIG: language-agnostic neurons move the other languages more than one "
                "language's own neurons do (equal k)", name, paired.get("amig > amig-source"),
                "share of facts where the shared set beats the source language's set in the "
                "other languages"))
        if "fact-checking" in experiments:
            h = experiments["fact-checking"]["headline"]
            if "auc_difference_pairs" in h:  # AMIG's claim: pairs against candidate pairs
                rows.append(["AMIG: degenerate pairs check facts better than random pairs of "
                             "the same top candidates", name,
                             f"AUC(DKN) - AUC(random candidate pairs): "
                             f"{with_ci(h['auc_difference_pairs'])}; AUC(DKN) - AUC(random "
                             f"neurons of the same shape) "
                             f"{with_ci(h['auc_difference_random'])}; AUC(DKN) "
                             f"{with_ci(h['auc_degenerate_neurons'])}, AUC(model) "
                             f"{with_ci(h['auc_model_judge'])}; F1(DKN) "
                             f"{with_ci(h['degenerate_neurons'])} beside an always-true judge's "
                             f"{with_ci(h['f1_always_true'])}",
                             *tested(h["auc_difference_pairs"], 0.0)])
            elif "auc_difference_random" in h:  # threshold-free: F1 rewards saying "true"
                rows.append(["AMIG: degenerate neurons check facts, better than random "
                             "neurons of the same shape", name,
                             f"AUC(DKN) - AUC(random): {with_ci(h['auc_difference_random'])}; "
                             f"AUC(DKN) {with_ci(h['auc_degenerate_neurons'])}, AUC(model) "
                             f"{with_ci(h['auc_model_judge'])}; F1(DKN) "
                             f"{with_ci(h['degenerate_neurons'])} beside an always-true judge's "
                             f"{with_ci(h['f1_always_true'])}",
                             *tested(h["auc_difference_random"], 0.0)])
            elif "f1_difference_random" in h:  # a study written before the AUC
                rows.append(["AMIG: degenerate neurons check facts (F1), better than random "
                             "neurons of the same shape", name,
                             f"F1(DKN) - F1(random): {with_ci(h['f1_difference_random'])}; "
                             f"F1(DKN) - F1(model): {with_ci(h['f1_difference'])}",
                             *tested(h["f1_difference_random"], 0.0)])
        if "enhancement" in experiments:
            h = experiments["enhancement"]["headline"]
            rows.append(["Cao et al.: enhancing shared neurons from other languages raises a weak "
                         "language's p(gold), more than random sets do", name,
                         f"selectivity: {with_ci(h.get('selectivity'))}; "
                         + (f"weak items that become known (the run's criterion): "
                            f"{with_ci(h['known_gain_weak_language'])}; "
                            if "known_gain_weak_language" in h else "")
                         + f"greedy accuracy gain: {with_ci(h['accuracy_gain_weak_language'])}",
                         *tested(h.get("selectivity"), 0.0)])
        if "injection" in experiments:
            h = experiments["injection"]["headline"]
            rows.append(["Cao et al.: knowledge injected through one language's neurons "
                         "transfers to the others, more than through random neurons", name,
                         f"portability minus random-edit portability: "
                         f"{with_ci(h.get('portability_over_random'))}; portability "
                         f"{with_ci(h['portability'])}"
                         + (f" over the {h['edits']['took']} edits that took on their own query "
                            f"(p(new) > p(old); {h['edits']['did_not_take']} did not)"
                            if "edits" in h else ""),
                         *tested(h.get("portability_over_random"), 0.0)])
        if "audits" in experiments:
            h = experiments["audits"]["headline"]
            jaccard = h["jaccard"]
            if jaccard["paraphrases"]["n"]:
                rows.append(["KN thesis (Niu et al. audit): a fact's paraphrases share their "
                             "knowledge neurons, more than different facts of the relation do",
                             name, f"Jaccard across paraphrases "
                             f"{with_ci(jaccard['paraphrases'])}; same relation "
                             f"{with_ci(jaccard['same_relation'])}",
                             separated(jaccard["same_relation"], jaccard["paraphrases"]),
                             None])  # two intervals compared: no p-value, left out of Holm
            symmetry = h["symmetry"]
            if symmetry["pairs"]:
                rows.append(["KN thesis (Niu et al. audit): suppressing the neurons of (A, r, B) "
                             "also suppresses (B, r, A) for a symmetric relation", name,
                             f"selectivity on the reversed fact: "
                             f"{with_ci(symmetry['reversed_selectivity'])}; Jaccard of the two "
                             f"sets {with_ci(symmetry['jaccard_reversed'])}",
                             *tested(symmetry["reversed_selectivity"], 0.0)])
        for method, stats in part["localization"].items():
            share = upper_share(stats["language_agnostic"]["layer_histogram"])
            kn_share = upper_share([sum(col) for col in zip(
                *[s["layer_histogram"] for s in stats["per_language"].values()], strict=True)])
            claim = f"Dai / AMIG: knowledge neurons sit in the upper layers ({method})"
            pooled = (f"pooled over neurons: knowledge neurons {fmt(kn_share)}, "
                      f"language-agnostic {fmt(share)} (uniform: 0.333)")
            if stats.get("same_sets_as"):
                rows.append([claim, name, pooled, f"not applicable (the same sets as "
                             f"{stats['same_sets_as']}: not a separate result)", None])
            elif "upper_third_excess" in stats:  # per (fact, language), clustered by fact
                rows.append([claim, name, f"share of an item's knowledge neurons in the upper "
                             f"third of layers minus 1/3: "
                             f"{with_ci(stats['upper_third_excess'])}; {pooled}",
                             *tested(stats["upper_third_excess"], 0.0)])
            else:  # a study written before the per-fact statistic
                rows.append([claim, name, f"share in the upper third of layers: {pooled}",
                             "untested (a share pooled over neurons, no interval)"
                             if kn_share is not None else "not measured", None])
    return rows


def reading(rows: list[list[str]]) -> list[str]:
    """The claims grouped by their verdict after Holm's correction (the last column), in
    words."""
    out = ["Reading, generated from the verdicts after Holm's correction above:", ""]
    for label, meaning in (("agrees", "Where our numbers agree with the papers"),
                           ("disagrees", "Where they do not"),
                           ("inconclusive", "Where this sample cannot tell"),
                           ("untested", "Claims without a test here"),
                           ("not", "Not measured or not applicable here")):
        matching = [f"{row[0]} ({row[1]})" for row in rows
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
    rows = [[part["part"]["name"], phase, seconds / 60]
            for part in study["parts"] for phase, seconds in part["seconds"].items()]
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
        lines.append(f"- {part['part']['name']}: {counts} (reference items located per language: "
                     f"{items}{held_text}).")
    if not lines:
        return []
    return ["Generic neurons (knowledge neurons of many reference facts of other relations; "
            "mkn.localization.generic) are left out of every set; per part and method, how "
            "many:", "", *lines]


def render(study: dict, source: str = "study.json") -> str:
    config = study["config"]
    out = [
        f"# Reproduction study: {config['model']}",
        "",
        f"Produced by `{study['command']}` from {study['started']} to "
        f"{study.get('finished', '?')} ({fmt(study.get('minutes'))} minutes on "
        f"{study.get('machine', '?')}). Every number below is read from the run's output, "
        f"`{source}`"
        + (f" (statistics recomputed from its raw measurements by `mkn reproduce --render` on "
           f"{study['statistics_refreshed']})" if "statistics_refreshed" in study else "")
        + "; do not edit by hand, rerun the command.",
        "",
        f"Setup: model {config['model']} ({study['model']['layers']} layers x "
        f"{study['model']['neurons']} FFN neurons; weights: "
        f"{study['model'].get('weights', 'not recorded (a study written before)')}, run in "
        f"{config['dtype']}), methods "
        f"{', '.join(config['methods'])}, {config['steps']} integration steps (left rule), at "
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
    out += [""]
    out += ["## The papers' claims, as measured here", "",
            "Verdict: *agrees* when the whole 95% interval is strictly on the claimed side "
            "(share > 0.5, difference > 0, or the two intervals apart), *disagrees* when it is "
            "wholly strictly on the other side, *inconclusive* otherwise (an interval that "
            "touches the null, e.g. [0.35, 0.5] for a share, is inconclusive). Paired shares "
            "count a tie as half a win. *p* is the two-sided bootstrap p-value against the "
            "claim's null (a difference of 0, a share of 0.5); *p (Holm)* is Holm's step-down "
            "adjustment over every claim of the page with a p-value, and a verdict whose "
            "adjusted p is not below 0.05 is *inconclusive after Holm*. The layer claim is tested "
            "per (fact, language) item (the share of its knowledge neurons in the upper third, "
            "minus 1/3), with an interval that resamples facts; a study written before that "
            "has only the share pooled over neurons and leaves it *untested*. A method whose "
            "sets equal another's is *not applicable*, not a second result. A study written "
            "before p-values has none (\"-\"): its verdicts stay uncorrected.", "",
            markdown_table(["claim", "data", "measured", "verdict", "p", "p (Holm)",
                            "verdict after Holm"], with_holm(claims(study))), "",
            *reading(with_holm(claims(study))), ""]
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
    out += ["## 6. Cost", "",
            "Attribution seconds per (fact, language) (all its attributed queries), per method; "
            "`matrice` reuses `amig`'s per-query attributions, so its cost is AMIG's plus a "
            "negligible aggregation.", "", cost_table(study), "", "Wall time of each phase "
            "(locating once with every method, then each experiment on the cached attributions):",
            "", phase_table(study), "", "## Caveats", "", CAVEATS]
    return "\n".join(out)


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


def write_results(study_json: Path, out: Path, refresh: bool = False) -> Path:
    """Render ``study_json`` (plain or ``.gz``) to ``out``; ``refresh``: first recompute the
    headline statistics from the saved raw results (when the study has them) and save them back
    into ``study_json``."""
    study = read_study(study_json)
    if not study.get("complete", True):
        finished = sum(len(p.get("experiments", {})) for p in study["parts"])
        planned = sum(len(p["experiments"]) for p in study["config"]["parts"])
        raise ValueError(f"{study_json}: the study is partial ({finished} of {planned} "
                         "experiments finished); continue it with mkn reproduce --resume and the "
                         "same options")
    if refresh and study.get("raw_results", True):  # a study kept without them: as saved
        from mkn.experiments.reproduce import refresh_headlines

        refresh_headlines(study)
        study["statistics_refreshed"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(study_json, study)
    check_ours(out, RESULTS_MARKER, "choose another --results, or delete that file yourself to "
               "have mkn write it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, render(study, source=str(study_json)))


RESULTS_MARKER = "Produced by `mkn reproduce"  # in the header of every page render() writes

"""Statistics of a localization run, computed from its records (pure functions).

- layer distribution of knowledge neurons per language and of language-agnostic neurons;
- cross-language overlap: mean Jaccard of the per-language neuron sets over facts;
- counts per fact and language; the items probed, known (located) and skipped per language;
- cost: seconds per fact and language.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from mkn.localization.neurons import jaccard, layer_histogram


def _neurons(record: dict) -> list[tuple[int, int]]:
    return [(int(n[0]), int(n[1])) for n in record["neurons"]]


def knowledge_counts(knowledge_records: Iterable[dict]) -> dict[str, dict[str, int]]:
    """Per language: items probed, located (known under the run's filter) and skipped."""
    out: dict[str, dict[str, int]] = {}
    for record in knowledge_records:
        counts = out.setdefault(record["language"], {"items": 0, "located": 0, "skipped": 0,
                                                     "known": 0})
        counts["items"] += 1
        counts["located" if record.get("located", True) else "skipped"] += 1
        counts["known"] += bool(record.get("known"))
    return out


def localization_stats(neuron_records: Iterable[dict], agnostic_records: Iterable[dict],
                       degenerate_records: Iterable[dict], n_layers: int,
                       timing_records: Iterable[dict] = (),
                       knowledge_records: Iterable[dict] = ()) -> dict:
    """Summary statistics of ``neurons``/``language_agnostic``/``degenerate`` records."""
    neuron_records = list(neuron_records)
    by_language: dict[str, list[dict]] = defaultdict(list)
    by_fact: dict[str, dict[str, set]] = defaultdict(dict)
    for record in neuron_records:
        by_language[record["language"]].append(record)
        by_fact[record["fact_id"]][record["language"]] = set(_neurons(record))
    languages = sorted(by_language)
    per_language = {}
    for lang in languages:
        records = by_language[lang]
        counts = [len(r["neurons"]) for r in records]
        histogram = [0] * n_layers
        for record in records:
            for layer, count in enumerate(layer_histogram(_neurons(record), n_layers)):
                histogram[layer] += count
        per_language[lang] = {
            "facts": len(records),
            "known": sum(bool(r["known"]) for r in records),
            "mean_neurons": statistics.fmean(counts) if counts else 0.0,
            "mean_generic": statistics.fmean([len(r.get("generic", [])) for r in records])
            if records else 0.0,
            "layer_histogram": histogram,
        }
    overlap = {a: {b: statistics.fmean([jaccard(sets[a], sets[b]) for sets in by_fact.values()
                                        if a in sets and b in sets] or [0.0])
                   for b in languages} for a in languages}
    agnostic = list(agnostic_records)
    agnostic_histogram = [0] * n_layers
    soft_histogram = [0] * n_layers
    for record in agnostic:
        for layer, _ in record["neurons"]:
            agnostic_histogram[layer] += 1
        for layer, _ in record["soft_neurons"]:
            soft_histogram[layer] += 1
    degenerate = list(degenerate_records)
    timings = list(timing_records)
    seconds = [t["seconds"] for t in timings]
    return {
        "languages": languages,
        "facts": len(by_fact),
        "knowledge": {"per_language": knowledge_counts(knowledge_records)},
        "per_language": per_language,
        "overlap_jaccard": overlap,
        "language_agnostic": {
            "facts_with_any": sum(bool(r["neurons"]) for r in agnostic),
            "mean_neurons": statistics.fmean([len(r["neurons"]) for r in agnostic] or [0.0]),
            "mean_soft_neurons": statistics.fmean([len(r["soft_neurons"]) for r in agnostic]
                                                  or [0.0]),
            "layer_histogram": agnostic_histogram,
            "soft_layer_histogram": soft_histogram,
        },
        "degenerate": {
            "records": len(degenerate),
            "with_pairs": sum(bool(r["pairs"]) for r in degenerate),
            "mean_pairs": statistics.fmean([len(r["pairs"]) for r in degenerate] or [0.0]),
        },
        "cost": {
            "fact_language_pairs": len(seconds),
            "mean_seconds": statistics.fmean(seconds) if seconds else None,
            "median_seconds": statistics.median(seconds) if seconds else None,
        },
    }


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured markdown table; floats with 3 significant digits."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)

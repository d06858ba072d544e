"""``mkn locate``: localization over a dataset, resumable, with progress.

Writes to ``DIR``: ``neurons.jsonl`` (one record per fact and language), ``language_agnostic.jsonl``
(one per fact), ``degenerate.jsonl`` (one per fact and language), ``timings.jsonl``, dense scores
in ``scores/*.safetensors``, ``config.json`` and, at the end, ``summary.json`` (statistics).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from mkn.localization.locate import FactResult, LocateConfig, locate_fact
from mkn.localization.stats import localization_stats
from mkn.runs.store import RunStore

RECORD_FILES = ("neurons", "language_agnostic", "degenerate", "timings")


def _pairs(pairs) -> list[list[list[int]]]:
    return [[list(a), list(b)] for a, b in pairs]


def fact_records(result: FactResult, soft_fraction: float) -> dict[str, list[dict]]:
    """The JSONL records of one located fact."""
    neurons, degenerate, timings = [], [], []
    for lang, r in result.languages.items():
        neurons.append({
            "fact_id": result.fact_id, "relation": result.relation, "language": lang,
            "target": r.target, "queries": len(r.prompts), "prompts": r.prompts,
            "probs": [round(p, 8) for p in r.probs], "correct": r.correct, "known": r.known,
            "neurons": r.neuron_records(),
        })
        timings.append({"fact_id": result.fact_id, "language": lang,
                        "seconds": round(r.seconds, 3)})
        if lang in result.degenerate:
            d = result.degenerate[lang]
            degenerate.append({
                "fact_id": result.fact_id, "language": lang,
                "candidates": [list(n) for n in d.candidates],
                "potential": [list(n) for n in d.potential], "pairs": _pairs(d.pairs),
            })
    agnostic = [{
        "fact_id": result.fact_id, "relation": result.relation,
        "languages": list(result.languages), "neurons": [list(n) for n in result.language_agnostic],
        "soft_neurons": [list(n) for n in result.soft_language_agnostic],
        "soft_fraction": soft_fraction,
        "known_in": [lang for lang, r in result.languages.items() if r.known],
    }]
    return {"neurons": neurons, "language_agnostic": agnostic, "degenerate": degenerate,
            "timings": timings}


def run_locate(lm, facts: Sequence, languages: list[str], config: LocateConfig, out: Path,
               resume: bool = False, meta: dict | None = None,
               on_fact: Callable[[str], None] | None = None) -> dict:
    """Locate every fact, store results in ``out``; returns the summary statistics.

    ``meta`` (model, data spec, sample, seed, skipped records...) is saved with the config.
    ``on_fact`` is called after each fact (progress).
    """
    store = RunStore(out, {"locate": config.model_dump(), "languages": languages, **(meta or {})},
                     resume=resume, record_files=RECORD_FILES)
    for fact in facts:
        if store.is_done(fact.id):
            if on_fact:
                on_fact(fact.id)
            continue
        result = locate_fact(lm, fact, languages, config)
        tensors = {f"scores.{lang}": r.scores for lang, r in result.languages.items()}
        if result.combined_scores is not None:
            tensors["scores.combined"] = result.combined_scores
        store.write(fact.id, fact_records(result, config.agnostic_fraction), tensors)
        if on_fact:
            on_fact(fact.id)
    summary = localization_stats(store.records("neurons"), store.records("language_agnostic"),
                                 store.records("degenerate"), lm.n_layers,
                                 store.records("timings"))
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False)
                                            + "\n", encoding="utf-8")
    return summary

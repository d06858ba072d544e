"""``mkn locate``: localization over a dataset, resumable, with progress.

Writes to ``DIR``: ``knowledge.jsonl`` (one record per fact and language: does the model know
it, :mod:`mkn.localization.knowledge`), ``neurons.jsonl`` (one per fact and language located:
the known ones), ``language_agnostic.jsonl`` (one per fact), ``degenerate.jsonl`` (one per fact
and language located), ``timings.jsonl``, dense scores in ``scores/*.safetensors``,
``config.json`` and, at the end, ``summary.json`` (statistics, with the items skipped because
the model does not know them counted per language).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from mkn.localization.backends import Backend, LocalBackend
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems, known_items
from mkn.localization.locate import AttributionCache, FactResult, LocateConfig
from mkn.localization.relations import LeftOut
from mkn.localization.stats import localization_stats
from mkn.runs.directory import RunDirectory, write_atomic
from mkn.runs.store import RunStore

RECORD_FILES = ("knowledge", "neurons", "language_agnostic", "degenerate", "timings")


def _pairs(pairs) -> list[list[list[int]]]:
    return [[list(a), list(b)] for a, b in pairs]


def fact_records(result: FactResult, soft_fraction: float,
                 criterion: str = "auto") -> dict[str, list[dict]]:
    """The JSONL records of one located fact (``criterion``: the run's knowledge filter)."""
    neurons, degenerate, timings = [], [], []
    probed = {**{lang: r.knowledge for lang, r in result.languages.items() if r.knowledge},
              **result.skipped}
    knowledge = [{**k.to_record(criterion), "located": lang in result.languages}
                 for lang, k in probed.items()]
    for lang, r in result.languages.items():
        neurons.append({
            "fact_id": result.fact_id, "relation": result.relation, "language": lang,
            "target": r.target, "queries": len(r.prompts), "prompts": r.prompts,
            "probs": [round(p, 8) for p in r.probs], "correct": r.correct, "known": r.known,
            "neurons": r.neuron_records(), "generic": r.neuron_records(r.generic),
            "relation_set": r.neuron_records(r.relation),
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
        "skipped_languages": list(result.skipped),
    }]
    return {"knowledge": knowledge, "neurons": neurons, "language_agnostic": agnostic,
            "degenerate": degenerate, "timings": timings}


def run_locate(lm, facts: Sequence, languages: list[str], config: LocateConfig, out: Path,
               resume: bool = False, meta: dict | None = None,
               on_fact: Callable[[str], None] | None = None,
               cache: AttributionCache | None = None, backend: Backend | None = None,
               known: KnownItems | None = None, generic: GenericNeurons | LeftOut | None = None,
               run: RunDirectory | None = None) -> dict:
    """Locate every fact in the languages the model knows it in, store results in ``out``;
    returns the summary statistics.

    ``meta`` (model, data spec, sample, seed, skipped records...) is saved with the config.
    ``on_fact`` is called after each fact (progress); ``cache`` shares attributions with later
    work in the same process (see ``locate_fact``; default backend only).
    ``backend`` locates the facts (default: ``LocalBackend(lm)``, in this process). Results come
    back in fact order and are stored here, so every backend writes the same files.
    ``known``: the probe of ``facts`` under ``config.known`` (probed here with ``lm`` when None);
    ``generic``: generic neurons to leave out (none when None), or a
    :class:`~mkn.localization.relations.LeftOut` with the relation neurons too.
    ``out`` is claimed as an mkn ``locate`` run (:mod:`mkn.runs.directory`) unless the caller
    passes the directory it claimed (``run``, e.g. the demo's).
    """
    store = RunStore(out, {"locate": config.model_dump(), "languages": languages, **(meta or {})},
                     resume=resume, record_files=RECORD_FILES, run=run,
                     volatile=("timings",))
    with store:
        return _locate_into(store, lm, facts, languages, config, out, on_fact, cache, backend,
                            known, generic)


def _locate_into(store: RunStore, lm, facts: Sequence, languages: list[str],
                 config: LocateConfig, out: Path, on_fact, cache, backend, known,
                 generic) -> dict:
    if backend is None:
        if lm is None:
            raise ValueError("run_locate needs a model (lm) or a backend")
        backend = LocalBackend(lm, cache)
    if known is None:
        if lm is None:
            raise ValueError("run_locate needs a model (lm) to probe what it knows, or `known`")
        known = known_items(lm, facts, languages, config.known)
    known.require_some("(fact, language) items to locate")
    todo = list({fact.id: fact for fact in reversed(facts)
                 if not store.is_done(fact.id)}.values())[::-1]  # first of each id, in order
    results = backend.locate(todo, languages, config, known, generic)
    try:
        for fact in facts:
            if store.is_done(fact.id):
                if on_fact:
                    on_fact(fact.id)
                continue
            located, result = next(results)
            assert located.id == fact.id, (located.id, fact.id)
            tensors = {f"scores.{lang}": r.scores for lang, r in result.languages.items()}
            if result.combined_scores is not None:
                tensors["scores.combined"] = result.combined_scores
            store.write(fact.id, fact_records(result, config.agnostic_fraction, config.known),
                        tensors)
            if on_fact:
                on_fact(fact.id)
    finally:
        results.close()  # stops a remote backend's outstanding work on an error
    store.finalize(fact.id for fact in facts)
    summary = localization_stats(store.records("neurons"), store.records("language_agnostic"),
                                 store.records("degenerate"), backend.n_layers,
                                 store.records("timings"), store.records("knowledge"))
    summary["knowledge"]["criterion"] = config.known
    left_out = LeftOut.of(generic)
    if left_out.generic is not None:
        g = left_out.generic
        summary["generic"] = {"threshold": g.threshold, "source": g.source,
                              "per_language": g.summary(languages)}
    if left_out.relations is not None:
        summary["relation_neurons"] = {**left_out.relations.summary(),
                                       "source": left_out.relations.source}
    write_atomic(Path(out) / "summary.json",
                 json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary

"""``mkn probe``: which facts does the model know? Knowledge only, no attribution.

For a fact sample and languages, every query is scored on its gold object and its candidates in
batched forward passes (:mod:`mkn.localization.knowledge`), and the items the model knows are
counted per language and per relation, by the rank and the greedy criteria side by side. It is
how a user picks a sample for ``locate`` and the experiments.

Writes to ``DIR``: ``knowledge.jsonl`` (one record per fact and language: p(gold), greedy and
rank per query, known by each criterion), ``knowledge.md`` (the tables) and ``summary.json``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mkn.localization.knowledge import Knowledge, probe
from mkn.localization.stats import markdown_table
from mkn.models.loading import LanguageModel


def _count(items: list[Knowledge]) -> dict:
    with_candidates = [k for k in items if k.has_candidates]
    return {
        "facts": len(items),
        "with_candidates": len(with_candidates),
        "known_rank": sum(bool(k.known_rank) for k in with_candidates),
        "known_greedy": sum(k.known_greedy for k in items),
        "known": sum(k.known("auto") for k in items),
        "skipped_greedy_right": sum(k.known_greedy and not k.known("auto") for k in items),
        "copyable": sum(k.copyable for k in items),
        "known_copyable": sum(k.known("auto") and k.copyable for k in items),
        "median_p_gold": statistics.median(k.median_p_gold for k in items) if items else None,
    }


def probe_summary(items: Iterable[Knowledge], languages: Sequence[str]) -> dict:
    """Counts per language and per (relation, language); ``known`` is the default criterion."""
    items = list(items)
    relations = list(dict.fromkeys(k.relation for k in items))
    return {
        "languages": list(languages),
        "per_language": {lang: _count([k for k in items if k.language == lang])
                         for lang in languages},
        "per_relation": {relation: {lang: _count([k for k in items if k.relation == relation
                                                  and k.language == lang])
                                    for lang in languages}
                         for relation in relations},
        # skipped by the default (rank) criterion although greedy decoding gets the object
        "skipped_greedy_right": [[k.fact_id, k.language] for k in items
                                 if k.known_greedy and not k.known("auto")],
    }


def _share(part: int, whole: int) -> str:
    return f"{part} ({100 * part / whole:.0f}%)" if whole else "-"


def probe_table(summary: dict) -> str:
    """Two markdown tables: per language (both criteria), and per relation x language."""
    rows = []
    for lang, c in summary["per_language"].items():
        rows.append([lang, c["facts"], _share(c["known_rank"], c["with_candidates"])
                     if c["with_candidates"] else "no candidates",
                     _share(c["known_greedy"], c["facts"]), _share(c["known"], c["facts"]),
                     _share(c.get("copyable", 0), c["facts"]),
                     _share(c.get("known_copyable", 0), c["known"]),
                     _share(c.get("skipped_greedy_right", 0), c["facts"]), c["median_p_gold"]])
    per_language = markdown_table(["language", "facts", "known by rank (gold first among "
                                   "candidates)", "known by greedy decoding",
                                   "known (default: rank, else greedy)",
                                   "copyable (gold object in the prompt)",
                                   "copyable among the known",
                                   "skipped although greedy decoding gets it",
                                   "median p(gold)"], rows)
    languages = summary["languages"]
    relation_rows = [[relation, *[f"{by[lang]['known']}/{by[lang]['facts']}"
                                  for lang in languages],
                      sum(by[lang]["known"] for lang in languages)]
                     for relation, by in summary["per_relation"].items()]
    relation_rows.sort(key=lambda row: -row[-1])
    per_relation = markdown_table(["relation", *languages, "known items, all languages"],
                                  relation_rows)
    drops = summary.get("skipped_greedy_right", [])
    named = ", ".join(f"{fact_id}/{lang}" for fact_id, lang in drops[:10])
    dropped = (f"\n\n{len(drops)} items are skipped by the default criterion although greedy "
               f"decoding gets the gold object (a wrong candidate has a higher mean log-prob "
               f"per token): {named}{', ...' if len(drops) > 10 else ''}; --known either keeps "
               "them." if drops else "")
    return (f"{per_language}{dropped}\n\nKnown items (default criterion) per relation and "
            f"language, relations the model knows best first:\n\n{per_relation}")


def _write(path: Path, text: str) -> None:
    from mkn.runs.directory import write_atomic

    write_atomic(path, text)


PROBED = "probed"  # the store's record file: one record per (fact, language), per fact unit
CHUNK = 16  # facts probed per stored step (a kill loses at most one chunk)


def run_probe(lm: LanguageModel, facts: Sequence, languages: Sequence[str], out: Path,
              progress: Callable[[str], None] | None = None, batch_size: int = 16,
              meta: dict | None = None, resume: bool = False, run=None) -> dict:
    """Probe every fact in every language, :data:`CHUNK` facts at a time, each fact stored as
    it is done (:class:`mkn.runs.store.RunStore`: ``--resume`` after a kill probes only the
    rest); then write ``knowledge.jsonl``, ``summary.json`` and ``knowledge.md`` from the
    stored records (so a resumed run writes the same bytes); returns the summary."""
    from mkn.runs.store import RunStore

    identity = {"languages": list(languages), **(meta or {})}
    with RunStore(out, identity, resume, (PROBED,), kind="probe", run=run) as store:
        todo = [fact for fact in facts if not store.is_done(fact.id)]
        for fact in facts:
            if store.is_done(fact.id) and progress:
                progress(fact.id)
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            knowledge = probe(lm, chunk, languages, batch_size=batch_size, progress=progress)
            for fact in chunk:
                store.write(fact.id, {PROBED: [knowledge[(fact.id, lang)].to_record()
                                               for lang in languages
                                               if (fact.id, lang) in knowledge]})
        store.finalize([fact.id for fact in facts])
        records = [{k: v for k, v in r.items() if k != "unit"} for r in store.records(PROBED)]
    items = [Knowledge.from_record(r) for r in records]
    summary = {**probe_summary(items, languages), **(meta or {})}
    _write(out / "knowledge.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for r in records))
    _write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write(out / "knowledge.md", probe_table(summary) + "\n")
    return summary

"""Experiment 2: cross-lingual editing with language-agnostic vs single-language neurons.

For each fact, suppress (x0) or enhance (x2) one neuron set and measure the relative change of
p(gold) on the fact's queries in *every* language. Neuron sets: the language-agnostic neurons
(AMIG: the intersection over languages), the soft language-agnostic neurons (knowledge neurons in
at least a fraction ``q`` of the languages: with many languages the strict intersection is often
empty) and each language's own knowledge neurons (en->zh, zh->en and every other pair). The
claim under test: editing the language-agnostic neurons moves the fact in all languages,
editing one language's neurons moves it mostly in that language.
"""

from __future__ import annotations

import statistics

from mkn.experiments.common import (
    Progress,
    clean_probs,
    locate_all,
    markdown_table,
    mean_relative_change,
    queries,
)
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.models.loading import LanguageModel

AGNOSTIC = "agnostic"
SOFT_AGNOSTIC = "agnostic-soft"
PHASES = 2  # progress ticks per fact: locating, then measuring


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, progress: Progress | None = None,
        cache: AttributionCache | None = None) -> dict:
    if len(languages) < 2:
        raise ValueError("cross-lingual editing needs at least 2 languages")
    located = locate_all(lm, facts, languages, config.model_copy(update={"degenerate": False}),
                         progress, cache)
    items = []
    for fact in facts:
        result = located[fact.id]
        sources = {lang: result.languages[lang].neurons for lang in languages}
        sources[AGNOSTIC] = result.language_agnostic
        sources[SOFT_AGNOSTIC] = result.soft_language_agnostic
        before = {lang: clean_probs(lm, queries(fact, lang)) for lang in languages}
        for source, neurons in sources.items():
            item = {"fact_id": fact.id, "source": source, "neurons": len(neurons)}
            if neurons:
                for mode in ("suppress", "enhance"):
                    item[mode] = {lang: mean_relative_change(lm, queries(fact, lang), neurons,
                                                             mode, before=before[lang])
                                  for lang in languages}
            items.append(item)
        if progress:
            progress(fact.id)
    return {"items": items, "summary": summarize(items, languages),
            "soft_fraction": config.agnostic_fraction}


def summarize(items: list[dict], languages: list[str]) -> dict:
    """Per source set and mode: the median relative change in each target language."""
    summary = {}
    for source in [*languages, AGNOSTIC, SOFT_AGNOSTIC]:
        rows = [i for i in items if i["source"] == source]
        measured = [i for i in rows if "suppress" in i]
        summary[source] = {
            "facts": len(rows), "without_neurons": len(rows) - len(measured),
            **{mode: {lang: (statistics.median(i[mode][lang] for i in measured)
                             if measured else None) for lang in languages}
               for mode in ("suppress", "enhance")},
        }
    return summary


def table(result: dict) -> str:
    summary = result["summary"]
    languages = [s for s in summary if s not in (AGNOSTIC, SOFT_AGNOSTIC)]
    rows = []
    for source, s in summary.items():
        for mode in ("suppress", "enhance"):
            rows.append([source, mode, f"{s['facts'] - s['without_neurons']}/{s['facts']}",
                         *[s[mode][lang] for lang in languages]])
    header = ["neurons of", "intervention", "facts with neurons",
              *[f"d p(gold) {lang}" for lang in languages]]
    return markdown_table(header, rows)

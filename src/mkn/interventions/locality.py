"""Edit locality: what an applied weight edit does to the facts it should leave alone.

An edit of one fact (:mod:`mkn.interventions.weights`) should move that fact and nothing else.
Its *locality* on another fact is the relative change of that fact's p(gold) with the edit
applied, averaged over the fact's queries,

    locality(g) = mean_q (p_edited(gold_g | q) - p(gold_g | q)) / p(gold_g | q),

measured on other facts of the *same* relation (the neighbourhood, where relation neurons do
their damage) and of *other* relations, in every language: ROME/CounterFact's neighbourhood
score (Meng et al. 2022) and EasyEdit's locality (Wang et al. 2024), on the scale of
:mod:`mkn.interventions.controls` (0: untouched; -1: the fact is gone).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from mkn.attribution.scoring import score_rows
from mkn.interventions.controls import MIN_PROB, CleanProbs, Query, relative_change
from mkn.interventions.weights import WeightEdit, edited
from mkn.models.loading import LanguageModel


def gold_changes(lm: LanguageModel, edit: WeightEdit, facts: Sequence[Sequence[Query]],
                 clean: CleanProbs) -> list[float | None]:
    """Per fact (its queries): the mean relative change of p(gold) with ``edit`` applied (module
    docstring; None for a fact without queries); the model is left as it was (the edit undone,
    or kept applied when it was)."""
    flat = [query for queries in facts for query in queries]
    if not flat:
        return [None] * len(facts)
    before = clean(flat)
    was_applied = edit.applied
    with edited(edit):
        after = [p.prob for p in score_rows(lm, [clean.encode(q) for q in flat],
                                            [None] * len(flat))]
    if was_applied:
        edit.apply()
    changes = iter(relative_change(max(b, MIN_PROB), a)
                   for b, a in zip(before, after, strict=True))
    return [statistics.fmean([next(changes) for _ in queries]) if queries else None
            for queries in facts]


def locality(lm: LanguageModel, edit: WeightEdit,
             groups: Mapping[str, Mapping[str, Sequence[Sequence[Query]]]],
             clean: CleanProbs) -> dict[str, dict[str, list[float | None]]]:
    """:func:`gold_changes` of every group of facts, ``{language: {group: facts' queries}}``
    (groups such as ``same_relation`` and ``other_relation``), in one batched pass."""
    names = [(lang, group) for lang, by_group in groups.items() for group in by_group]
    facts = [queries for lang, group in names for queries in groups[lang][group]]
    changes = iter(gold_changes(lm, edit, facts, clean))
    out: dict[str, dict[str, list[float | None]]] = {lang: {} for lang in groups}
    for lang, group in names:
        out[lang][group] = [next(changes) for _ in groups[lang][group]]
    return out

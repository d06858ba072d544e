"""Relation neurons: knowledge neurons of many facts of *one* relation (issue 25).

Suppressing a fact's knowledge neurons on gemma-3-270m also moves other facts of the *same*
relation far more than facts of other relations (BENCHMARKS: 60% against 7%): many of a fact's
neurons hold its relation ("capital of ...") rather than the fact. Generic neurons
(:mod:`mkn.localization.generic`) are shared *across* relations; relation neurons are shared
*within* one.

Definition. On a reference sample of facts the model knows, held out from the evaluated facts
(:mod:`mkn.localization.reference`), a neuron *serves* a fact when it is in the fact's
knowledge-neuron set in any language. For a relation ``r`` with reference facts ``F_r``,

    share_r(n) = |{f in F_r : n serves f}| / |F_r|

and ``n`` is a *relation neuron* of ``r`` when ``share_r(n) >= threshold`` and it serves at least
:data:`MIN_FACTS` facts of ``r`` (one fact's neuron is never a relation's). A relation with
fewer than :data:`MIN_RELATION_FACTS` reference facts has no relation neurons (nothing can be
said), and is listed as *not covered*. A located fact's knowledge neurons are then split into
its **fact set** (relation neurons of its relation left out) and its **relation set** (the
relation neurons among them).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import torch

from mkn.localization.generic import GenericNeurons, ReferenceList, fact_rows
from mkn.models.families import Neuron

DEFAULT_THRESHOLD = 0.5
MIN_FACTS = 2  # facts of its relation a relation neuron must serve
MIN_RELATION_FACTS = 3  # reference facts a relation needs for its list
CONTRASTIVE_SHARE = 0.2  # contrastive_set: share of the largest contrast (Dai et al.'s 0.2)


def within_relation_shares(rows: Iterable[tuple[str, Iterable[Neuron]]]
                           ) -> tuple[dict[str, dict[Neuron, float]], dict[str, dict[Neuron, int]],
                                      dict[str, int]]:
    """Per relation: ``share_r(n)`` of every neuron serving one of its facts, how many facts it
    serves, and the relation's number of reference facts; ``rows``: ``(relation, neurons)`` per
    reference fact (module docstring)."""
    facts: Counter = Counter()
    served: dict[str, Counter] = defaultdict(Counter)
    for relation, neurons in rows:
        facts[relation] += 1
        for neuron in set(neurons):
            served[relation][neuron] += 1
    shares = {r: {n: count / facts[r] for n, count in served[r].items()} for r in facts}
    return shares, {r: dict(served[r]) for r in facts}, dict(facts)


@dataclass
class RelationNeurons(ReferenceList):
    """Relation neurons per relation, from a reference sample (module docstring)."""

    threshold: float = DEFAULT_THRESHOLD
    KIND = "relation-neuron list"

    @cached_property
    def _within(self):
        return within_relation_shares(fact_rows(self.items))

    def covers(self, relation: str) -> bool:
        """Whether ``relation`` has enough reference facts for a list."""
        return self._within[2].get(relation, 0) >= MIN_RELATION_FACTS

    def covered(self) -> dict[str, int]:
        """Reference facts per relation, for every relation of the sample."""
        return dict(sorted(self._within[2].items()))

    def shares(self, relation: str) -> dict[Neuron, float]:
        """``share_r`` of every neuron serving a reference fact of ``relation``."""
        return self._within[0].get(relation, {})

    @cached_property
    def _lists(self) -> dict[str, dict[Neuron, float]]:
        shares, counts, _ = self._within
        return {r: dict(sorted(((n, s) for n, s in shares[r].items()
                                if s >= self.threshold and counts[r][n] >= MIN_FACTS),
                               key=lambda kv: (-kv[1], kv[0])))
                for r in shares if self.covers(r)}

    def neurons(self, relation: str) -> dict[Neuron, float]:
        """The relation neurons of ``relation`` and their shares, highest first (empty for a
        relation not covered)."""
        return self._lists.get(relation, {})

    def sizes(self) -> dict[str, int]:
        """Relation neurons per covered relation."""
        return {relation: len(listed) for relation, listed in self._lists.items()}

    def summary(self) -> dict:
        """What a run records of the list: threshold, reference facts per relation, relation
        neurons per covered relation, and the held-out check."""
        return {"threshold": self.threshold, "reference_facts": self.covered(),
                "per_relation": self.sizes(), "held_out": self.source.get("held_out")}

    def split(self, relation: str, neurons: Iterable[Neuron]) -> tuple[list[Neuron],
                                                                        list[Neuron]]:
        """``(fact set, relation set)`` of a fact of ``relation``: ``neurons`` without and with
        the relation's neurons, order kept."""
        listed = self.neurons(relation)
        neurons = list(neurons)
        return [n for n in neurons if n not in listed], [n for n in neurons if n in listed]


def contrastive_set(neurons: Iterable[Neuron], scores: torch.Tensor, others: torch.Tensor,
                    share: float = CONTRASTIVE_SHARE) -> list[Neuron]:
    """The neurons of a fact's set that stand out against other facts of its relation (the
    alternative to relation neurons that issue 25 asks to measure):

        c(n) = a_f(n) - mean_{g in F_r} a_g(n),    kept: n in ``neurons`` with
        c(n) >= share * max_m c(m) > 0,

    with ``scores`` = a_f and ``others`` = the mean over reference facts ``F_r`` of the
    relation (``[layers, neurons]``, same method and language). Dai et al.'s relative threshold
    applied to the contrast, in the spirit of the negative examples of EleutherAI's
    knowledge-neurons (which remove the neurons of negative prompts as a set instead). Order
    kept; empty when no neuron is above the relation's mean."""
    contrast = scores.float() - others.float()
    top = float(contrast.max())
    if top <= 0:
        return []
    return [n for n in neurons if float(contrast[n[0], n[1]]) >= share * top]


@dataclass(frozen=True)
class LeftOut:
    """What a located set leaves out: the generic neurons (shared across relations,
    :mod:`mkn.localization.generic`) and the relation neurons of the fact's relation (this
    module). Passed where a generic-neuron list is taken (``locate_fact(..., generic=)``, the
    experiments' ``generic=``, one per method); ``None`` on either side keeps those neurons in
    the sets (``--generic keep``, ``--relation-neurons keep``)."""

    generic: GenericNeurons | None = None
    relations: RelationNeurons | None = None

    @classmethod
    def of(cls, value: LeftOut | GenericNeurons | None,
           relations: RelationNeurons | None = None) -> LeftOut:
        """``value`` (a list, a :class:`LeftOut` or None) as a :class:`LeftOut`; ``relations``
        given here wins over the one ``value`` carries."""
        if isinstance(value, LeftOut):
            return cls(value.generic, relations or value.relations)
        return cls(value, relations)

    def excluded(self, relation: str) -> set[Neuron]:
        """Every neuron a set of a fact of ``relation`` leaves out."""
        out = set(self.generic.neurons()) if self.generic is not None else set()
        if self.relations is not None:
            out |= set(self.relations.neurons(relation))
        return out

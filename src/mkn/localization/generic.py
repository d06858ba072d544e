"""Generic neurons: knowledge neurons of many facts of *different* relations.

A neuron found for many facts, whatever the relation, does not store *a* fact: suppressing it
also moves unrelated facts (the specificity control of :mod:`mkn.interventions.controls` shows
it). We find such neurons on a reference sample of facts the model knows and leave them out of
knowledge-neuron, language-agnostic and degenerate sets by default (``--generic keep`` keeps
them, as Dai et al. and AMIG do).

Definition. The reference sample gives a knowledge-neuron set per (fact, language) item; a
neuron *serves* a fact when it is in the fact's set in any language (the union over languages,
so one list holds for every language, including those the model knows little of). For a neuron
``n`` and a relation ``r``, let ``others(r)`` be the reference facts of relations other than
``r``; the *share* of ``n`` is

    share(n) = min over relations r of |{f in others(r) : n serves f}| / |others(r)|

i.e. the fraction of facts outside the one relation it serves most that it still serves. A
neuron of one relation (every capital) has a share near 0; a neuron of every fact, near 1. ``n``
is *generic* when ``share(n) >= threshold`` and it serves at least :data:`MIN_FACTS` facts
outside that relation (so that a small sample does not call a neuron of one or two facts
generic).

Default threshold 0.05, chosen on facts disjoint from the study's
(``benchmarks/bench_generic_rule.py``, docs/BENCHMARKS.md, "Which rule for generic neurons?"):
on gemma-3-270m, bmlama17 in en, es, nl, ko and zh with the study's 48 facts removed, a reference
sample of 48 known facts and 58 known items of 24 *other* known facts (the three overlaps 0,
checked), the fixed criterion (median own drop at least 80%, then the smallest median change of
unrelated facts under suppression) chose 0.05 among 0.05, 0.07, 0.1 and 0.15: unrelated facts
moved by 25% (0.07: 27%, 0.1: 26%, 0.15: 32%, nothing generic: 33%; the intervals overlap), the
fact's own p(gold) dropped by 96%. The earlier default, 0.07, had been chosen on 32 bmlama17
facts of which 28 were in the study's sample (issue 20).

The reference sample and the cached list: :mod:`mkn.localization.reference`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mkn.models.families import Neuron
from mkn.runs.directory import digest, write_atomic

DEFAULT_THRESHOLD = 0.05
MIN_FACTS = 3  # facts outside its own relation a generic neuron must serve
FORMAT = 2  # version of the cached file

@dataclass(frozen=True)
class ReferenceItem:
    """The knowledge neurons of one (fact, language) item of the reference sample."""

    fact_id: str
    relation: str
    language: str
    neurons: tuple[Neuron, ...]


@dataclass(frozen=True)
class Shares:
    """Per neuron: its share (module docstring) and how many facts outside its top relation it
    serves; ``support``: facts outside the largest relation (the smallest denominator)."""

    share: dict[Neuron, float]
    outside: dict[Neuron, int]
    support: int


def relation_shares(rows: Sequence[tuple[str, Iterable[Neuron]]]) -> Shares:
    """:class:`Shares` of ``(relation, neurons)`` rows, one row per fact (module docstring).

    With a single relation nothing can be said: no shares, support 0.
    """
    per_relation = Counter(relation for relation, _ in rows)
    if len(per_relation) < 2:
        return Shares({}, {}, 0)
    total = len(rows)
    counts: dict[Neuron, Counter] = defaultdict(Counter)
    for relation, neurons in rows:
        for neuron in set(neurons):
            counts[neuron][relation] += 1
    share, outside = {}, {}
    for neuron, by_relation in counts.items():
        found = sum(by_relation.values())
        share[neuron] = min((found - by_relation[r]) / (total - size)
                            for r, size in per_relation.items())
        outside[neuron] = found - max(by_relation.values())
    return Shares(share, outside, total - max(per_relation.values()))


def fact_rows(items: Iterable[ReferenceItem]) -> list[tuple[str, set[Neuron]]]:
    """``(relation, neurons serving the fact in any language)`` per reference fact."""
    relation: dict[str, str] = {}
    served: dict[str, set[Neuron]] = defaultdict(set)
    for item in items:
        relation[item.fact_id] = item.relation
        served[item.fact_id].update(item.neurons)
    return [(relation[fact], served[fact]) for fact in relation]


@dataclass
class ReferenceList:
    """Neurons found on a reference sample (``items``, with a ``threshold`` and where the sample
    came from, ``source``): what generic and relation neurons share, their reference facts,
    content digest and file form. Subclasses say which neurons the list holds."""

    items: list[ReferenceItem]
    threshold: float = DEFAULT_THRESHOLD
    source: dict = field(default_factory=dict)  # what the reference sample was (provenance)
    KIND = "reference list"

    @property
    def facts(self) -> int:
        """Reference facts (with at least one located language)."""
        return len({item.fact_id for item in self.items})

    @property
    def relations(self) -> int:
        """Relations of the reference facts."""
        return len({item.relation for item in self.items})

    def with_threshold(self, threshold: float):
        return type(self)(self.items, threshold, self.source)

    @property
    def digest(self) -> str:
        """Content digest of the list (threshold and reference items): what a run's identity
        records, so that a resume cannot mix two lists that both came from "auto"."""
        return digest({k: v for k, v in self.to_json().items() if k != "source"})

    def to_json(self) -> dict:
        return {"format": FORMAT, "threshold": self.threshold, "source": self.source,
                "items": [{"fact_id": i.fact_id, "relation": i.relation, "language": i.language,
                           "neurons": [list(n) for n in i.neurons]} for i in self.items]}

    @classmethod
    def from_json(cls, data: dict, where: str | None = None):
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            items = [ReferenceItem(str(i["fact_id"]), str(i["relation"]), str(i["language"]),
                                   tuple((int(n[0]), int(n[1])) for n in i["neurons"]))
                     for i in data["items"]]
            return cls(items, float(data["threshold"]), dict(data.get("source") or {}))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise ValueError(f"{where or cls.KIND}: not a {cls.KIND} ({error})") from None

    def save(self, path: Path) -> Path:
        """Write atomically (temporary file, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1)
                            + "\n")

    @classmethod
    def load(cls, path: Path):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read a {cls.KIND} ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a {cls.KIND}")
        return cls.from_json(data, str(path))


@dataclass
class GenericNeurons(ReferenceList):
    """Generic neurons, from the knowledge neurons of a reference sample (module docstring)."""

    KIND = "generic-neuron list"

    @cached_property
    def _shares(self) -> Shares:
        return relation_shares(fact_rows(self.items))

    def shares(self) -> dict[Neuron, float]:
        """Share of every neuron seen in the reference sample."""
        return self._shares.share

    @cached_property
    def _generic(self) -> dict[Neuron, float]:
        shares = self._shares
        generic = {n: s for n, s in shares.share.items()
                   if s >= self.threshold and shares.outside[n] >= MIN_FACTS}
        return dict(sorted(generic.items(), key=lambda kv: (-kv[1], kv[0])))

    def neurons(self) -> dict[Neuron, float]:
        """The generic neurons and their shares, highest first (one list for every
        language)."""
        return self._generic

    def split(self, neurons: Iterable[Neuron]) -> tuple[list[Neuron], list[Neuron]]:
        """``(kept, generic)``: ``neurons`` without and with the generic ones, order kept."""
        generic = self.neurons()
        neurons = list(neurons)
        return ([n for n in neurons if n not in generic], [n for n in neurons if n in generic])

    def summary(self, languages: Sequence[str]) -> dict:
        """Per language: reference items (facts located in it) and generic neurons."""
        items = Counter(i.language for i in self.items)
        return {lang: {"reference_items": items.get(lang, 0), "generic": len(self._generic)}
                for lang in languages}


def check_held_out(reference: Iterable[str], evaluated: Iterable[str]) -> int:
    """The number of facts the reference sample shares with the evaluated ones, which must be 0:
    a list tuned on the facts it is judged on is refused with a one-line error naming them."""
    overlap = sorted(set(reference) & set(evaluated))
    if overlap:
        shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more"
                                          if len(overlap) > 5 else "")
        raise ValueError(f"the generic-neuron reference sample overlaps the evaluated facts in "
                         f"{len(overlap)} fact(s) ({shown}); hold them out (held_out=) or "
                         "pass --generic FILE built on other facts")
    return 0

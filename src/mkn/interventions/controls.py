"""An effect beside its controls: a random set of the same shape, and unrelated facts.

For a neuron set ``S`` suppressed (x0) or enhanced (x ``factor``) on a fact's queries:

- *effect*: the mean over the fact's queries of the relative change of p(gold),
  ``(p_after - p_before) / p_before`` (AMIG's ``pct_change``);
- *random control*: the same for sets drawn at random with as many neurons in each layer as ``S``
  (none of ``S``), ``draws`` seeded draws, on the same queries; its value is the mean over draws;
- *unrelated control*: the change of p(gold) of facts of *other relations* in the same language
  under ``S`` (the mean over those facts of each one's mean over its queries).

Oriented by what the intervention aims at (``o = -1`` for suppression, which should lower p;
``o = +1`` for enhancement), two numbers per item:

    selectivity = o * effect - o * random_effect       (it beats a set of the same shape)
    specificity = o * effect - o * unrelated_effect    (it leaves other facts alone)

in units of relative change: a suppression that drops its fact by 95% while random sets and
unrelated facts move by 2% has selectivity and specificity 0.93. Random controls follow the
usual practice of the knowledge-neuron literature (Dai et al. 2022 compare against random
neurons); the unrelated-fact control is the locality measure of model editing (Meng et al.
2022), applied to activations.
"""

from __future__ import annotations

import hashlib
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from mkn.attribution.engine import clean_run
from mkn.attribution.queries import EncodedQuery, encode
from mkn.attribution.scoring import score_rows
from mkn.interventions.activation import group_neurons, neuron_list
from mkn.models.families import Neuron
from mkn.models.loading import LanguageModel

Query = tuple[str, str]  # (prompt, gold object)

DEFAULT_DRAWS = 3
DEFAULT_UNRELATED = 3
ORIENTATION = {"suppress": -1.0, "enhance": 1.0}
MIN_PROB = 1e-12


def stable_seed(*parts: object) -> int:
    """A seed from ``parts`` that is the same in every process (unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def random_like(neurons: Iterable[Sequence[int]], n_neurons: int, rng: random.Random,
                exclude: Iterable[Sequence[int]] = ()) -> list[Neuron]:
    """A random set with as many neurons in each layer as ``neurons``, none of them (nor of
    ``exclude``); ``n_neurons`` per layer."""
    per_layer: dict[int, int] = {}
    taken: set[Neuron] = set()
    for layer, index in neurons:
        per_layer[int(layer)] = per_layer.get(int(layer), 0) + 1
        taken.add((int(layer), int(index)))
    taken |= {(int(layer), int(index)) for layer, index in exclude}
    drawn = []
    for layer in sorted(per_layer):
        pool = [i for i in range(n_neurons) if (layer, i) not in taken]
        if len(pool) < per_layer[layer]:
            raise ValueError(f"layer {layer} has {len(pool)} neurons left for a random set of "
                             f"{per_layer[layer]}")
        drawn += [(layer, i) for i in sorted(rng.sample(pool, per_layer[layer]))]
    return drawn


def relative_change(before: float, after: float) -> float:
    """(after - before) / before (AMIG's ``pct_change``)."""
    if before <= 0:
        raise ValueError(f"relative change from a non-positive probability {before}")
    return (after - before) / before


@dataclass(frozen=True)
class ControlledEffect:
    """The effect of one intervention on a fact, beside its controls (module docstring)."""

    mode: str
    neurons: int
    effect: float
    random: tuple[float, ...]  # per random draw
    unrelated: tuple[float, ...]  # per unrelated fact (of other relations)
    matched: tuple[float, ...] = ()  # per magnitude-matched random draw (same layers)
    same_relation: tuple[float, ...] = ()  # per other fact of the same relation
    neuron_set: tuple[Neuron, ...] = ()  # the set intervened on, sorted (what was done)
    random_sets: tuple[tuple[Neuron, ...], ...] = ()  # its random draws, in ``random``'s order
    matched_sets: tuple[tuple[Neuron, ...], ...] = ()  # its magnitude-matched draws

    @property
    def random_effect(self) -> float | None:
        return statistics.fmean(self.random) if self.random else None

    @property
    def matched_effect(self) -> float | None:
        return statistics.fmean(self.matched) if self.matched else None

    @property
    def same_relation_effect(self) -> float | None:
        return statistics.fmean(self.same_relation) if self.same_relation else None

    @property
    def matched_selectivity(self) -> float | None:
        """Effect beyond random neurons of the same layers *and* clean activation magnitude."""
        return self._against(self.matched_effect)

    @property
    def relation_specificity(self) -> float | None:
        """Effect beyond the effect on other facts of the *same* relation: high only for a set
        that stores this fact rather than the relation."""
        return self._against(self.same_relation_effect)

    @property
    def unrelated_effect(self) -> float | None:
        return statistics.fmean(self.unrelated) if self.unrelated else None

    def _against(self, control: float | None) -> float | None:
        if control is None:
            return None
        o = ORIENTATION[self.mode]
        return o * self.effect - o * control

    @property
    def selectivity(self) -> float | None:
        return self._against(self.random_effect)

    @property
    def specificity(self) -> float | None:
        return self._against(self.unrelated_effect)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "neurons": self.neurons, "effect": self.effect,
                "random": list(self.random), "unrelated": list(self.unrelated),
                "random_effect": self.random_effect, "unrelated_effect": self.unrelated_effect,
                "selectivity": self.selectivity, "specificity": self.specificity,
                "matched": list(self.matched), "same_relation": list(self.same_relation),
                "matched_effect": self.matched_effect,
                "same_relation_effect": self.same_relation_effect,
                "matched_selectivity": self.matched_selectivity,
                "relation_specificity": self.relation_specificity,
                "set": [list(n) for n in self.neuron_set],
                "random_sets": [[list(n) for n in drawn] for drawn in self.random_sets],
                "matched_sets": [[list(n) for n in drawn] for drawn in self.matched_sets]}

    @classmethod
    def record(cls, mode: str, neurons: Sequence[Sequence[int]], effect: float,
               random: Sequence[float], unrelated: Sequence[float],
               random_sets: Sequence[Sequence[Sequence[int]]] = (),
               matched: Sequence[float] = (),
               matched_sets: Sequence[Sequence[Sequence[int]]] = (),
               same_relation: Sequence[float] = ()) -> ControlledEffect:
        """One effect with the sets it was measured with (each sorted as pairs)."""
        pairs = sorted_set(neurons)
        return cls(mode, len(pairs), effect, tuple(random), tuple(unrelated),
                   tuple(matched), tuple(same_relation), pairs,
                   tuple(sorted_set(d) for d in random_sets),
                   tuple(sorted_set(d) for d in matched_sets))


def sorted_set(neurons: Iterable[Sequence[int]]) -> tuple[Neuron, ...]:
    """The distinct neurons of a set as sorted ``(layer, index)`` pairs."""
    return tuple(sorted({(int(n[0]), int(n[1])) for n in neurons}))


class CleanProbs:
    """Encoded queries and their p(gold) with no intervention, computed once per query."""

    def __init__(self, lm: LanguageModel):
        self.lm = lm
        self.known: dict[Query, float] = {}
        self._encoded: dict[Query, EncodedQuery] = {}

    def encode(self, query: Query) -> EncodedQuery:
        if query not in self._encoded:
            self._encoded[query] = encode(self.lm, *query)
        return self._encoded[query]

    def __call__(self, queries: Sequence[Query]) -> list[float]:
        missing = list(dict.fromkeys(q for q in queries if q not in self.known))
        if missing:
            scored = score_rows(self.lm, [self.encode(q) for q in missing], [None] * len(missing))
            for query, prediction in zip(missing, scored, strict=True):
                self.known[query] = prediction.prob
        return [self.known[q] for q in queries]


def row_intervention(neurons: Sequence[Sequence[int]], mode: str,
                     factor: float = 2.0) -> dict[int, tuple[list[int], float]]:
    """``{layer: (indices, multiplier)}`` of suppressing (x0) or enhancing (x factor)."""
    if mode not in ORIENTATION:
        raise ValueError(f"unknown intervention {mode!r}; choose suppress or enhance")
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        by_layer.setdefault(int(layer), []).append(int(index))
    multiplier = 0.0 if mode == "suppress" else factor
    return {layer: (indices, multiplier) for layer, indices in by_layer.items()}


def measure_sets(lm: LanguageModel, jobs: Sequence[tuple[Sequence[Sequence[int]], str,
                                                         Sequence[Query]]],
                 clean: CleanProbs, factor: float = 2.0, positions: str = "all") -> list[float]:
    """For each job ``(neurons, mode, queries)``: the mean relative change of p(gold) of the
    queries when ``neurons`` are suppressed or enhanced, every job in one batched pass
    (:func:`mkn.attribution.scoring.score_rows`; ``positions``: every position or only the
    prediction positions). A (query, intervention) pair that several jobs share (two methods'
    equal sets, and so their equal random draws) is scored once."""
    rows: dict[tuple, int] = {}
    encoded, interventions, owners = [], [], []
    for number, (neurons, mode, queries) in enumerate(jobs):
        intervention = row_intervention(neurons, mode, factor)
        signature = tuple(sorted((layer, tuple(sorted(set(indices))), multiplier)
                                 for layer, (indices, multiplier) in intervention.items()))
        for query in queries:
            row = rows.setdefault((query, signature), len(encoded))
            if row == len(encoded):
                encoded.append(clean.encode(query))
                interventions.append(intervention)
            owners.append((number, query, row))
    asked = [query for _, query, _ in owners]
    before = dict(zip(asked, clean(asked), strict=True))
    after = [p.prob for p in score_rows(lm, encoded, interventions, positions=positions)]
    changes: list[list[float]] = [[] for _ in jobs]
    for owner, query, row in owners:
        changes[owner].append(relative_change(max(before[query], MIN_PROB), after[row]))
    return [statistics.fmean(c) for c in changes]


def set_content(neurons: Iterable[Sequence[int]]) -> str:
    """The neurons of a set, sorted, as text: what its random controls are seeded by (the same
    set, in any order and found by any method, gets the same draws)."""
    return ",".join(f"{layer}:{index}" for layer, index in sorted(
        (int(n[0]), int(n[1])) for n in neurons))


def random_sets(neurons: Sequence[Sequence[int]], n_neurons: int, draws: int,
                seed: int | str) -> list[list[Neuron]]:
    """``draws`` random sets shaped like ``neurons``, seeded by ``seed`` *and the content of the
    set* (:func:`set_content`): the same set gets the same draws whichever method found it, so
    two methods that agree are never told apart by their random controls."""
    rng = random.Random(stable_seed(seed, set_content(neurons), "random-control"))
    return [random_like(neurons, n_neurons, rng) for _ in range(draws)]


def magnitude_matched_sets(neurons: Sequence[Sequence[int]], activations: torch.Tensor,
                           draws: int, seed: int | str, window: int | None = None
                           ) -> list[list[Neuron]]:
    """``draws`` random sets in the same layers as ``neurons`` and matched on clean activation
    magnitude: each neuron is replaced by a random other neuron of its layer whose |activation|
    (``activations[layer]``, the clean run of the fact's query at the prediction position) ranks
    within ``window`` places of its own (default: 1% of the layer, at least 4), never a neuron
    of the set. A set of high-activation neurons is then compared with other high-activation
    neurons, not with the layer's mostly idle ones. Seeded by ``seed`` and the set's content
    (as :func:`random_sets`)."""
    wanted = sorted({(int(n[0]), int(n[1])) for n in neurons})
    n_neurons = int(activations.shape[1])
    window = window or max(4, n_neurons // 100)
    rng = random.Random(stable_seed(seed, set_content(wanted), "magnitude-matched"))
    ranks: dict[int, tuple[list[int], dict[int, int]]] = {}
    for layer in {layer for layer, _ in wanted}:
        order = torch.argsort(activations[layer].float().abs(), descending=True,
                              stable=True).tolist()
        ranks[layer] = (order, {index: rank for rank, index in enumerate(order)})
    taken_by_set = set(wanted)
    sets = []
    for _ in range(draws):
        taken, drawn = set(taken_by_set), []
        for layer, index in wanted:
            order, rank_of = ranks[layer]
            rank = rank_of[index]
            for width in (window, 2 * window, 4 * window, n_neurons):  # widen if crowded
                pool = [order[r] for r in range(max(0, rank - width),
                                                min(n_neurons, rank + width + 1))
                        if (layer, order[r]) not in taken]
                if pool:
                    break
            else:
                raise ValueError(f"layer {layer} has no neuron left to match {index}")
            choice = (layer, rng.choice(pool))
            taken.add(choice)
            drawn.append(choice)
        sets.append(drawn)
    return sets


def clean_activations(lm: LanguageModel, query: Query, clean: CleanProbs) -> torch.Tensor:
    """The clean FFN neurons ``[layers, neurons]`` of ``query`` at its (first) prediction
    position: what :func:`magnitude_matched_sets` matches on."""
    return clean_run(lm, clean.encode(query).steps[0]).activations


def controlled_effect(lm: LanguageModel, neurons: Sequence[Sequence[int]], mode: str,
                      own: Sequence[Query], unrelated: Sequence[Sequence[Query]] = (),
                      draws: int = DEFAULT_DRAWS, seed: int | str = 0, factor: float = 2.0,
                      clean: CleanProbs | None = None,
                      positions: str = "all",
                      same_relation: Sequence[Sequence[Query]] = ()) -> ControlledEffect:
    """The effect of suppressing or enhancing ``neurons`` on the ``own`` queries of a fact,
    beside ``draws`` random sets of the same shape (seeded by ``seed``), the queries of
    ``unrelated`` facts (one query list per fact) and of ``same_relation`` facts (other facts
    of the fact's relation: the relation-specificity control); ``clean`` reuses clean
    probabilities; ``positions`` as in :func:`measure_sets`.

    >>> controlled_effect(lm, [(12, 1542), (6, 35)], "suppress",
    ...                   own=[("The capital of France is", "Paris")],
    ...                   unrelated=[[("The Eiffel Tower is in", "Paris")]]).specificity
    """
    if mode not in ORIENTATION:
        raise ValueError(f"unknown intervention {mode!r}; choose suppress or enhance")
    if not own:
        raise ValueError("no queries to measure the effect on")
    neurons = neuron_list(lm, neurons)  # pairs (a bool mask becomes its True entries)
    group_neurons(lm, neurons)  # checks the set: in range, not empty
    clean = clean or CleanProbs(lm)
    drawn = random_sets(neurons, lm.n_neurons, draws, seed)
    changes = measure_sets(lm, [(neurons, mode, own), *[(neurons, mode, u) for u in unrelated],
                                *[(r, mode, own) for r in drawn],
                                *[(neurons, mode, k) for k in same_relation]],
                           clean, factor, positions)
    rest = iter(changes[1:])  # in the order of the jobs above
    others = tuple(next(rest) for _ in unrelated)
    random_effects = tuple(next(rest) for _ in drawn)
    return ControlledEffect.record(mode, neurons, changes[0], random_effects, others, drawn,
                                   same_relation=tuple(rest))

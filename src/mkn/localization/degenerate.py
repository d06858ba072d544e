"""Degenerate knowledge neurons (AMIG, Chen et al. AAAI 2024, Algorithm 1).

Neurons that store the same fact redundantly: suppressing either alone barely matters,
suppressing both does. Among a fact's top-k neurons (k = 20):

1. keep the *potential* neurons whose single suppression keeps ``p >= p0 * (1 - T_low)``;
2. a pair of potential neurons is degenerate if suppressing both gives ``p < p0 * (1 - T_high)``.

Thresholds are relative to the clean probability ``p0`` (AMIG defaults T_low = 0.2,
T_high = 0.25). All singles and all candidate pairs run batched (one row each), not one by one.
With several queries, ``p`` is the mean over the queries of the relative probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import torch

from mkn.interventions.rows import row_probabilities
from mkn.models.families import Neuron
from mkn.models.loading import LanguageModel


@dataclass
class DegenerateResult:
    candidates: list[Neuron]
    potential: list[Neuron]
    pairs: list[tuple[Neuron, Neuron]]
    single_ratio: dict[Neuron, float] = field(default_factory=dict)
    pair_ratio: dict[tuple[Neuron, Neuron], float] = field(default_factory=dict)


def select_potential(single_ratio: dict[Neuron, float], t_low: float) -> list[Neuron]:
    """Neurons whose single suppression keeps at least ``1 - t_low`` of the probability."""
    return [n for n, r in single_ratio.items() if r >= 1 - t_low]


def select_pairs(pair_ratio: dict[tuple[Neuron, Neuron], float],
                 t_high: float) -> list[tuple[Neuron, Neuron]]:
    """Pairs whose joint suppression leaves less than ``1 - t_high`` of the probability."""
    return [pair for pair, r in pair_ratio.items() if r < 1 - t_high]


def relative_probabilities(lm: LanguageModel, queries: Sequence[tuple[str, str]],
                           neuron_sets: Sequence[Sequence[Neuron]]) -> torch.Tensor:
    """Mean over queries of p(with row r suppressed) / p(clean); ``[len(neuron_sets)]``."""
    ratios = []
    for prompt, target in queries:
        probs = row_probabilities(lm, prompt, target, [[], *neuron_sets])
        ratios.append(probs[1:] / probs[0].clamp_min(1e-30))
    return torch.stack(ratios).mean(0)


def degenerate_neurons(lm: LanguageModel, queries: Sequence[tuple[str, str]],
                       candidates: Sequence[Neuron], t_low: float = 0.2,
                       t_high: float = 0.25) -> DegenerateResult:
    """AMIG's Algorithm 1 over ``candidates`` (the fact's top-k neurons), batched."""
    candidates = [tuple(map(int, n)) for n in candidates]
    if not candidates:
        return DegenerateResult([], [], [])
    singles = relative_probabilities(lm, queries, [[n] for n in candidates])
    single_ratio = {n: float(r) for n, r in zip(candidates, singles, strict=True)}
    potential = select_potential(single_ratio, t_low)
    pairs = list(combinations(potential, 2))
    pair_ratio: dict[tuple[Neuron, Neuron], float] = {}
    if pairs:
        joint = relative_probabilities(lm, queries, [list(pair) for pair in pairs])
        pair_ratio = {pair: float(r) for pair, r in zip(pairs, joint, strict=True)}
    return DegenerateResult(candidates, potential, select_pairs(pair_ratio, t_high),
                            single_ratio, pair_ratio)

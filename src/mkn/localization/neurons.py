"""Knowledge neurons from attribution scores: thresholds, refinement, language-agnostic sets.

Pure functions over score tensors ``[layers, neurons]`` and neuron lists ``[(layer, index)]``.

- Coarse neurons (Dai et al. 2022; AMIG): ``score > t * max(score)``, the max taken over all
  layers; AMIG's per-language ``t``: en 0.3, zh 0.2 (0.2 for other languages).
- Refined neurons (Dai et al.): neurons found in more than a fraction ``p`` of a language's
  queries. (AMIG's ``get_refined_neurons`` ignores ``p`` and concatenates; we follow Dai.)
- Language-agnostic (AMIG's "language-independent") neurons: the intersection of the
  per-language sets; the soft version keeps neurons present in at least a fraction ``q`` of
  the languages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import torch

from mkn.models.families import Neuron

DEFAULT_THRESHOLDS = {"en": 0.3, "zh": 0.2}
DEFAULT_THRESHOLD = 0.2


def threshold_for(language: str, thresholds: Mapping[str, float] | None = None) -> float:
    table = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    return table.get(language, table.get("*", DEFAULT_THRESHOLD))


def coarse_neurons(scores: torch.Tensor, ratio: float) -> list[Neuron]:
    """Neurons with ``score > ratio * max(score)``, highest score first."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"threshold ratio must be in [0, 1], got {ratio}")
    peak = float(scores.max())
    if peak <= 0:
        return []
    layers, indices = torch.nonzero(scores > ratio * peak, as_tuple=True)
    kept = sorted(zip(layers.tolist(), indices.tolist(), strict=True),
                  key=lambda n: -float(scores[n]))
    return [(int(layer), int(index)) for layer, index in kept]


def refine(per_query: Sequence[Iterable[Neuron]], p: float) -> list[Neuron]:
    """Neurons present in more than a fraction ``p`` of the queries (Dai et al.).

    With a single query every coarse neuron is kept. Order: most frequent first, then by first
    appearance.
    """
    if not per_query:
        return []
    counts = Counter(n for neurons in per_query for n in dict.fromkeys(neurons))
    if len(per_query) == 1:
        return list(counts)
    need = p * len(per_query)
    return [n for n, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c > need]


def shared_neurons(per_language: Mapping[str, Iterable[Neuron]],
                   fraction: float = 1.0) -> list[Neuron]:
    """Neurons present in at least ``fraction`` of the languages (1.0: the intersection)."""
    if not per_language:
        return []
    counts = Counter(n for neurons in per_language.values() for n in dict.fromkeys(neurons))
    need = fraction * len(per_language)
    return sorted(n for n, c in counts.items() if c >= need - 1e-9)


def layer_histogram(neurons: Iterable[Neuron], n_layers: int) -> list[int]:
    """How many of ``neurons`` sit in each layer."""
    counts = [0] * n_layers
    for layer, _ in neurons:
        counts[layer] += 1
    return counts


def jaccard(a: Iterable[Neuron], b: Iterable[Neuron]) -> float:
    """|A & B| / |A | B| (0 when both are empty)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 0.0


def overlap_matrix(per_language: Mapping[str, Iterable[Neuron]]) -> dict[str, dict[str, float]]:
    """Jaccard overlap of the knowledge-neuron sets of every pair of languages."""
    sets = {lang: set(n) for lang, n in per_language.items()}
    return {a: {b: jaccard(sets[a], sets[b]) for b in sets} for a in sets}

"""MATRICE: multilingual integrated gradients with uncertainty across queries and languages.

The equations of Cao et al. (2024, "One Mind, Many Tongues") are not available to us; this is
*our* formulation of "integrated gradients with uncertainty estimation across paraphrased
queries and languages":

1. Per query ``q`` of language ``l``: IG scores (architecture-adapted baseline, as AMIG),
   normalized by their maximum, ``a(k, q) = s(k, q) / max_k s(k, q)``, and a confidence
   ``c(q)``: the model's per-token geometric-mean probability of the gold object.
2. Per language, with weights ``w_q = c(q) / sum_q c(q)``:
   ``mu_k = sum_q w_q a(k, q)``, ``sigma_k = sqrt(sum_q w_q (a(k, q) - mu_k)^2)`` and the lower
   bound ``s_k^l = mu_k - lambda * sigma_k``: a neuron scores high only if it is attributed
   consistently across the paraphrases the model is confident about.
3. Across languages, with language confidences ``C_l`` (mean ``c(q)`` of the language) and
   weights ``W_l = C_l / sum_l C_l``: ``M_k = sum_l W_l s_k^l``,
   ``S_k = sqrt(sum_l W_l (s_k^l - M_k)^2)`` and the score ``M_k - lambda * S_k``.

Language-agnostic neurons pass ``score > t * max(score)`` and are knowledge neurons
(``s_k^l > t_l * max s^l``) in at least a fraction ``q`` of the languages. With
``lambda = 0`` and uniform weights this is plain multilingual IG averaging (the ablation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def normalize(scores: torch.Tensor) -> torch.Tensor:
    """``scores / max(scores)`` (unchanged when the max is not positive)."""
    peak = scores.max()
    return scores / peak if peak > 0 else scores


def weighted_mean_std(values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """Weighted mean and standard deviation over the first axis (weights renormalized)."""
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} values but {len(weights)} weights")
    total = weights.sum()
    w = weights / total if total > 0 else torch.full_like(weights, 1 / len(weights))
    w = w.view(-1, *([1] * (values.dim() - 1)))
    mean = (w * values).sum(0)
    std = (w * (values - mean) ** 2).sum(0).sqrt()
    return mean, std


def lower_bound(values: torch.Tensor, weights: torch.Tensor, lam: float) -> torch.Tensor:
    """``mean - lambda * std`` under ``weights``."""
    mean, std = weighted_mean_std(values, weights)
    return mean - lam * std


def language_score(query_scores: Sequence[torch.Tensor], confidences: Sequence[float],
                   lam: float = 1.0, uniform: bool = False) -> torch.Tensor:
    """``s^l``: the confidence-weighted lower bound of a language's normalized query scores."""
    if not query_scores:
        raise ValueError("a language needs at least one query")
    values = torch.stack([normalize(s.float()) for s in query_scores])
    weights = torch.ones(len(values)) if uniform else torch.tensor(confidences, dtype=torch.float)
    return lower_bound(values, weights, lam)


def multilingual_score(language_scores: Mapping[str, torch.Tensor],
                       language_confidence: Mapping[str, float], lam: float = 1.0,
                       uniform: bool = False) -> torch.Tensor:
    """The cross-language score ``M - lambda * S`` from per-language ``s^l``."""
    if not language_scores:
        raise ValueError("no languages to combine")
    langs = list(language_scores)
    values = torch.stack([language_scores[lang] for lang in langs])
    if uniform:
        weights = torch.ones(len(langs))
    else:
        weights = torch.tensor([language_confidence[lang] for lang in langs], dtype=torch.float)
    return lower_bound(values, weights, lam)

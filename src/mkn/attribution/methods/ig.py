"""Integrated gradients over FFN neurons, parameterized by its baseline.

    IG_i = (a_i - b_i) * sum_k w_k dp(target)/dx_i at x = b + alpha_k (a - b)

with ``a`` the clean neurons of one layer at the prediction position, ``b`` the baseline and
``(alpha_k, w_k)`` the quadrature rule (:mod:`mkn.attribution.rules`); every layer's path is
integrated with the other layers clean (:func:`mkn.attribution.engine.integrated_gradients`).

- ``ig``: ``b = 0`` (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers").
- ``amig``: AMIG's architecture-adapted baseline (Chen et al., AAAI 2024;
  :func:`mkn.attribution.baselines.architecture_baseline`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mkn.attribution.baselines import architecture_baseline, zero_baseline
from mkn.attribution.engine import integrated_gradients
from mkn.attribution.methods.registry import Method, StepScores, register_method

Baseline = Callable[..., torch.Tensor]


def path_method(baseline: Baseline):
    """The per-step scorer of IG with ``baseline(lm, step, clean) -> [layers, neurons]``."""

    def score_step(lm, step, clean, layers, settings) -> StepScores:
        alphas, weights = settings.quadrature
        result = integrated_gradients(lm, step, clean.activations,
                                      baseline(lm, step, clean.activations), layers, alphas,
                                      weights, settings.batch_size, runner=clean.runner)
        return StepScores(result.scores, result.baseline_prob)

    return score_step


IG = register_method(Method(
    "ig", "integrated gradients from a zero baseline, (a - 0) * mean path gradient "
    "(Dai et al. 2022)", path_method(zero_baseline), path=True))
AMIG = register_method(Method(
    "amig", "integrated gradients from AMIG's architecture-adapted baseline (the query's tokens "
    "masked one at a time; Chen et al. 2024)", path_method(architecture_baseline), path=True))

"""Gradient x activation: the one-step attribution papers compare integrated gradients with.

    score_i = a_i * dp(target)/da_i  at the clean neurons ``a``

(Shrikumar et al. 2016; Simonyan et al. 2014 for the gradient). It is IG from a zero baseline
with the single node alpha = 1: one forward/backward row per layer, computed by the same engine.
"""

from __future__ import annotations

import numpy as np
import torch

from mkn.attribution.engine import integrated_gradients
from mkn.attribution.methods.ig import IG  # noqa: F401  (ig and amig are listed first)
from mkn.attribution.methods.registry import Method, StepScores, register_method


def score_step(lm, step, clean, layers, settings) -> StepScores:
    activations = clean.activations
    result = integrated_gradients(lm, step, activations, torch.zeros_like(activations), layers,
                                  np.ones(1), np.ones(1), settings.batch_size,
                                  runner=clean.runner)
    return StepScores(result.scores)


GRAD_X_ACT = register_method(Method(
    "grad-x-act", "gradient x activation, a * dp/da at the clean neurons (Shrikumar et al. "
    "2016)", score_step))

"""Quadrature rules for the path integral of integrated gradients.

IG (Sundararajan et al. 2017; Dai et al. 2022 for neurons):

    IG_i(x) = (x_i - b_i) * integral_0^1 dF(b + alpha (x - b)) / dx_i  d alpha
            ~ (x_i - b_i) * sum_k w_k dF(b + alpha_k (x - b)) / dx_i

A rule gives the nodes ``alpha_k`` and weights ``w_k`` on [0, 1] (weights sum to 1).
"""

from __future__ import annotations

import numpy as np

RULES: tuple[str, ...] = ("left", "trapezoid", "gauss-legendre")


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of ``rule`` with ``steps`` evaluations on [0, 1].

    - ``left``: alpha_k = k/m, w_k = 1/m, k = 0..m-1 (Dai et al. and AMIG's code).
    - ``trapezoid``: alpha_k = k/(m-1), end points weighted 1/(2(m-1)), others 1/(m-1).
    - ``gauss-legendre``: Legendre nodes mapped from [-1, 1] to [0, 1], weights halved.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rule == "left":
        return np.arange(steps) / steps, np.full(steps, 1.0 / steps)
    if rule == "trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), weights
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")

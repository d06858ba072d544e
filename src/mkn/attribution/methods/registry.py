"""The attribution-method contract: a method is one file that registers one :class:`Method`.

A method gives, for one prediction step of a query (one teacher-forced target token), a score
per FFN neuron of each asked layer: ``score_step(lm, step, clean, layers, settings) ->
StepScores``. :func:`mkn.attribute` runs it over every step of a query and averages, so a method
never deals with prompts, multi-token targets, batching of queries or caches; MATRICE
(:mod:`mkn.localization.matrice`) aggregates any registered method across queries and
languages. Like captum (one ``attribute()`` per method; the baseline an argument), a path method
is IG with a baseline function (:mod:`mkn.attribution.methods.ig`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from mkn.attribution.engine import CleanRun
from mkn.attribution.queries import PredictionStep
from mkn.attribution.rules import quadrature
from mkn.models.loading import LanguageModel


@dataclass(frozen=True)
class Settings:
    """What a call of :func:`mkn.attribute` asks of a method: ``steps`` and ``rule`` (path
    methods: the quadrature of the path integral), ``batch_size`` (rows per forward/backward
    pass; None: from the device's memory)."""

    steps: int = 20
    rule: str = "left"
    batch_size: int | None = None

    @cached_property
    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights of ``rule`` with ``steps`` evaluations on [0, 1]."""
        return quadrature(self.rule, self.steps)


@dataclass(frozen=True)
class StepScores:
    """One prediction step's scores: ``scores`` ``[layers, neurons]`` (zero outside the asked
    layers) and, for a path method, ``baseline_prob`` ``[layers]``: p(target) with the layer's
    neurons at the baseline (what the completeness gap is measured against)."""

    scores: torch.Tensor
    baseline_prob: torch.Tensor | None = None


ScoreStep = Callable[[LanguageModel, PredictionStep, CleanRun, list[int], Settings], StepScores]


@dataclass(frozen=True)
class Method:
    """An attribution method: its ``name`` (``--method``), a one-line ``summary`` with the
    formula and its source, the per-step scorer, and whether it is a path integral (``path``:
    ``steps`` and ``rule`` apply and a completeness gap is reported)."""

    name: str
    summary: str
    score_step: ScoreStep
    path: bool = False


_METHODS: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (every command, experiment and the study take it by
    name); a name already taken is refused unless ``replace``."""
    if not method.name or not method.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a method name is letters, digits, '-' and '_', got {method.name!r}")
    if method.name == "matrice":
        raise ValueError("'matrice' is the aggregator over methods (locate --method matrice)")
    if method.name in _METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered (replace=True to "
                         "override)")
    _METHODS[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """The registered methods, in registration order."""
    return tuple(_METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; a one-line error listing them otherwise."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose one of "
                         f"{', '.join(method_names())}") from None

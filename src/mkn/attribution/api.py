"""``attribute()``: one call shape for every attribution method."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mkn.attribution.baselines import BASELINES
from mkn.attribution.engine import clean_run, integrated_gradients
from mkn.attribution.queries import encode
from mkn.attribution.rules import quadrature
from mkn.attribution.scoring import Prediction, score_encoded
from mkn.models.loading import LanguageModel, require_lm


@dataclass
class Attribution:
    """Neuron attributions of p(target | prompt).

    ``scores[l, i]`` is the IG attribution of neuron ``i`` of layer ``l``; for multi-token targets
    the mean over the teacher-forced tokens. ``completeness_gap[l] = sum_i scores[l, i] -
    (p(x) - p(baseline_l))`` (means over tokens), which IG drives to 0 as ``steps`` grows.
    """

    prompt: str
    target: str
    method: str
    steps: int
    rule: str
    scores: torch.Tensor
    prob: float
    token_probs: list[float]
    target_ids: list[int]
    target_tokens: list[str]
    layers: list[int]
    baseline_prob: torch.Tensor
    completeness_gap: torch.Tensor
    predicted_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0  # wall time this attribution took to compute

    @property
    def correct(self) -> bool:
        """Whether the greedy prediction is the target at every teacher-forced token."""
        return self.predicted_ids == self.target_ids

    @property
    def confidence(self) -> float:
        """Per-token geometric-mean probability of the target."""
        return self.prob ** (1 / len(self.token_probs))

    @property
    def relative_completeness_gap(self) -> float:
        """max over layers of |gap_l| / |p(x) - p(b_l)|."""
        delta = torch.tensor(self.token_probs).mean() - self.baseline_prob[self.layers]
        gap = self.completeness_gap[self.layers].abs() / delta.abs().clamp_min(1e-12)
        return float(gap.max())

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring neurons as ``(layer, index, score)``."""
        flat = self.scores.flatten()
        values, indices = flat.topk(min(k, flat.numel()))
        n = self.scores.shape[1]
        return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(values, indices, strict=True)]

    def to_dict(self, top: int = 20) -> dict:
        return {
            "prompt": self.prompt, "target": self.target, "method": self.method,
            "steps": self.steps, "rule": self.rule, "prob": self.prob,
            "token_probs": self.token_probs, "target_tokens": self.target_tokens,
            "correct": self.correct,
            "completeness_gap": [float(self.completeness_gap[layer]) for layer in self.layers],
            "relative_completeness_gap": self.relative_completeness_gap,
            "top_neurons": [list(t) for t in self.top(top)],
        }


METHODS = tuple(BASELINES)


def predict(lm: LanguageModel, prompt: str, target: str) -> Prediction:
    """Evaluate ``target`` after ``prompt``; active interventions (``mkn.interventions``) apply.

    One unbatched pass per teacher-forced token: the reference :func:`predict_many` is tested
    against.
    """
    query = encode(lm, prompt, target)
    runs = [clean_run(lm, step) for step in query.steps]
    return Prediction(prob=math.prod(r.prob for r in runs),
                      correct=[r.predicted_id for r in runs] == list(query.target_ids),
                      first_predicted_id=runs[0].predicted_id,
                      token_probs=tuple(r.prob for r in runs))


def predict_many(lm: LanguageModel, queries: Sequence[tuple[str, str]],
                 batch_size: int = 16) -> list[Prediction]:
    """:func:`predict` for many ``(prompt, target)`` queries, batched
    (:func:`mkn.attribution.scoring.score_encoded`: queries with the same prompt share its
    forward pass). Active interventions apply. Same results as :func:`predict` up to
    floating-point noise from the batch shapes.
    """
    return score_encoded(lm, [encode(lm, prompt, target) for prompt, target in queries],
                         batch_size)


def probability(lm: LanguageModel, prompt: str, target: str) -> float:
    """p(target | prompt): the product over the target's teacher-forced tokens."""
    return predict(lm, prompt, target).prob


def attribute(lm: LanguageModel, prompt: str, target: str, method: str = "ig", steps: int = 20,
              rule: str = "left", layers: list[int] | None = None,
              batch_size: int | None = None) -> Attribution:
    """Attribute p(target | prompt) to the FFN neurons of ``lm``.

    Args:
        prompt: text with ``[Y]`` where the object goes, or with the object implied at the end.
        target: the object label, e.g. ``Paris``.
        method: ``ig`` (zero baseline, Dai et al. 2022) or ``amig`` (architecture-adapted
            baseline, Chen et al. 2024).
        steps: quadrature evaluations per layer.
        rule: ``left`` (Dai/AMIG), ``trapezoid`` or ``gauss-legendre``.
        layers: layers to attribute (default all).
        batch_size: (layer, step) rows per forward/backward pass (default from the vocab size).
    """
    require_lm(lm)
    if method not in BASELINES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    alphas, weights = quadrature(rule, steps)
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    for layer in layers:
        if not 0 <= layer < lm.n_layers:
            raise ValueError(f"layer {layer} out of range: {lm.name} has {lm.n_layers} layers")
    start = time.perf_counter()
    query = encode(lm, prompt, target)
    scores = torch.zeros(lm.n_layers, lm.n_neurons)
    baseline_prob = torch.zeros(lm.n_layers)
    token_probs, predicted = [], []
    for step in query.steps:
        clean = clean_run(lm, step)
        baseline = BASELINES[method](lm, step, clean.activations)
        result = integrated_gradients(lm, step, clean.activations, baseline, layers, alphas,
                                      weights, batch_size, runner=clean.runner)
        scores += result.scores
        baseline_prob += result.baseline_prob
        token_probs.append(clean.prob)
        predicted.append(clean.predicted_id)
    n = len(query.steps)
    scores /= n
    baseline_prob /= n
    mean_prob = sum(token_probs) / n
    gap = torch.full((lm.n_layers,), float("nan"))
    gap[layers] = scores[layers].sum(-1) - (mean_prob - baseline_prob[layers])
    return Attribution(
        prompt=prompt, target=target, method=method, steps=steps, rule=rule, scores=scores,
        prob=math.prod(token_probs), token_probs=token_probs, target_ids=list(query.target_ids),
        target_tokens=list(query.target_tokens), layers=layers, baseline_prob=baseline_prob,
        completeness_gap=gap, predicted_ids=predicted, seconds=time.perf_counter() - start,
    )

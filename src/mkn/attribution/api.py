"""``attribute()``: one call shape for every attribution method."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

import torch

from mkn.attribution.engine import clean_run
from mkn.attribution.methods import Method, Settings, get_method, method_names
from mkn.attribution.queries import encode
from mkn.attribution.scoring import Prediction, score_encoded
from mkn.models.families import hook_name
from mkn.models.loading import LanguageModel, as_lm

if TYPE_CHECKING:
    import pandas

Progress = Callable[[str], None]
"""A progress callback: called with one line (what was done, counts) as work finishes."""


def progress_printer(progress: Progress | bool | None) -> Progress | None:
    """``progress=`` of the Python API: a callable is used as it is, ``True`` prints each line
    on stderr, ``None``/``False`` is silent."""
    if progress is None or progress is False:
        return None
    if progress is True:
        import sys

        return lambda line: print(line, file=sys.stderr, flush=True)
    if callable(progress):
        return progress
    raise TypeError(f"progress must be a callable, True or None, got {type(progress).__name__}")


def neuron_frame(scores: torch.Tensor, **columns) -> pandas.DataFrame:
    """One row per neuron of ``scores`` ``[layers, neurons]``: ``layer``, ``index``, ``hook``
    (``blocks.{l}.mlp.hook_post``), ``score`` and ``rank`` (1 = highest score), plus constant
    ``columns`` in front. Needs pandas (the ``frames`` extra)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is an optional extra
        raise ImportError("to_frame needs pandas: pip install pandas (or the 'frames' "
                          "extra)") from None
    layers, neurons = scores.shape
    flat = scores.detach().float().flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, flat.numel() + 1)
    layer = torch.arange(layers).repeat_interleave(neurons)
    hooks = [hook_name(layer) for layer in range(layers)]
    frame = pd.DataFrame({"layer": layer.numpy(), "index": torch.arange(neurons).repeat(
        layers).numpy(), "hook": pd.Categorical.from_codes(layer.numpy(), hooks),
        "score": flat.numpy(), "rank": rank.numpy()})
    for offset, (name, value) in enumerate(columns.items()):
        frame.insert(offset, name, value)
    return frame


def top_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask ``[layers, neurons]`` of the ``k`` highest scores (ties: the first in flat
    order), the neuron-set form every intervention accepts."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    order = torch.argsort(scores.detach().float().flatten(), descending=True, stable=True)
    mask[order[:k]] = True
    return mask.view(scores.shape)


@dataclass
class Attribution:
    """Neuron attributions of p(target | prompt) by one registered method.

    ``scores[l, i]`` is the attribution of neuron ``i`` of layer ``l``; for multi-token targets
    the mean over the teacher-forced tokens. For path methods (IG) ``completeness_gap[l] =
    sum_i scores[l, i] - (p(x) - p(baseline_l))`` (means over tokens), which IG drives to 0 as
    ``steps`` grows; other methods have no baseline: ``baseline_prob`` and ``completeness_gap``
    are NaN there.
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

    def _gaps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per attributed layer: |gap_l| and |p(x) - p(b_l)|."""
        delta = torch.tensor(self.token_probs).mean() - self.baseline_prob[self.layers]
        return self.completeness_gap[self.layers].abs(), delta.abs()

    @property
    def relative_completeness_gap(self) -> float:
        """max over layers of |gap_l| / |p(x) - p(b_l)| (Sundararajan et al. 2017's
        completeness, per layer). Ruled by layers whose baseline hardly moves p, where a tiny
        gap is a large share: read :attr:`weighted_completeness_gap` first."""
        gap, delta = self._gaps()
        return float((gap / delta.clamp_min(1e-12)).max())

    @property
    def weighted_completeness_gap(self) -> float:
        """sum_l |gap_l| / sum_l |p(x) - p(b_l)| over the attributed layers: the completeness
        gap weighted by how much each layer's baseline moves p."""
        gap, delta = self._gaps()
        return float(gap.sum() / delta.sum().clamp_min(1e-12))

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring neurons as ``(layer, index, score)``."""
        flat = self.scores.flatten()
        values, indices = flat.topk(min(k, flat.numel()))
        n = self.scores.shape[1]
        return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(values, indices, strict=True)]

    def to_mask(self, k: int) -> torch.Tensor:
        """The top-``k`` neurons as a bool mask ``[layers, neurons]`` (for ``suppress`` etc.)."""
        return top_mask(self.scores, k)

    def to_frame(self) -> pandas.DataFrame:
        """Every neuron's score, one row each: layer, index, hook, score, rank (1 = top)."""
        return neuron_frame(self.scores)

    def to_dict(self, top: int = 20) -> dict:
        """JSON-ready summary: the query, p(target), completeness and the ``top`` neurons
        (``scores`` itself is in :meth:`to_frame`)."""
        return {
            "prompt": self.prompt, "target": self.target, "method": self.method,
            "steps": self.steps, "rule": self.rule, "prob": self.prob,
            "token_probs": self.token_probs, "target_tokens": self.target_tokens,
            "correct": self.correct,
            "completeness_gap": [_finite(self.completeness_gap[layer]) for layer in self.layers],
            "relative_completeness_gap": _finite(self.relative_completeness_gap),
            "weighted_completeness_gap": _finite(self.weighted_completeness_gap),
            "top_neurons": [list(t) for t in self.top(top)],
        }


def _finite(value) -> float | None:
    """A float for JSON, None for NaN (methods without a baseline have no completeness gap)."""
    value = float(value)
    return None if math.isnan(value) else value


class Attributions(list):
    """The attributions of a batch of queries, in the order given (a list of
    :class:`Attribution`), with the scores stacked."""

    @property
    def scores(self) -> torch.Tensor:
        """``[queries, layers, neurons]``."""
        return torch.stack([a.scores for a in self])

    def to_mask(self, k: int) -> torch.Tensor:
        """Each query's top-``k`` neurons: ``[queries, layers, neurons]`` bool."""
        return torch.stack([a.to_mask(k) for a in self])

    def to_frame(self) -> pandas.DataFrame:
        """:meth:`Attribution.to_frame` of every query, with ``item``, ``prompt`` and
        ``target`` in front (long format)."""
        import pandas as pd

        return pd.concat([neuron_frame(a.scores, item=i, prompt=a.prompt, target=a.target)
                          for i, a in enumerate(self)], ignore_index=True)


METHODS = method_names()  # at import; the registry (mkn.attribution.methods) is the live list


def predict(lm: LanguageModel, prompt: str, target: str) -> Prediction:
    """Evaluate ``target`` after ``prompt``; active interventions (``mkn.interventions``) apply.

    One unbatched pass per teacher-forced token: the reference :func:`predict_many` is tested
    against.
    """
    lm = as_lm(lm)
    query = encode(lm, prompt, target)
    with lm.in_use():
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
    lm = as_lm(lm)
    return score_encoded(lm, [encode(lm, prompt, target) for prompt, target in queries],
                         batch_size)


def probability(lm: LanguageModel, prompt: str, target: str) -> float:
    """p(target | prompt): the product over the target's teacher-forced tokens."""
    return predict(lm, prompt, target).prob


@overload
def attribute(lm: LanguageModel, prompt: str, target: str, method: str = ..., steps: int = ...,
              rule: str = ..., layers: list[int] | None = ..., batch_size: int | None = ..., *,
              tokenizer: object = ..., progress: Progress | bool | None = ...) -> Attribution: ...


@overload
def attribute(lm: LanguageModel, prompt: Sequence[str], target: Sequence[str],
              method: str = ..., steps: int = ..., rule: str = ...,
              layers: list[int] | None = ..., batch_size: int | None = ..., *,
              tokenizer: object = ..., progress: Progress | bool | None = ...) -> Attributions: ...


def attribute(lm, prompt, target, method="amig", steps=20, rule="left", layers=None,
              batch_size=None, *, tokenizer=None, progress=None):
    """Attribute p(target | prompt) to the FFN neurons of ``lm``.

    Args:
        lm: a model from :func:`mkn.load_model`, or a transformers model with ``tokenizer``.
        prompt: text with ``[Y]`` where the object goes, or with the object implied at the end;
            or a list of them (with a list of targets, one each): an :class:`Attributions`.
        target: the object label, e.g. ``Paris`` (or a list).
        method: a registered method (:mod:`mkn.attribution.methods`): ``amig``
            (architecture-adapted baseline, Chen et al. 2024; the default), ``ig`` (zero
            baseline, Dai et al. 2022), ``grad-x-act``, ...
        steps: quadrature evaluations per layer (path methods).
        rule: ``left`` (Dai/AMIG), ``trapezoid`` or ``gauss-legendre``.
        layers: layers to attribute (default all).
        batch_size: (layer, step) rows per forward/backward pass (default from the vocab size).
        tokenizer: the tokenizer of a transformers model passed as ``lm``.
        progress: a callable given one line per finished query, or True to print them.
    """
    lm = as_lm(lm, tokenizer)
    chosen = get_method(method)
    settings = Settings(steps, rule, batch_size)
    if chosen.path:
        settings.quadrature  # noqa: B018  (checks steps and rule now, with one line)
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    for layer in layers:
        if not 0 <= layer < lm.n_layers:
            raise ValueError(f"layer {layer} out of range: {lm.name} has {lm.n_layers} layers")
    say = progress_printer(progress)
    if isinstance(prompt, str) and isinstance(target, str):
        with lm.in_use():
            result = _attribute_one(lm, prompt, target, chosen, settings, layers)
        if say:
            say(f"attribute: {prompt!r} -> {target!r} done in {result.seconds:.1f} s")
        return result
    if isinstance(prompt, str) or isinstance(target, str):
        raise TypeError("prompt and target must both be strings or both be lists")
    prompts, targets = list(prompt), list(target)
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        if not isinstance(p, str) or not isinstance(t, str):
            raise TypeError(f"item {i}: prompt and target must be strings, got "
                            f"{type(p).__name__} and {type(t).__name__}")
    results = Attributions()
    start = time.perf_counter()
    with lm.in_use():
        for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
            results.append(_attribute_one(lm, p, t, chosen, settings, layers))
            if say:
                say(f"attribute: {i + 1}/{len(prompts)} done ({p!r} -> {t!r}), elapsed "
                    f"{time.perf_counter() - start:.0f} s")
    return results


def _attribute_one(lm: LanguageModel, prompt: str, target: str, method: Method,
                   settings: Settings, layers: list[int]) -> Attribution:
    start = time.perf_counter()
    query = encode(lm, prompt, target)
    scores = torch.zeros(lm.n_layers, lm.n_neurons)
    baseline_prob = torch.zeros(lm.n_layers)
    token_probs, predicted = [], []
    for step in query.steps:
        clean = clean_run(lm, step)
        result = method.score_step(lm, step, clean, layers, settings)
        scores += result.scores.float().cpu()
        if result.baseline_prob is not None:
            baseline_prob += result.baseline_prob.float().cpu()
        token_probs.append(clean.prob)
        predicted.append(clean.predicted_id)
    n = len(query.steps)
    scores /= n
    baseline_prob /= n
    mean_prob = sum(token_probs) / n
    gap = torch.full((lm.n_layers,), float("nan"))
    if method.path:
        gap[layers] = scores[layers].sum(-1) - (mean_prob - baseline_prob[layers])
    else:
        baseline_prob = torch.full((lm.n_layers,), float("nan"))
    return Attribution(
        prompt=prompt, target=target, method=method.name, steps=settings.steps,
        rule=settings.rule, scores=scores, prob=math.prod(token_probs), token_probs=token_probs,
        target_ids=list(query.target_ids), target_tokens=list(query.target_tokens),
        layers=layers, baseline_prob=baseline_prob, completeness_gap=gap,
        predicted_ids=predicted, seconds=time.perf_counter() - start,
    )

"""A plain reference implementation of integrated gradients over FFN neurons.

Written independently of :mod:`mkn.attribution.engine` to check it: one layer at a time, no KV
cache, no batching across layers, the full model run on the full sequence and its logits taken
at every position (the way EleutherAI's ``knowledge-neurons`` and AMIG's code compute it). Only
the query encoding (:func:`mkn.attribution.queries.encode`), the quadrature nodes
(:func:`mkn.attribution.rules.quadrature`) and the location of the output projections
(``lm.down_proj``) are shared with mkn.

For one prediction step (read ``input_ids``, predict ``target_id`` at ``position``) and one layer
with clean neurons ``a`` and baseline ``b`` at ``position``::

    score_i = (a_i - b_i) * sum_k w_k d p(target) / d x_i  at  x = b + alpha_k (a - b)

Multi-token targets average the scores over their teacher-forced steps.

Baselines: ``ig`` is zero; ``amig`` is the mean of the neurons at ``position`` over the copies
of the input where one query token at a time is replaced by EOS (causal) or ``[MASK]`` (masked).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from mkn.attribution.queries import PredictionStep, encode
from mkn.attribution.rules import quadrature
from mkn.models.loading import LanguageModel


@contextmanager
def _pre_hook(lm: LanguageModel, layer: int, fn) -> Iterator[None]:
    """``fn(x)`` sees (and may replace) the input of ``layer``'s output projection."""

    def hook(module, args):
        out = fn(args[0])
        return None if out is None else (out, *args[1:])

    handle = lm.down_proj(layer).register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _logits(lm: LanguageModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the full model at every position, ``[batch, seq, vocab]``, float32."""
    return lm.model(input_ids=input_ids.to(lm.device)).logits.float()


def neurons_at(lm: LanguageModel, input_ids: torch.Tensor, position: int) -> torch.Tensor:
    """Neurons of every layer at ``position`` for each row of ``input_ids``: ``[batch, L, N]``."""
    found = {}

    def recorder(layer: int):
        def record(x):
            found[layer] = x[:, position].detach().float().cpu()

        return record

    with ExitStack() as stack, torch.no_grad():
        for layer in range(lm.n_layers):
            stack.enter_context(_pre_hook(lm, layer, recorder(layer)))
        _logits(lm, input_ids)
    return torch.stack([found[layer] for layer in range(lm.n_layers)], dim=1)


def baseline(lm: LanguageModel, step: PredictionStep, method: str) -> torch.Tensor:
    """The baseline neurons ``[layers, neurons]`` of ``method`` for one step."""
    ids = torch.tensor(step.input_ids)
    if method == "ig":
        return torch.zeros(lm.n_layers, lm.n_neurons)
    if method != "amig":
        raise ValueError(f"unknown method {method!r}")
    replacement = lm.tokenizer.eos_token_id if lm.causal else lm.tokenizer.mask_token_id
    if not step.query_positions:
        return torch.zeros(lm.n_layers, lm.n_neurons)
    rows = []
    for q in step.query_positions:
        replaced = ids.clone()
        replaced[q] = replacement
        rows.append(neurons_at(lm, replaced[None], step.position)[0])
    return torch.stack(rows).mean(0)


def step_prob(lm: LanguageModel, step: PredictionStep, layer: int | None = None,
              neurons: torch.Tensor | None = None) -> float:
    """p(target) of one step, optionally with ``layer``'s neurons at the position replaced."""
    def put(x):
        x = x.clone()
        x[:, step.position] = neurons.to(device=x.device, dtype=x.dtype)
        return x

    ids = torch.tensor(step.input_ids)[None]
    with torch.no_grad():
        if layer is None:
            logits = _logits(lm, ids)
        else:
            with _pre_hook(lm, layer, put):
                logits = _logits(lm, ids)
    return float(torch.softmax(logits[0, step.position], dim=-1)[step.target_id])


def step_attribution(lm: LanguageModel, step: PredictionStep, method: str, steps: int,
                     rule: str) -> torch.Tensor:
    """IG scores ``[layers, neurons]`` of one prediction step, one layer at a time."""
    alphas, weights = quadrature(rule, steps)
    alphas = torch.tensor(alphas, dtype=torch.float32)
    weights = torch.tensor(weights, dtype=torch.float32)
    ids = torch.tensor(step.input_ids)[None].repeat(steps, 1)
    clean = neurons_at(lm, ids[:1], step.position)[0]
    base = baseline(lm, step, method)
    scores = torch.zeros(lm.n_layers, lm.n_neurons)
    for layer in range(lm.n_layers):
        a, b = clean[layer], base[layer]
        path = (b[None] + alphas[:, None] * (a - b)[None]).requires_grad_(True)

        def put(x, path=path):
            x = x.clone()
            x[:, step.position] = path.to(device=x.device, dtype=x.dtype)
            return x

        with torch.enable_grad(), _pre_hook(lm, layer, put):
            logits = _logits(lm, ids)
            p = torch.softmax(logits[:, step.position], dim=-1)[:, step.target_id]
            (grad,) = torch.autograd.grad(p.sum(), path)
        scores[layer] = (a - b) * (weights[:, None] * grad.float()).sum(0)
    return scores


def reference_attribute(lm: LanguageModel, prompt: str, target: str, method: str = "ig",
                        steps: int = 20, rule: str = "left") -> torch.Tensor:
    """IG scores ``[layers, neurons]`` of p(target | prompt), averaged over target tokens."""
    query = encode(lm, prompt, target)
    total = torch.zeros(lm.n_layers, lm.n_neurons)
    for step in query.steps:
        total += step_attribution(lm, step, method, steps, rule)
    return total / len(query.steps)


def reference_token_probs(lm: LanguageModel, prompt: str, target: str) -> list[float]:
    """p of each target token given the prompt and the gold earlier target tokens.

    A causal LM reads prompt + target once and the probabilities are read off at the positions
    before each target token; a masked LM reads each teacher-forced step's input.
    """
    query = encode(lm, prompt, target)
    if lm.causal:
        first = query.steps[0]
        ids = torch.tensor(list(first.input_ids) + list(query.target_ids))[None]
        with torch.no_grad():
            probs = torch.softmax(_logits(lm, ids)[0], dim=-1)
        return [float(probs[first.position + i, t]) for i, t in enumerate(query.target_ids)]
    return [step_prob(lm, step) for step in query.steps]


def reference_prob(lm: LanguageModel, prompt: str, target: str) -> float:
    """p(target | prompt): the teacher-forced product over the target's tokens."""
    return math.prod(reference_token_probs(lm, prompt, target))

"""The fast integrated-gradients engine over FFN neurons.

Only the prediction position is scaled, so for a causal LM every other position is the same for
every step and layer: the prefix is run once (its KV cache is reused), and each (layer, step) pair
is one *row* that runs the prediction token alone. Rows of all layers are batched together and a
row's neurons at its layer are replaced by the scaled activation (a leaf tensor): one
forward/backward pass yields the gradients of a whole batch of (layer, step) pairs. Logits are
computed at the prediction position only, and weights never get gradients.

Masked LMs are bidirectional (every position changes above the scaled layer), so a row is the
whole sequence; the LM head still runs at the mask position only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mkn.attribution.queries import PredictionStep
from mkn.models.hooks import NeuronHook, capture, neuron_hooks
from mkn.models.loading import LanguageModel

# Rows per forward/backward pass are chosen so the logits of one pass stay near this many floats.
LOGITS_BUDGET = 2**25


def default_batch_size(lm: LanguageModel) -> int:
    vocab = lm.model.config.get_text_config().vocab_size
    return max(8, LOGITS_BUDGET // vocab)


def target_prob(logits: torch.Tensor, target_id: int) -> torch.Tensor:
    """p(target) = softmax(logits)[target], computed in float32 for a ``[rows, vocab]`` batch."""
    return torch.log_softmax(logits.float(), dim=-1)[:, target_id].exp()


class StepRunner:
    """Runs the prediction of one :class:`PredictionStep` for a batch of rows.

    ``position`` is where the prediction position sits in the tensors the neuron hooks see.
    """

    def __init__(self, lm: LanguageModel, step: PredictionStep):
        self.lm = lm
        self.step = step
        ids = torch.tensor(step.input_ids, device=lm.device)
        self.cache = None
        if lm.causal:
            if step.position != len(step.input_ids) - 1:
                raise ValueError("a causal LM predicts after the last input token")
            self.tokens = ids[-1:]
            if len(ids) > 1:
                with torch.no_grad():
                    self.cache = lm.model(ids[None, :-1], use_cache=True).past_key_values
            self.position = -1
        else:
            self.tokens = ids
            self.position = step.position
            with torch.no_grad():  # hidden state entering each block, for rows starting there
                out = lm.model.base_model(input_ids=ids[None], output_hidden_states=True)
            self.hidden_in = [h[0] for h in out.hidden_states[: lm.n_layers]]

    def logits(self, rows: int, hooks: Mapping[int, NeuronHook] | None = None,
               row_layers: list[int] | None = None) -> torch.Tensor:
        """Logits at the prediction position for ``rows`` copies of the step, with ``hooks`` on
        the neurons; ``[rows, vocab]``.

        ``row_layers`` (ascending) is the lowest layer each row changes; a masked LM starts such
        a row from the clean hidden state entering that layer instead of recomputing below it.
        """
        with neuron_hooks(self.lm, hooks or {}):
            if self.lm.causal:
                return self._causal_logits(rows)
            return self._masked_logits(row_layers or [0] * rows)

    def probs(self, rows: int, hooks: Mapping[int, NeuronHook] | None = None,
              row_layers: list[int] | None = None) -> torch.Tensor:
        """p(target) for each row (see :meth:`logits`); ``[rows]``."""
        return target_prob(self.logits(rows, hooks, row_layers), self.step.target_id)

    def _causal_logits(self, rows: int) -> torch.Tensor:
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(rows)
        out = self.lm.model(input_ids=self.tokens[None].expand(rows, -1), past_key_values=cache,
                            use_cache=cache is not None, logits_to_keep=1)
        return out.logits[:, -1]

    def _masked_logits(self, row_layers: list[int]) -> torch.Tensor:
        if any(a > b for a, b in zip(row_layers, row_layers[1:], strict=False)):
            raise ValueError("row_layers must be ascending")
        starts = torch.bincount(torch.tensor(row_layers), minlength=self.lm.n_layers).tolist()
        hidden = self.hidden_in[0][None].expand(starts[0], -1, -1)
        for layer, block in enumerate(self.lm.blocks):
            if layer and starts[layer]:
                fresh = self.hidden_in[layer][None].expand(starts[layer], -1, -1)
                hidden = torch.cat([hidden, fresh])
            if len(hidden):
                out = block(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
        return self.lm.mlm_head(hidden[:, self.position])


@dataclass
class CleanRun:
    """The unmodified prediction of one step."""

    activations: torch.Tensor  # [layers, neurons] at the prediction position
    prob: float  # p(target)
    predicted_id: int  # the greedy (argmax) token


def clean_run(lm: LanguageModel, step: PredictionStep) -> CleanRun:
    """Clean neurons at the prediction position, p(target) and the greedy prediction."""
    runner = StepRunner(lm, step)
    with torch.no_grad(), capture(lm, position=runner.position) as store:
        logits = runner.logits(1)
    acts = torch.stack([store[layer][0] for layer in range(lm.n_layers)])
    return CleanRun(acts, float(target_prob(logits, step.target_id)), int(logits[0].argmax()))


def replace_position(layer_rows: torch.Tensor, position: int, values: torch.Tensor) -> NeuronHook:
    """A hook putting ``values[i]`` at (``layer_rows[i]``, ``position``), out of place."""

    def patch(x: torch.Tensor) -> torch.Tensor:
        positions = torch.full_like(layer_rows, position % x.shape[1])
        return x.index_put((layer_rows, positions), values.to(x.dtype))

    return patch


@dataclass
class PathIntegral:
    """Per-layer result of IG for one prediction step."""

    scores: torch.Tensor  # [layers, neurons]: (a - b) * sum_k w_k dF/dx at b + alpha_k (a - b)
    baseline_prob: torch.Tensor  # [layers]: F with the layer's neurons set to the baseline


def integrated_gradients(lm: LanguageModel, step: PredictionStep, clean: torch.Tensor,
                         baseline: torch.Tensor, layers: list[int], alphas: np.ndarray,
                         weights: np.ndarray, batch_size: int | None = None) -> PathIntegral:
    """IG of p(target) w.r.t. the neurons of each of ``layers``, all layers batched together.

    ``clean`` and ``baseline`` are ``[n_layers, neurons]``. Scores of layers not in ``layers``
    are zero. Rows are (layer, step) pairs; ``batch_size`` rows run per forward/backward pass.
    """
    batch_size = batch_size or default_batch_size(lm)
    runner = StepRunner(lm, step)
    n_layers, n_neurons = clean.shape
    clean32, baseline32 = clean.float(), baseline.float()
    integral = torch.zeros(n_layers, n_neurons)
    alpha_t = torch.tensor(alphas, dtype=torch.float32)
    weight_t = torch.tensor(weights, dtype=torch.float32)
    rows = [(layer, k) for layer in layers for k in range(len(alphas))]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        leaves: dict[int, torch.Tensor] = {}
        hooks: dict[int, NeuronHook] = {}
        layer_steps: dict[int, torch.Tensor] = {}
        for layer in dict.fromkeys(layer for layer, _ in chunk):
            members = [i for i, (l_, _) in enumerate(chunk) if l_ == layer]
            ks = torch.tensor([chunk[i][1] for i in members])
            path = baseline32[layer] + alpha_t[ks, None] * (clean32[layer] - baseline32[layer])
            leaf = path.to(lm.dtype).requires_grad_(True)
            leaves[layer], layer_steps[layer] = leaf, ks
            hooks[layer] = replace_position(torch.tensor(members, device=lm.device),
                                            runner.position, leaf)
        with torch.enable_grad():
            probs = runner.probs(len(chunk), hooks, [layer for layer, _ in chunk])
            grads = torch.autograd.grad(probs.sum(), list(leaves.values()))
        for (layer, ks), grad in zip(layer_steps.items(), grads, strict=True):
            integral[layer] += (weight_t[ks, None] * grad.float()).sum(0)
    scores = (clean32 - baseline32) * integral
    baseline_prob = torch.zeros(n_layers)
    with torch.no_grad():
        rows_t = torch.arange(len(layers), device=lm.device)
        hooks = {layer: replace_position(rows_t[i:i + 1], runner.position, baseline[layer][None])
                 for i, layer in enumerate(layers)}
        baseline_prob[layers] = runner.probs(len(layers), hooks, layers).float()
    return PathIntegral(scores=scores, baseline_prob=baseline_prob)


def activations(lm: LanguageModel, step: PredictionStep) -> tuple[torch.Tensor, float]:
    """Clean neurons at the prediction position ``[layers, neurons]`` and p(target)."""
    run = clean_run(lm, step)
    return run.activations, run.prob

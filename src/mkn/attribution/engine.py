"""The fast integrated-gradients engine over FFN neurons.

Only the prediction position is scaled, so for a causal LM every other position is the same for
every step and layer: the prefix is run once (its KV cache is reused), and each (layer, step) pair
is one *row* that runs the prediction token alone. Rows of all layers are batched together and a
row's neurons at its layer are replaced by the scaled activation (a leaf tensor): one
forward/backward pass yields the gradients of a whole batch of (layer, step) pairs. A row
starts at its own layer from the clean hidden state entering it (``staggered_blocks``), so
nothing below that layer is computed for it, forward or backward. Logits are computed at the
prediction position only, the p(target) gradient is formed in place, and weights never get
gradients.

Masked LMs are bidirectional (every position changes above the scaled layer), so a row is the
whole sequence from its layer upward; the LM head still runs at the mask position only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from mkn.attribution.queries import PredictionStep
from mkn.models.devices import halving_on_oom, rows_per_pass
from mkn.models.hooks import NeuronHook, capture, neuron_hooks
from mkn.models.kv_cache import cache_kwarg, output_cache
from mkn.models.loading import LanguageModel, uses_model


def default_batch_size(lm: LanguageModel, sequence: int = 16) -> int:
    """Rows per forward/backward pass that fit the free memory of the model's device
    (:func:`mkn.models.devices.rows_per_pass`) for prompts of about ``sequence`` tokens."""
    text = lm.model.config.get_text_config()
    element = torch.finfo(lm.dtype).bits // 8
    return rows_per_pass(lm.device, text.vocab_size, text.hidden_size, lm.n_neurons,
                         lm.n_layers, sequence, element)


class _TargetProb(torch.autograd.Function):
    """p_t = softmax(z)_t; the gradient p_t (onehot_t - softmax(z)) is computed in place on the
    saved log-softmax, so a batch keeps one vocabulary-sized buffer instead of three (this is
    what keeps gemma-3-270m under 3 GB with all 360 rows in one pass)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target_id: int) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        prob = log_probs[:, target_id].exp()
        ctx.save_for_backward(log_probs, prob)
        ctx.target_id, ctx.dtype = target_id, logits.dtype
        return prob

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        log_probs, prob = ctx.saved_tensors
        scale = (grad * prob)[:, None]
        grad_z = log_probs.exp_().mul_(-scale)  # the saved buffer is not needed again
        grad_z[:, ctx.target_id] += scale[:, 0]
        return grad_z.to(ctx.dtype), None


def target_prob(logits: torch.Tensor, target_id: int) -> torch.Tensor:
    """p(target) = softmax(logits)[target] in float32 for a ``[rows, vocab]`` batch."""
    return _TargetProb.apply(logits, target_id)


def _slice_batch(value, batch: int, keep: int):
    """``value`` with tensors whose first axis is a multiple of ``batch`` (batch-major, e.g.
    masks, rotary tables, BLOOM's alibi ``[batch * heads, ...]``) cut to the first ``keep`` rows;
    tuples, lists and dicts recursively; anything else as is."""
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] % batch == 0:
        return value[: value.shape[0] // batch * keep]
    if isinstance(value, tuple | list):
        return type(value)(_slice_batch(v, batch, keep) for v in value)
    if isinstance(value, dict):
        return {k: _slice_batch(v, batch, keep) for k, v in value.items()}
    return value


@contextmanager
def staggered_blocks(lm: LanguageModel, active: list[int], starts: list[int],
                     hidden_in: list[torch.Tensor], returns_tuple: bool) -> Iterator[None]:
    """Make block ``l`` run only the first ``active[l]`` rows of the batch.

    Rows are sorted by the layer they start at; the ``starts[l]`` rows starting at block ``l``
    enter it with the clean hidden state ``hidden_in[l]`` (one state for all of them, or one per
    row: ``[starts[l], ...]``), so nothing below is computed for them, forward or backward; rows
    not yet active pass through untouched. The model's own forward
    still builds masks, positions, the final norm and the LM head. The prefix KV cache must hold
    ``active[l]`` rows in layer ``l``.
    """
    patched = []

    def make(layer: int, forward):
        def run(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            args = args[1:]
            batch, n, new = hidden.shape[0], active[layer], starts[layer]
            if n == 0:
                return (hidden,) if returns_tuple else hidden
            fresh = hidden_in[layer].to(hidden.dtype).expand(new, *hidden.shape[1:])
            inputs = torch.cat([hidden[: n - new], fresh]) if n > new else fresh
            if n < batch:
                args, kwargs = _slice_batch(args, batch, n), _slice_batch(kwargs, batch, n)
            out = forward(inputs, *args, **kwargs)
            out_hidden = out[0] if isinstance(out, tuple) else out
            if n < batch:
                out_hidden = torch.cat([out_hidden, hidden[n:]])
            return (out_hidden, *out[1:]) if isinstance(out, tuple) else out_hidden

        return run

    try:
        for layer, block in enumerate(lm.blocks):
            block.forward = make(layer, block.forward)
            patched.append(block)
        yield
    finally:
        for block in patched:
            del block.forward


def block_inputs(lm: LanguageModel, **inputs) -> tuple[list[torch.Tensor], bool]:
    """One clean pass of ``lm``'s body (no LM head) on ``inputs``: the hidden state entering
    each block, ``[rows, positions, hidden]`` per layer, and whether the blocks return tuples
    (what :func:`staggered_blocks` needs to start rows above layer 0)."""
    recorded: dict[int, torch.Tensor] = {}
    returns_tuple = []

    def record(layer: int):
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            recorded[layer] = hidden.detach()

        return pre_hook

    handles = [block.register_forward_pre_hook(record(layer), with_kwargs=True)
               for layer, block in enumerate(lm.blocks)]
    handles.append(lm.blocks[0].register_forward_hook(
        lambda module, args, out: returns_tuple.append(isinstance(out, tuple))))
    try:
        with torch.no_grad():
            lm.model.base_model(**inputs)  # the body only: no logits
    finally:
        for handle in handles:
            handle.remove()
    return [recorded[layer] for layer in range(lm.n_layers)], returns_tuple[0]


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
                with torch.no_grad():  # the body only: no logits for the prefix
                    self.cache = output_cache(lm.model.base_model(ids[None, :-1],
                                                                  use_cache=True))
            self.position = -1
        else:
            self.tokens = ids
            self.position = step.position
            self.ffn_output = ([lm.ffn_output(layer) for layer in range(lm.n_layers)]
                               if lm.adapter.ffn_output else None)
            residuals: dict[int, torch.Tensor] = {}
            handles = [module.register_forward_pre_hook(_keep_residual(residuals, layer,
                                                                       self.position),
                                                        with_kwargs=True)
                       for layer, module in enumerate(self.ffn_output or [])]
            try:
                with torch.no_grad():  # hidden states entering and leaving each block
                    out = lm.model.base_model(input_ids=ids[None], output_hidden_states=True)
            finally:
                for handle in handles:
                    handle.remove()
            self.hidden_in = [h[0] for h in out.hidden_states[: lm.n_layers]]
            self.hidden_out = [h[0] for h in out.hidden_states[1: lm.n_layers + 1]]
            self.residual = [residuals[layer] for layer in sorted(residuals)]

    def _fresh_cache(self, batch: int | list[int]):
        """A copy of the prefix cache with ``batch`` rows (per layer, when a list)."""
        if self.cache is None:
            return None
        cache = copy.deepcopy(self.cache)
        if isinstance(batch, int):
            cache.batch_repeat_interleave(batch)
        else:
            for layer, rows in zip(cache.layers, batch, strict=False):
                if rows:
                    layer.batch_repeat_interleave(rows)
        return cache

    @cached_property
    def _clean_block_inputs(self) -> tuple[list[torch.Tensor], bool]:
        """The hidden state entering each block at the prediction token, and the blocks' output
        structure (tensor or tuple); computed on first use (rows starting above layer 0)."""
        return block_inputs(self.lm, input_ids=self.tokens[None],
                            **cache_kwarg(self._fresh_cache(1)),
                            use_cache=self.cache is not None)

    @property
    def takes_patches(self) -> bool:
        """Whether rows can be given as ``patches`` (the masked-LM fast path)."""
        return not self.lm.causal and self.ffn_output is not None

    def logits(self, rows: int, hooks: Mapping[int, NeuronHook] | None = None,
               row_layers: list[int] | None = None,
               patches: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits at the prediction position for ``rows`` copies of the step, with ``hooks`` on
        the neurons; ``[rows, vocab]``.

        ``row_layers`` (ascending) is the lowest layer each row changes: such a row starts from
        the clean hidden state entering that layer instead of recomputing the layers below it.
        ``patches`` (masked LMs with :attr:`takes_patches`, instead of ``hooks``): per layer, the
        neurons at the mask position of that layer's rows, in row order; such a row starts at
        the next layer from the clean output with only the mask position recomputed.
        """
        if row_layers is not None and len(row_layers) != rows:
            raise ValueError(f"{len(row_layers)} row layers for {rows} rows")
        if row_layers is not None and any(
                a > b for a, b in zip(row_layers, row_layers[1:], strict=False)):
            raise ValueError("row_layers must be ascending")
        if self.lm.causal and row_layers and row_layers[-1] > 0:
            _ = self._clean_block_inputs  # before the hooks: a clean pass
        if patches is not None:
            if hooks or not self.takes_patches or row_layers is None:
                raise ValueError("patches need a masked LM with ffn_output, row_layers and no "
                                 "hooks")
            return self._masked_patched_logits(row_layers, patches)
        with neuron_hooks(self.lm, hooks or {}):
            if self.lm.causal:
                return self._causal_logits(rows, row_layers)
            return self._masked_logits(row_layers or [0] * rows)

    def probs(self, rows: int, hooks: Mapping[int, NeuronHook] | None = None,
              row_layers: list[int] | None = None,
              patches: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        """p(target) for each row (see :meth:`logits`); ``[rows]``."""
        return target_prob(self.logits(rows, hooks, row_layers, patches), self.step.target_id)

    def _causal_logits(self, rows: int, row_layers: list[int] | None) -> torch.Tensor:
        input_ids = self.tokens[None].expand(rows, -1)
        if not row_layers or row_layers[0] == row_layers[-1] == 0:
            out = self.lm.model(input_ids=input_ids, **cache_kwarg(self._fresh_cache(rows)),
                                use_cache=self.cache is not None, logits_to_keep=1)
            return out.logits[:, -1]
        starts = torch.bincount(torch.tensor(row_layers), minlength=self.lm.n_layers)
        active = starts.cumsum(0).tolist()
        hidden_in, returns_tuple = self._clean_block_inputs
        with staggered_blocks(self.lm, active, starts.tolist(), hidden_in, returns_tuple):
            out = self.lm.model(input_ids=input_ids, **cache_kwarg(self._fresh_cache(active)),
                                use_cache=self.cache is not None, logits_to_keep=1)
        return out.logits[:, -1]

    def _masked_logits(self, row_layers: list[int]) -> torch.Tensor:
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

    def _masked_patched_logits(self, row_layers: list[int],
                               patches: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Rows of layer l: the FFN is position-wise and attention at layer l sees the clean
        input, so the row's layer-l output is the clean one except at the mask position, which
        is ``ffn_output(patched neurons, clean attention output)``; the row starts at layer
        l+1 from there (a row of the last layer needs no block at all)."""
        starts = torch.bincount(torch.tensor(row_layers), minlength=self.lm.n_layers).tolist()
        position, last = self.position, self.lm.n_layers - 1
        hidden: torch.Tensor | None = None  # rows that entered below the current block
        final = []
        for layer, block in enumerate(self.lm.blocks):
            entering = None
            if starts[layer]:
                neurons = patches[layer]
                residual = self.residual[layer].to(neurons.device)
                at_mask = self.ffn_output[layer](
                    neurons.to(residual.dtype)[:, None, :],
                    residual[None, None, :].expand(len(neurons), 1, -1))[:, 0]
                if layer == last:
                    final.append(at_mask)
                else:
                    clean = self.hidden_out[layer][None].expand(len(neurons), -1, -1)
                    entering = torch.cat([clean[:, :position], at_mask[:, None],
                                          clean[:, position + 1:]], dim=1)
            if hidden is not None and len(hidden):
                if layer == last and _attends_plainly(block):  # only the mask is read out
                    final.insert(0, _block_at(block, hidden, position))
                    hidden = None
                else:
                    out = block(hidden)
                    hidden = out[0] if isinstance(out, tuple) else out
            if entering is not None:
                hidden = entering if hidden is None else torch.cat([hidden, entering])
        ends = [hidden[:, position]] if hidden is not None else []
        return self.lm.mlm_head(torch.cat([*ends, *final]))


def _attends_plainly(block: torch.nn.Module) -> bool:
    """A BERT-style block (``attention.self`` with absolute positions, ``attention.output``,
    ``intermediate``, ``output``) whose output at one position :func:`_block_at` computes."""
    attention = getattr(block, "attention", None)
    inner = getattr(attention, "self", None)
    return (inner is not None and hasattr(inner, "query") and hasattr(block, "intermediate")
            and getattr(inner, "position_embedding_type", "absolute") == "absolute"
            and not getattr(inner, "is_cross_attention", False))


def _block_at(block: torch.nn.Module, hidden: torch.Tensor, position: int) -> torch.Tensor:
    """The output of a BERT-style block at ``position`` only: the query of that position
    attends to the keys and values of every position (one sequence, no padding); the
    attention output, the FFN and the layer norms run at that position alone. ``[rows, d]``."""
    inner = block.attention.self
    rows, length, _ = hidden.shape
    size = inner.attention_head_size
    here = hidden[:, position: position + 1]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(rows, x.shape[1], -1, size).transpose(1, 2)

    context = torch.nn.functional.scaled_dot_product_attention(
        heads(inner.query(here)), heads(inner.key(hidden)), heads(inner.value(hidden)),
        scale=getattr(inner, "scaling", size ** -0.5))
    attended = block.attention.output(context.transpose(1, 2).reshape(rows, 1, -1), here)
    return block.output(block.intermediate(attended), attended)[:, 0]


def _keep_residual(store: dict, layer: int, position: int):
    """A pre-hook keeping ``ffn_output``'s second input (the attention output) at
    ``position``."""

    def hook(module, args, kwargs):
        residual = args[1] if len(args) > 1 else kwargs["input_tensor"]
        store[layer] = residual[0, position].detach()

    return hook


@dataclass
class CleanRun:
    """The unmodified prediction of one step."""

    activations: torch.Tensor  # [layers, neurons] at the prediction position
    prob: float  # p(target)
    predicted_id: int  # the greedy (argmax) token
    runner: StepRunner  # reusable for further rows of the same step


@uses_model
def clean_run(lm: LanguageModel, step: PredictionStep) -> CleanRun:
    """Clean neurons at the prediction position, p(target) and the greedy prediction."""
    runner = StepRunner(lm, step)
    with torch.no_grad(), capture(lm, position=runner.position) as store:
        logits = runner.logits(1)
    acts = torch.stack([store[layer][0] for layer in range(lm.n_layers)])
    return CleanRun(acts, float(target_prob(logits, step.target_id)), int(logits[0].argmax()),
                    runner)


def replace_position(layer_rows: torch.Tensor, position: int, values: torch.Tensor) -> NeuronHook:
    """A hook putting ``values[i]`` at (``layer_rows[i]``, ``position``), out of place."""

    def patch(x: torch.Tensor) -> torch.Tensor:
        positions = torch.full_like(layer_rows, position % x.shape[1])
        return x.index_put((layer_rows.to(x.device), positions.to(x.device)),
                           values.to(device=x.device, dtype=x.dtype))

    return patch


@dataclass
class PathIntegral:
    """Per-layer result of IG for one prediction step."""

    scores: torch.Tensor  # [layers, neurons]: (a - b) * sum_k w_k dF/dx at b + alpha_k (a - b)
    baseline_prob: torch.Tensor  # [layers]: F with the layer's neurons set to the baseline


@uses_model
def integrated_gradients(lm: LanguageModel, step: PredictionStep, clean: torch.Tensor,
                         baseline: torch.Tensor, layers: list[int], alphas: np.ndarray,
                         weights: np.ndarray, batch_size: int | None = None,
                         runner: StepRunner | None = None) -> PathIntegral:
    """IG of p(target) w.r.t. the neurons of each of ``layers``, all layers batched together.

    ``clean`` and ``baseline`` are ``[n_layers, neurons]``. Scores of layers not in ``layers``
    are zero. Rows are (layer, step) pairs; ``batch_size`` rows run per forward/backward pass.
    When the rule evaluates alpha = 0, those rows give p(baseline); otherwise one extra batch.
    """
    runner = runner or StepRunner(lm, step)
    batch_size = batch_size or default_batch_size(lm, len(step.input_ids))
    n_layers, n_neurons = clean.shape
    clean32, baseline32 = clean.float().cpu(), baseline.float().cpu()  # sums on the CPU
    integral = torch.zeros(n_layers, n_neurons)
    alpha_t = torch.tensor(alphas, dtype=torch.float32)
    weight_t = torch.tensor(weights, dtype=torch.float32)
    rows = [(layer, k) for layer in layers for k in range(len(alphas))]
    baseline_prob = torch.zeros(n_layers)
    at_zero = [k for k, alpha in enumerate(alphas) if alpha == 0]

    patched = runner.takes_patches  # masked LMs: rows start above their layer

    def run_chunk(chunk: list[tuple[int, int]]) -> None:
        leaves: dict[int, torch.Tensor] = {}
        hooks: dict[int, NeuronHook] = {}
        layer_steps: dict[int, torch.Tensor] = {}
        for layer in dict.fromkeys(layer for layer, _ in chunk):
            members = [i for i, (l_, _) in enumerate(chunk) if l_ == layer]
            ks = torch.tensor([chunk[i][1] for i in members])
            path = baseline32[layer] + alpha_t[ks, None] * (clean32[layer] - baseline32[layer])
            leaf = path.to(device=lm.device, dtype=lm.dtype).requires_grad_(True)
            leaves[layer], layer_steps[layer] = leaf, ks
            if not patched:
                hooks[layer] = replace_position(torch.tensor(members, device=lm.device),
                                                runner.position, leaf)
        with torch.enable_grad():
            probs = runner.probs(len(chunk), None if patched else hooks,
                                 [layer for layer, _ in chunk], leaves if patched else None)
            grads = torch.autograd.grad(probs.sum(), list(leaves.values()))
        for (layer, ks), grad in zip(layer_steps.items(), grads, strict=True):
            integral[layer] += (weight_t[ks, None] * grad.float().cpu()).sum(0)
        if at_zero:
            for i, (layer, k) in enumerate(chunk):
                if k == at_zero[0]:
                    baseline_prob[layer] = float(probs[i].detach())

    start = 0
    while start < len(rows):  # a pass that runs out of memory is retried with half the rows
        def run(size: int, start: int = start) -> int:
            run_chunk(rows[start:start + size])
            return size

        done = halving_on_oom(run, batch_size, "attribution pass")
        batch_size, start = done, start + done
    scores = (clean32 - baseline32) * integral
    if not at_zero:
        with torch.no_grad():
            rows_t = torch.arange(len(layers), device=lm.device)
            hooks = {layer: replace_position(rows_t[i:i + 1], runner.position,
                                             baseline[layer][None])
                     for i, layer in enumerate(layers)}
            baseline_prob[layers] = runner.probs(len(layers), hooks, layers).float()
    return PathIntegral(scores=scores, baseline_prob=baseline_prob)


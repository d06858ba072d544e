"""Batched forward passes without attribution: p(object | prompt) and greedy predictions.

:func:`score_encoded` scores many encoded queries (``(prompt, object)`` pairs, see
:mod:`mkn.attribution.queries`). A multi-token object is teacher forced: its probability is the
product of the probabilities of its tokens, each given the prompt and the gold tokens before it.

Causal LMs share what can be shared: every query with the same prompt tokens (one prompt and
its candidate objects, say) runs the prompt once; the probabilities of every object's *first*
token come from that one distribution, and only the rest of multi-token objects run again, as
short continuations on a copy of the prompt's KV cache. Prompts of equal length are batched
(no padding inside a prompt, so positions are exact for every family); continuations are
right-padded. Masked LMs run one row per teacher-forced step (the masks differ per step).

Active interventions (:mod:`mkn.interventions`) apply to every forward pass.

:func:`score_rows` gives each row its own intervention (neurons multiplied at every position,
or at the prediction positions only: x0 suppresses, x2 enhances), so many neuron sets are
measured in one batched pass: the controls of an effect, or the top-k sets of a size curve.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby

import torch

from mkn.attribution.engine import block_inputs, staggered_blocks
from mkn.attribution.queries import EncodedQuery, PredictionStep
from mkn.models.hooks import neuron_hooks
from mkn.models.kv_cache import cache_kwarg, output_cache
from mkn.models.loading import LanguageModel, uses_model

# Floats of logits one pass may hold (rows x kept positions x vocab).
LOGITS_BUDGET = 2**26
# log-probabilities are floored here so that p = 0 (underflow) stays finite
MIN_LOG_PROB = -1e4


@dataclass(frozen=True)
class Prediction:
    """How the model does on one query: p(object) and whether greedy decoding gets it."""

    prob: float  # product over the teacher-forced object tokens
    correct: bool  # the argmax is the object's token at every teacher-forced step
    first_predicted_id: int  # the greedy token at the first object position
    token_probs: tuple[float, ...] = ()

    @property
    def mean_log_prob(self) -> float:
        """:func:`mean_log_prob` of the object's tokens."""
        return mean_log_prob(self.token_probs)


def mean_log_prob(token_probs: Sequence[float]) -> float:
    """Mean log-probability per object token (the length-normalized score that ranks candidate
    objects in BMLAMA, Qi et al. 2023); a zero probability counts as ``MIN_LOG_PROB``."""
    logs = [math.log(p) if p > 0 else MIN_LOG_PROB for p in token_probs]
    return sum(logs) / len(logs) if logs else MIN_LOG_PROB


def _keeps_logits(lm: LanguageModel) -> bool:
    return lm.causal and "logits_to_keep" in inspect.signature(lm.model.forward).parameters


@uses_model
def score_steps(lm: LanguageModel, steps: Sequence[PredictionStep],
                batch_size: int = 16) -> list[tuple[float, int]]:
    """``(p(target), greedy token id)`` at each step's prediction position, in padded batches.

    Steps are sorted by length and right-padded (with an attention mask); a causal LM computes
    logits only at the prediction positions. Active interventions apply.
    """
    order = sorted(range(len(steps)), key=lambda r: len(steps[r].input_ids))
    keeps = _keeps_logits(lm)
    pad = lm.tokenizer.pad_token_id or 0
    out: list[tuple[float, int]] = [(0.0, 0)] * len(steps)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(steps[r].input_ids) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, r in enumerate(rows):
            ids[row, :len(steps[r].input_ids)] = torch.tensor(steps[r].input_ids)
            mask[row, :len(steps[r].input_ids)] = 1
        positions = sorted({steps[r].position for r in rows})
        extra = {"logits_to_keep": torch.tensor(positions, device=lm.device)} if keeps else {}
        with torch.no_grad():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                              **extra).logits
        for row, r in enumerate(rows):
            column = positions.index(steps[r].position) if keeps else steps[r].position
            vector = logits[row, column].float()
            out[r] = (float(vector.softmax(-1)[steps[r].target_id]), int(vector.argmax()))
    return out


def _prediction(token_probs: list[float], predicted: list[int],
                target_ids: Sequence[int]) -> Prediction:
    return Prediction(prob=math.prod(token_probs), correct=predicted == list(target_ids),
                      first_predicted_id=predicted[0], token_probs=tuple(token_probs))


def _score_masked(lm: LanguageModel, encoded: Sequence[EncodedQuery],
                  batch_size: int) -> list[Prediction]:
    scored = iter(score_steps(lm, [step for query in encoded for step in query.steps],
                              batch_size))
    out = []
    for query in encoded:
        runs = [next(scored) for _ in query.steps]
        out.append(_prediction([p for p, _ in runs], [a for _, a in runs], query.target_ids))
    return out


def _forward(lm: LanguageModel, positions: torch.Tensor, **inputs):
    """The model's output with logits ``[rows, len(positions), vocab]`` at ``positions``.

    Kept positions are passed as an index tensor, never a slice: a sliced, non-contiguous hidden
    state makes bfloat16 linear layers very slow on some CPUs. Families without
    ``logits_to_keep`` compute every position and are cut afterwards.
    """
    extra = {"logits_to_keep": positions.to(lm.device)} if _keeps_logits(lm) else {}
    with torch.no_grad():
        out = lm.model(**inputs, **extra)
    if not extra:
        out.logits = out.logits[:, positions.to(out.logits.device)]
    return out


def _score_causal(lm: LanguageModel, encoded: Sequence[EncodedQuery],
                  batch_size: int) -> list[Prediction]:
    vocab = lm.model.config.get_text_config().vocab_size
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for index, query in enumerate(encoded):
        by_prompt.setdefault(tuple(query.steps[0].input_ids), []).append(index)
    token_probs: list[list[float]] = [[] for _ in encoded]
    predicted: list[list[int]] = [[] for _ in encoded]
    prompts = sorted(by_prompt, key=len)
    for length, same_length in groupby(prompts, key=len):
        same_length = list(same_length)
        for start in range(0, len(same_length), batch_size):
            chunk = same_length[start:start + batch_size]
            ids = torch.tensor(chunk, dtype=torch.long, device=lm.device)
            out = _forward(lm, torch.tensor([length - 1]), input_ids=ids, use_cache=True)
            first = out.logits[:, -1].float().log_softmax(-1)  # [prompts, vocab]
            best = first.argmax(-1).tolist()
            rows = []  # (prompt row, query index) of objects with more than one token
            for row, prompt in enumerate(chunk):
                for index in by_prompt[prompt]:
                    target = encoded[index].target_ids
                    token_probs[index].append(float(first[row, target[0]].exp()))
                    predicted[index].append(best[row])
                    if len(target) > 1:
                        rows.append((row, index))
            if rows:
                _continue(lm, encoded, rows, output_cache(out), length, vocab, token_probs,
                          predicted)
    return [_prediction(token_probs[i], predicted[i], query.target_ids)
            for i, query in enumerate(encoded)]


@contextmanager
def head_at(lm: LanguageModel, rows: torch.Tensor, positions: torch.Tensor) -> Iterator[None]:
    """Run the LM head only on the hidden states at ``(rows[i], positions[i])``: the model's
    logits become ``[1, len(rows), vocab]`` (whatever the model applies after its head, such as
    Gemma's soft-capping, still applies). Over a large vocabulary this saves the logits of every
    other position, and a ``[rows, 1, hidden]`` input, which some CPU matmul kernels expand per
    row into a copy of the whole head, is never formed."""
    def gather(module, args):
        return (args[0][rows, positions][None], *args[1:])

    handle = lm.model.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def _continue(lm: LanguageModel, encoded: Sequence[EncodedQuery], rows: list[tuple[int, int]],
              cache, length: int, vocab: int, token_probs: list[list[float]],
              predicted: list[list[int]]) -> None:
    """Score tokens 2.. of multi-token objects as continuations of their cached prompt; the LM
    head runs only where a token is predicted (no padding)."""
    rows = sorted(rows, key=lambda r: len(encoded[r[1]].target_ids))
    pad = lm.tokenizer.pad_token_id or 0
    start = 0
    while start < len(rows):
        end, needed = start, 0
        while end < len(rows):
            more = len(encoded[rows[end][1]].target_ids) - 1
            if end > start and (needed + more) * vocab > LOGITS_BUDGET:
                break
            needed, end = needed + more, end + 1
        chunk = rows[start:end]
        width = max(len(encoded[index].target_ids) - 1 for _, index in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length + width), dtype=torch.long)
        mask[:, :length] = 1
        where_rows, where_positions, targets, owners = [], [], [], []
        for r, (_, index) in enumerate(chunk):
            target = encoded[index].target_ids
            ids[r, :len(target) - 1] = torch.tensor(target[:-1])
            mask[r, length:length + len(target) - 1] = 1
            for k, token in enumerate(target[1:]):
                where_rows.append(r)
                where_positions.append(k)
                targets.append(token)
                owners.append(index)
        selected = copy.deepcopy(cache) if end < len(rows) or start else cache
        selected.batch_select_indices(torch.tensor([row for row, _ in chunk],
                                                   device=lm.device))
        with head_at(lm, torch.tensor(where_rows, device=lm.device),
                      torch.tensor(where_positions, device=lm.device)), torch.no_grad():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                              **cache_kwarg(selected), use_cache=True).logits[0]
        _read_out(logits, targets, owners, token_probs, predicted)
        start = end


def _read_out(logits: torch.Tensor, targets: Sequence[int], owners: Sequence[int],
              token_probs: list[list[float]], predicted: list[list[int]]) -> None:
    """Append p(target) and the argmax of each logits row (one scored position each) to the
    lists of the query that owns it."""
    log_probs = logits.float().log_softmax(-1)
    chosen = log_probs[torch.arange(len(targets)), torch.tensor(targets)].exp().tolist()
    best = log_probs.argmax(-1).tolist()
    for owner, prob, argmax in zip(owners, chosen, best, strict=True):
        token_probs[owner].append(prob)
        predicted[owner].append(argmax)


RowIntervention = Mapping[int, tuple[Sequence[int], float]]  # layer -> (neurons, multiplier)
# layer -> (neurons [k], change of their output vectors [k, hidden]): a weight edit of one row
RowEdit = Mapping[int, tuple[Sequence[int], torch.Tensor]]


def _multiplier_hooks(lm: LanguageModel, interventions: Sequence[RowIntervention | None],
                      at: torch.Tensor | None = None):
    """Per layer, a hook multiplying row ``r``'s neurons by its own factors, at every position
    or, with ``at`` (``[rows, width]``, 1 where to intervene), only there."""
    tables: dict[int, torch.Tensor] = {}
    for r, intervention in enumerate(interventions):
        for layer, (indices, factor) in (intervention or {}).items():
            table = tables.setdefault(layer, torch.ones(len(interventions), lm.n_neurons,
                                                        device=lm.device))
            table[r, list(indices)] = factor

    def make(table: torch.Tensor):
        # a staggered pass (:func:`_score_chunk` with ``layers``) runs a block on its first
        # rows only
        if at is None:
            return lambda x: x * table[: x.shape[0], None, :].to(x.dtype)
        where = at.to(lm.device)[:, :, None]

        def hook(x: torch.Tensor) -> torch.Tensor:
            scale = 1 + where[: x.shape[0], : x.shape[1]] * (table[: x.shape[0], None, :] - 1)
            return x * scale.to(x.dtype)

        return hook

    return {layer: make(table) for layer, table in tables.items()}


def _edit_hooks(lm: LanguageModel, edits: Sequence[RowEdit | None]):
    """Forward hooks on the output projections: row ``r`` computes as if its neurons' output
    vectors were changed by its edit's deltas (``W v + sum_i a_i dv_i``: what
    :mod:`mkn.interventions.weights` writes into the weights, one edit per row)."""
    per_layer: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for r, edit in enumerate(edits):
        for layer, (indices, delta) in (edit or {}).items():
            per_layer.setdefault(layer, []).append(
                (r, torch.tensor(list(indices), device=lm.device),
                 delta.to(device=lm.device, dtype=lm.dtype)))

    def make(rows: list[tuple[int, torch.Tensor, torch.Tensor]]):
        def hook(module, args, output):
            out = output.clone()
            for r, indices, delta in rows:
                if r < out.shape[0]:  # a staggered block runs its first rows only
                    out[r] += args[0][r][:, indices] @ delta
            return out

        return hook

    return [(lm.down_proj(layer), make(rows)) for layer, rows in per_layer.items()]


POSITIONS = ("all", "prediction")


Job = tuple[int, Sequence[int], list[tuple[int, int]]]  # owner, input ids, (position, target)


def _lowest_layer(intervention: RowIntervention | None, n_layers: int,
                  edit: RowEdit | None = None) -> int:
    """The lowest layer a row changes; a clean row recomputes only the last block."""
    changed = [*(intervention or {}), *(edit or {})]
    return min(changed) if changed else n_layers - 1


def _score_chunk(lm: LanguageModel, chunk: Sequence[Job],
                 interventions: Sequence[RowIntervention | None], positions: str,
                 token_probs: list[list[float]], predicted: list[list[int]],
                 layers: Sequence[int] | None = None, clean: tuple | None = None,
                 edits: Sequence[RowEdit | None] | None = None) -> None:
    """One forward pass of ``chunk``'s rows (right-padded), each with its own intervention; with
    ``layers`` (rows of one length, ascending), row ``r`` starts at block ``layers[r]`` from the
    hidden state entering it in the ``clean`` pass of its input (``(states, returns_tuple,
    input of each row)``: :func:`mkn.attribution.engine.block_inputs`,
    :func:`~mkn.attribution.engine.staggered_blocks`)."""
    width = max(len(ids) for _, ids, _ in chunk)
    ids = torch.full((len(chunk), width), lm.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    where_rows, where_positions, targets, owners = [], [], [], []
    for r, (owner, row_ids, scored) in enumerate(chunk):
        ids[r, :len(row_ids)] = torch.tensor(row_ids)
        mask[r, :len(row_ids)] = 1
        for position, target in scored:
            where_rows.append(r)
            where_positions.append(position)
            targets.append(target)
            owners.append(owner)
    at = None
    if positions == "prediction":
        at = torch.zeros((len(chunk), width))
        at[torch.tensor(where_rows), torch.tensor(where_positions)] = 1.0
    hooks = _multiplier_hooks(lm, [interventions[owner] for owner, _, _ in chunk], at)
    with contextlib.ExitStack() as stack:
        inputs = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)}
        if layers is not None:
            states, returns_tuple, inputs_of_rows = clean
            starts = torch.bincount(torch.tensor(layers), minlength=lm.n_layers).tolist()
            active = list(itertools.accumulate(starts))
            rows_of = torch.tensor(inputs_of_rows)
            fresh = [states[layer][rows_of[active[layer] - starts[layer]:active[layer]]]
                     for layer in range(lm.n_layers)]  # each row's input, entering its layer
            stack.enter_context(staggered_blocks(lm, active, starts, fresh, returns_tuple))
            del inputs["attention_mask"]  # inputs of one length: no padding
        stack.enter_context(neuron_hooks(lm, hooks))
        for module, hook in _edit_hooks(lm, [edits[owner] for owner, _, _ in chunk]
                                        if edits is not None else []):
            stack.callback(module.register_forward_hook(hook).remove)
        stack.enter_context(head_at(lm, torch.tensor(where_rows, device=lm.device),
                                    torch.tensor(where_positions, device=lm.device)))
        stack.enter_context(torch.no_grad())
        logits = lm.model(**inputs).logits[0]
    _read_out(logits, targets, owners, token_probs, predicted)


STAGGER_GAIN = 1.25  # blocks skipped per block of the clean passes, before staggering pays


def _clean_states(lm: LanguageModel, inputs: Sequence[Sequence[int]],
                  batch_size: int) -> tuple[list[torch.Tensor], bool]:
    """The clean hidden state entering each block for each of ``inputs`` (one length):
    ``[inputs, positions, hidden]`` per layer, in batches."""
    parts = [block_inputs(lm, input_ids=torch.tensor(inputs[i:i + batch_size],
                                                     device=lm.device))
             for i in range(0, len(inputs), batch_size)]
    return ([torch.cat([states[layer] for states, _ in parts]) for layer in range(lm.n_layers)],
            parts[0][1])


@uses_model
def score_rows(lm: LanguageModel, encoded: Sequence[EncodedQuery],
               interventions: Sequence[RowIntervention | None],
               batch_size: int = 32, positions: str = "all",
               edits: Sequence[RowEdit | None] | None = None) -> list[Prediction]:
    """One :class:`Prediction` per row: ``encoded[i]`` scored with ``interventions[i]``
    (``{layer: (neuron indices, multiplier)}``; None: clean), applied at every position
    (``positions="all"``) or only at the positions that predict the object's tokens
    (``"prediction"``: the mask/prediction position, where Dai et al. and AMIG intervene), and
    with ``edits[i]`` (``{layer: (neuron indices, change of their output vectors)}``: a weight
    edit of that row alone, at every position), so many edits are measured in one pass.

    A causal row is the prompt and the object's tokens but the last (teacher forcing in one
    sequence); a masked LM runs one row per teacher-forced step. Rows are sorted by length,
    right-padded, and the LM head runs only at the positions that predict an object token.
    Causal rows of one length run together, each from the lowest layer it changes: the blocks
    below are its input's clean pass, computed once per input (issue 26: what a row does not
    change is not recomputed). Interventions already active
    (:mod:`mkn.interventions`) apply too.
    """
    if len(encoded) != len(interventions):
        raise ValueError(f"{len(encoded)} queries but {len(interventions)} interventions")
    if edits is not None and len(edits) != len(encoded):
        raise ValueError(f"{len(encoded)} queries but {len(edits)} edits")
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose {' or '.join(POSITIONS)}")
    jobs: list[Job] = []
    for owner, query in enumerate(encoded):
        if lm.causal:
            jobs.append((owner, query.steps[-1].input_ids,
                         [(s.position, s.target_id) for s in query.steps]))
        else:
            jobs += [(owner, s.input_ids, [(s.position, s.target_id)]) for s in query.steps]
    token_probs: list[list[float]] = [[] for _ in encoded]
    predicted: list[list[int]] = [[] for _ in encoded]
    padded = [] if lm.causal else jobs  # a masked LM's steps keep their order
    by_length: dict[int, list[Job]] = {}
    for job in jobs if lm.causal else []:  # one job per query
        by_length.setdefault(len(job[1]), []).append(job)
    for bucket in by_length.values():
        inputs = list(dict.fromkeys(tuple(job[1]) for job in bucket))
        layers = {job[0]: _lowest_layer(interventions[job[0]], lm.n_layers,
                                        edits[job[0]] if edits is not None else None)
                  for job in bucket}
        # staggering pays when the rows skip more blocks than their inputs' clean passes cost
        if sum(layers.values()) < STAGGER_GAIN * len(inputs) * lm.n_layers:
            padded += bucket
            continue
        states, returns_tuple = _clean_states(lm, inputs, batch_size)
        index = {ids: i for i, ids in enumerate(inputs)}
        bucket.sort(key=lambda job: layers[job[0]])
        for start in range(0, len(bucket), batch_size):
            chunk = bucket[start:start + batch_size]
            _score_chunk(lm, chunk, interventions, positions, token_probs, predicted,
                         [layers[owner] for owner, _, _ in chunk],
                         (states, returns_tuple, [index[tuple(ids)] for _, ids, _ in chunk]),
                         edits)
    padded.sort(key=lambda job: len(job[1]))
    for start in range(0, len(padded), batch_size):
        _score_chunk(lm, padded[start:start + batch_size], interventions, positions,
                     token_probs, predicted, edits=edits)
    return [_prediction(token_probs[i], predicted[i], query.target_ids)
            for i, query in enumerate(encoded)]


@uses_model
def score_encoded(lm: LanguageModel, encoded: Sequence[EncodedQuery],
                  batch_size: int = 16) -> list[Prediction]:
    """One :class:`Prediction` per encoded query (batched; see the module docstring)."""
    if not encoded:
        return []
    if lm.causal:
        return _score_causal(lm, encoded, batch_size)
    return _score_masked(lm, encoded, batch_size)

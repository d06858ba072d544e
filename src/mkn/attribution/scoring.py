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
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

import torch

from mkn.attribution.queries import EncodedQuery, PredictionStep
from mkn.models.loading import LanguageModel

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
        """Mean log-probability per object token (the length-normalized score that ranks
        candidate objects in BMLAMA, Qi et al. 2023)."""
        logs = [math.log(p) if p > 0 else MIN_LOG_PROB for p in self.token_probs]
        return sum(logs) / len(logs) if logs else MIN_LOG_PROB


def _keeps_logits(lm: LanguageModel) -> bool:
    return lm.causal and "logits_to_keep" in inspect.signature(lm.model.forward).parameters


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
            rows = []  # (prompt row, query index) of objects with more than one token
            for row, prompt in enumerate(chunk):
                for index in by_prompt[prompt]:
                    target = encoded[index].target_ids
                    token_probs[index].append(float(first[row, target[0]].exp()))
                    predicted[index].append(int(first[row].argmax()))
                    if len(target) > 1:
                        rows.append((row, index))
            if rows:
                _continue(lm, encoded, rows, out.past_key_values, length, vocab, token_probs,
                          predicted)
    return [_prediction(token_probs[i], predicted[i], query.target_ids)
            for i, query in enumerate(encoded)]


def _continue(lm: LanguageModel, encoded: Sequence[EncodedQuery], rows: list[tuple[int, int]],
              cache, length: int, vocab: int, token_probs: list[list[float]],
              predicted: list[list[int]]) -> None:
    """Score tokens 2.. of multi-token objects as continuations of their cached prompt."""
    rows = sorted(rows, key=lambda r: len(encoded[r[1]].target_ids))
    pad = lm.tokenizer.pad_token_id or 0
    start = 0
    while start < len(rows):
        width = len(encoded[rows[start][1]].target_ids) - 1
        end = start + 1
        while end < len(rows):
            longest = len(encoded[rows[end][1]].target_ids) - 1
            if (end - start + 1) * longest * vocab > LOGITS_BUDGET:
                break
            width, end = longest, end + 1
        chunk = rows[start:end]
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length + width), dtype=torch.long)
        mask[:, :length] = 1
        for r, (_, index) in enumerate(chunk):
            continuation = encoded[index].target_ids[:-1]
            ids[r, :len(continuation)] = torch.tensor(continuation)
            mask[r, length:length + len(continuation)] = 1
        selected = copy.deepcopy(cache) if end < len(rows) or start else cache
        selected.batch_select_indices(torch.tensor([row for row, _ in chunk],
                                                   device=lm.device))
        logits = _forward(lm, torch.arange(width), input_ids=ids.to(lm.device),
                          attention_mask=mask.to(lm.device), past_key_values=selected,
                          use_cache=True).logits
        for r, (_, index) in enumerate(chunk):
            target = encoded[index].target_ids
            for k, token in enumerate(target[1:]):
                vector = logits[r, k].float()
                token_probs[index].append(float(vector.softmax(-1)[token]))
                predicted[index].append(int(vector.argmax()))
        start = end


def score_encoded(lm: LanguageModel, encoded: Sequence[EncodedQuery],
                  batch_size: int = 16) -> list[Prediction]:
    """One :class:`Prediction` per encoded query (batched; see the module docstring)."""
    if not encoded:
        return []
    if lm.causal:
        return _score_causal(lm, encoded, batch_size)
    return _score_masked(lm, encoded, batch_size)

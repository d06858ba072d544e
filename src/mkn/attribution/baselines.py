"""Baselines for integrated gradients over neurons.

- ``zero`` (method ``ig``): b = 0, as Dai et al. 2022 (the "B-KN" baseline of the AMIG paper).
- ``architecture`` (method ``amig``, Chen et al. AAAI 2024): b is the neuron's activation at the
  prediction position when the query's tokens are replaced by ``[MASK]`` (masked LMs) or by EOS
  (causal LMs), one token at a time, averaged over the replaced positions. This follows AMIG's
  code (the paper sums per-word attributions instead; averaging baselines keeps one IG pass).
  One difference: AMIG's code loops over *every* input position, special tokens and the
  [MASK] itself included; we replace the query's own tokens only (replacing [MASK] by [MASK]
  is a no-op that just mixes the clean activation into the mean, and replacing BOS by EOS
  feeds the model an input it never saw in training).
"""

from __future__ import annotations

import torch

from mkn.attribution.queries import PredictionStep
from mkn.models.hooks import capture
from mkn.models.loading import LanguageModel, uses_model


def zero_baseline(lm: LanguageModel, step: PredictionStep, clean: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(clean)


def replacement_token(lm: LanguageModel) -> int:
    """EOS for causal LMs, ``[MASK]`` for masked LMs."""
    tokenizer = lm.tokenizer
    token_id = tokenizer.eos_token_id if lm.causal else tokenizer.mask_token_id
    if token_id is None:
        kind = "EOS" if lm.causal else "mask"
        raise ValueError(f"the tokenizer of {lm.name} has no {kind} token for the AMIG baseline")
    return int(token_id)


@uses_model
def architecture_baseline(lm: LanguageModel, step: PredictionStep,
                          clean: torch.Tensor) -> torch.Tensor:
    """Mean neurons at the prediction position over the one-token replacements of the query."""
    positions = list(step.query_positions)
    if not positions:
        return torch.zeros_like(clean)
    ids = torch.tensor(step.input_ids, device=lm.device).repeat(len(positions), 1)
    ids[torch.arange(len(positions)), torch.tensor(positions)] = replacement_token(lm)
    with torch.no_grad(), capture(lm, position=step.position) as store:
        lm.model.base_model(input_ids=ids)
    return torch.stack([store[layer].float().mean(0) for layer in range(lm.n_layers)])


BASELINES = {"ig": zero_baseline, "amig": architecture_baseline}

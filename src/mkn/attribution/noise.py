"""Noise on input embeddings: the corruption of causal tracing and patching (ROME, Meng et al.
2022: Gaussian noise of 3 x the embeddings' standard deviation on the subject's tokens)."""

from __future__ import annotations

import torch

from mkn.models.loading import LanguageModel


def embedding_sigma(lm: LanguageModel, sample: int = 4096) -> float:
    """Standard deviation of the input embedding module's outputs over ``sample`` token ids
    spread evenly over the vocabulary (scaled embeddings, as Gemma's, included)."""
    embed = lm.model.get_input_embeddings()
    vocab = int(embed.weight.shape[0])
    ids = torch.linspace(0, vocab - 1, min(sample, vocab)).long().to(lm.device)
    with torch.no_grad():
        return float(embed(ids[None]).float().std())

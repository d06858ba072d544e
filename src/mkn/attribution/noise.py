"""Noise on input embeddings: the corruption of causal tracing and patching (ROME, Meng et al.
2022: Gaussian noise of 3 x the embeddings' standard deviation on the subject's tokens).

:func:`noise_draws` gives the seeded draws, :func:`add_noise` the forward hook of the input
embedding module that adds them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def noise_draws(lm: LanguageModel, samples: int, positions: int, noise: float,
                seed: int) -> torch.Tensor:
    """``samples`` seeded draws of ``N(0, (noise * sigma)^2)`` for ``positions`` token
    positions, ``[samples, positions, hidden]`` in the model's device and dtype (``sigma``:
    :func:`embedding_sigma`)."""
    hidden = lm.model.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(samples, positions, hidden, generator=generator)
    return (draws * noise * embedding_sigma(lm)).to(device=lm.device, dtype=lm.dtype)


def add_noise(lm: LanguageModel, positions: Sequence[int], draws: torch.Tensor,
              rows_per_draw: int = 1) -> Callable:
    """A forward hook for the input embedding module: row ``r`` of the batch gets
    ``draws[r // rows_per_draw]`` added at ``positions``."""
    where = torch.tensor(list(positions), device=lm.device)
    noise_rows = draws.repeat_interleave(rows_per_draw, dim=0)

    def hook(module, args, output):
        out = output.clone()
        out[:, where] += noise_rows
        return out

    return hook

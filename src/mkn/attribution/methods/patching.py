"""Activation patching of single neurons (noising: how much p(target) drops when one neuron, at
the prediction position, takes its value from a corrupted run).

    score_i = p(target) - p(target | a_i := a*_i)

with ``a*`` the neurons at the prediction position in a run whose context tokens (the query's
own tokens before the prediction position: subject and relation words) get Gaussian noise of
``NOISE`` x the embeddings' standard deviation (ROME's corruption, Meng et al. 2022), averaged
over ``SAMPLES`` seeded draws. Exact patching needs one forward row per neuron, so it is run for
the ``CANDIDATES`` neurons with the largest first-order estimate ``(a_i - a*_i) dp/da_i``
("attribution patching", Nanda 2023; one gradient row per layer); every other neuron keeps that
estimate as its score. All candidate rows of a step run batched, each starting at its own layer
from the clean state below it.
"""

from __future__ import annotations

import numpy as np
import torch

from mkn.attribution.engine import integrated_gradients, replace_position
from mkn.attribution.methods.ig import IG  # noqa: F401  (ig and amig are listed first)
from mkn.attribution.methods.registry import Method, StepScores, register_method
from mkn.attribution.noise import add_noise, noise_draws
from mkn.models.hooks import capture

SAMPLES = 10
NOISE = 3.0
CANDIDATES = 256
SEED = 0


def corrupted_neurons(lm, step, samples: int = SAMPLES, noise: float = NOISE,
                      seed: int = SEED) -> torch.Tensor:
    """The neurons ``[layers, neurons]`` at the prediction position, mean over ``samples``
    runs with noise on the embeddings of the context tokens (module docstring)."""
    context = [p for p in step.query_positions if p != step.position]
    if not context:
        raise ValueError("patching needs context tokens before the prediction position")
    ids = torch.tensor(step.input_ids, device=lm.device)[None].expand(samples, -1)
    draws = noise_draws(lm, samples, len(context), noise, seed)
    handle = lm.model.get_input_embeddings().register_forward_hook(add_noise(lm, context, draws))
    try:
        with torch.no_grad(), capture(lm, position=step.position) as store:
            lm.model.base_model(input_ids=ids.contiguous())  # the neurons only: no LM head
    finally:
        handle.remove()
    return torch.stack([store[layer].float().mean(0) for layer in range(lm.n_layers)])


def score_step(lm, step, clean, layers, settings) -> StepScores:
    corrupted = corrupted_neurons(lm, step).to(clean.activations.dtype)
    estimate = integrated_gradients(lm, step, clean.activations, corrupted, layers, np.ones(1),
                                    np.ones(1), settings.batch_size,
                                    runner=clean.runner).scores
    scores = estimate.clone()
    flat = torch.full_like(estimate, float("-inf"))
    flat[layers] = estimate[layers].abs()
    chosen = flat.flatten().topk(min(CANDIDATES, len(layers) * lm.n_neurons)).indices
    pairs = sorted((int(i) // lm.n_neurons, int(i) % lm.n_neurons) for i in chosen)
    runner, batch = clean.runner, settings.batch_size or 64
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        hooks, by_layer = {}, {}
        for row, (layer, index) in enumerate(chunk):
            by_layer.setdefault(layer, []).append((row, index))
        for layer, members in by_layer.items():
            values = clean.activations[layer].repeat(len(members), 1)
            for k, (_, index) in enumerate(members):
                values[k, index] = corrupted[layer, index]
            rows = torch.tensor([row for row, _ in members], device=lm.device)
            hooks[layer] = replace_position(rows, runner.position, values)
        with torch.no_grad():
            patched = runner.probs(len(chunk), hooks, [layer for layer, _ in chunk]).float()
        for (layer, index), p in zip(chunk, patched.cpu().tolist(), strict=True):
            scores[layer, index] = clean.prob - p
    return StepScores(scores)


PATCHING = register_method(Method(
    "patching", "single-neuron activation patching from a noised-context run, p - p(a_i := "
    "a*_i), exact for the top candidates of attribution patching (Meng et al. 2022; Nanda "
    "2023)", score_step))

"""Activation interventions on any set of neurons: suppress, enhance, set. Always undone.

A neuron is ``(layer, index)``. Interventions act on ``blocks.{l}.mlp.hook_post`` at every
token position by default (the neuron is off/boosted wherever it fires), or only at
``positions`` (e.g. ``[-1]``: the prediction position of a causal LM). They compose: nested
context managers stack, and leaving a block removes its hooks even on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from mkn.models.hooks import NeuronHook, neuron_hooks
from mkn.models.loading import LanguageModel

Neuron = tuple[int, int]


def group_neurons(lm: LanguageModel, neurons: Iterable[Sequence[int]]) -> dict[int, list[int]]:
    """``{layer: [indices]}`` after checking every neuron exists; rejects an empty set."""
    by_layer: dict[int, list[int]] = {}
    for neuron in neurons:
        if len(neuron) < 2:
            raise ValueError(f"a neuron is (layer, index), got {neuron!r}")
        layer, index = int(neuron[0]), int(neuron[1])
        if not 0 <= layer < lm.n_layers:
            raise ValueError(f"neuron {(layer, index)}: layer out of range "
                             f"({lm.name} has {lm.n_layers} layers)")
        if not 0 <= index < lm.n_neurons:
            raise ValueError(f"neuron {(layer, index)}: index out of range "
                             f"({lm.name} has {lm.n_neurons} neurons per layer)")
        by_layer.setdefault(layer, []).append(index)
    if not by_layer:
        raise ValueError("empty neuron set: nothing to intervene on")
    return {layer: sorted(set(indices)) for layer, indices in by_layer.items()}


@contextmanager
def intervene(lm: LanguageModel, neurons: Iterable[Sequence[int]], mode: str = "suppress",
              factor: float = 2.0, value: float = 0.0,
              positions: Sequence[int] | None = None) -> Iterator[None]:
    """Within the block, rewrite ``neurons``: ``suppress`` (x=0), ``enhance`` (x*factor), ``set``
    (x=value)."""
    if mode not in ("suppress", "enhance", "set"):
        raise ValueError(f"unknown intervention {mode!r}; choose suppress, enhance or set")
    by_layer = group_neurons(lm, neurons)

    def make(indices: list[int]) -> NeuronHook:
        index = torch.tensor(indices)

        def rewrite(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            where = slice(None) if positions is None else list(positions)
            selected = x[:, where][..., index]
            if mode == "suppress":
                new = torch.zeros_like(selected)
            elif mode == "enhance":
                new = selected * factor
            else:
                new = torch.full_like(selected, value)
            if positions is None:
                x[..., index] = new
            else:
                for j, p in enumerate(positions):
                    x[:, p, index] = new[:, j]
            return x

        return rewrite

    with neuron_hooks(lm, {layer: make(indices) for layer, indices in by_layer.items()}):
        yield


def suppress(lm: LanguageModel, neurons: Iterable[Sequence[int]], **kwargs):
    """Set ``neurons`` to 0 (Dai et al.'s erasure by activation)."""
    return intervene(lm, neurons, "suppress", **kwargs)


def enhance(lm: LanguageModel, neurons: Iterable[Sequence[int]], factor: float = 2.0, **kwargs):
    """Multiply ``neurons`` by ``factor`` (x2 as in Dai et al. and AMIG)."""
    return intervene(lm, neurons, "enhance", factor=factor, **kwargs)

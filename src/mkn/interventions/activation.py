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


def neuron_list(lm: LanguageModel, neurons) -> list:
    """``neurons`` as (layer, index) pairs: pairs as given, or a bool mask of shape
    ``(layers, neurons)`` (its True entries). Any other tensor or array (a float tensor, an
    integer tensor that is not ``(N, 2)``, a mask of another shape) is refused: read as pairs it
    would silently hit neuron (0, 0)."""
    if hasattr(neurons, "shape") and hasattr(neurons, "dtype"):  # a tensor or an array
        tensor = torch.as_tensor(neurons)
        shape = tuple(tensor.shape)
        if tensor.dtype == torch.bool:
            if shape != (lm.n_layers, lm.n_neurons):
                raise ValueError(f"a neuron mask has shape ({lm.n_layers}, {lm.n_neurons}) "
                                 f"(layers, neurons of {lm.name}), got {shape}")
            return [tuple(map(int, pair)) for pair in tensor.nonzero().tolist()]
        if tensor.is_floating_point() or tensor.is_complex() or tensor.ndim != 2 \
                or shape[1] != 2:
            raise ValueError(f"neurons are (layer, index) pairs, an integer tensor of shape "
                             f"(N, 2), or a bool mask of shape ({lm.n_layers}, {lm.n_neurons}); "
                             f"got a {str(tensor.dtype).removeprefix('torch.')} tensor of shape "
                             f"{shape}")
        return [tuple(map(int, pair)) for pair in tensor.tolist()]
    return list(neurons)


def group_neurons(lm: LanguageModel, neurons: Iterable[Sequence[int]]) -> dict[int, list[int]]:
    """``{layer: [indices]}`` after checking every neuron exists (pairs of integers; a bool
    mask is accepted, :func:`neuron_list`); rejects an empty set."""
    by_layer: dict[int, list[int]] = {}
    for neuron in neuron_list(lm, neurons):
        if isinstance(neuron, str | bytes) or len(neuron) < 2:
            raise ValueError(f"a neuron is (layer, index), got {neuron!r}")
        try:
            fractional = any(isinstance(x, bool) or float(x) != int(x) for x in neuron[:2])
        except (TypeError, ValueError):
            fractional = True
        if fractional:
            raise ValueError(f"a neuron is a pair of integers (layer, index), got {neuron!r}")
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

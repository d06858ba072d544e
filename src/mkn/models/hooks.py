"""Hooks on the neurons (``blocks.{l}.mlp.hook_post``): read or rewrite them, always undone.

A hook function receives the activations fed to the FFN output projection of one layer,
shape ``[batch, seq, neurons]``, and returns the tensor to use instead (or ``None`` to leave them
as they are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from mkn.models.loading import LanguageModel

NeuronHook = Callable[[torch.Tensor], torch.Tensor | None]


@contextmanager
def neuron_hooks(lm: LanguageModel, hooks: Mapping[int, NeuronHook]) -> Iterator[None]:
    """Install ``hooks`` (layer -> function) on the neurons for the duration of the block."""
    handles = []

    def make(fn: NeuronHook):
        def pre_hook(module, args):
            replaced = fn(args[0])
            if replaced is None:
                return None
            return (replaced, *args[1:])

        return pre_hook

    try:
        for layer, fn in hooks.items():
            handles.append(lm.down_proj(layer).register_forward_pre_hook(make(fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(lm: LanguageModel, position: int | None = None,
            layers: list[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Record the neurons of ``layers`` (default all) at ``position`` (default all positions).

    Yields a dict filled during the forward pass: layer -> ``[batch, neurons]`` (or
    ``[batch, seq, neurons]`` when ``position`` is None), detached.
    """
    store: dict[int, torch.Tensor] = {}

    def make(layer: int) -> NeuronHook:
        def record(x: torch.Tensor) -> None:
            store[layer] = (x if position is None else x[:, position]).detach()

        return record

    layers = list(range(lm.n_layers)) if layers is None else layers
    with neuron_hooks(lm, {layer: make(layer) for layer in layers}):
        yield store

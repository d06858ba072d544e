"""Hooks on the neurons (``blocks.{l}.mlp.hook_post``): read or rewrite them, always undone.

A hook function receives the activations fed to the FFN output projection of one layer,
shape ``[batch, seq, neurons]``, and returns the tensor to use instead (or ``None`` to leave them
as they are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from mkn.models.families import hook_layer
from mkn.models.loading import LanguageModel

NeuronHook = Callable[[torch.Tensor], torch.Tensor | None]


@contextmanager
def neuron_hooks(lm: LanguageModel, hooks: Mapping[int | str, NeuronHook]) -> Iterator[None]:
    """Install ``hooks`` on the neurons for the duration of the block; keys are layers or
    TransformerLens names (``blocks.{l}.mlp.hook_post``), values functions as above."""
    handles = []

    def make(fn: NeuronHook):
        def pre_hook(module, args):
            if args[0].dim() != 3:
                raise ValueError(
                    f"{lm.name}: the FFN output projection ({lm.adapter.down_proj}) receives a "
                    f"tensor of shape {tuple(args[0].shape)}, not [batch, seq, neurons]; mkn "
                    "needs an FFN that keeps the sequence axis (OPT's flattens it)")
            replaced = fn(args[0])
            if replaced is None:
                return None
            return (replaced, *args[1:])

        return pre_hook

    try:
        for hook, fn in hooks.items():
            handles.append(lm.down_proj(hook_layer(hook)).register_forward_pre_hook(make(fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(lm: LanguageModel, position: int | None = None,
            layers: list[int | str] | None = None) -> Iterator[dict[int | str, torch.Tensor]]:
    """Record the neurons of ``layers`` (default all; layer numbers or TransformerLens names
    ``blocks.{l}.mlp.hook_post``) at ``position`` (default all positions).

    Yields a dict filled during the forward pass, keyed as ``layers`` names them:
    ``[batch, neurons]`` (or ``[batch, seq, neurons]`` when ``position`` is None), detached.
    """
    store: dict[int | str, torch.Tensor] = {}

    def make(key: int | str) -> NeuronHook:
        def record(x: torch.Tensor) -> None:
            store[key] = (x if position is None else x[:, position]).detach()

        return record

    keys = list(range(lm.n_layers)) if layers is None else list(layers)
    if len({hook_layer(key) for key in keys}) != len(keys):
        raise ValueError(f"capture: a layer named twice in {keys}")
    with neuron_hooks(lm, {key: make(key) for key in keys}):
        yield store


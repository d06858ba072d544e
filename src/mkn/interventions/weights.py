"""Weight edits on the FFN output projection of given neurons, saved and undone exactly.

Neuron ``(l, i)`` writes the vector ``v = W_out[:, i]`` into the residual stream (``nn.Linear``
weight ``[hidden, neurons]``; a GPT-2/mGPT ``Conv1D`` stores it transposed, ``W[i, :]``).

- ``erase``: ``v <- 0`` (Dai et al. 2022, erasing knowledge).
- ``dai``: ``v <- v - lambda1 * s * e_old + lambda2 * s * e_new`` (Dai et al.'s update of the
  "value slot"), with ``e`` the output (unembedding) vector of the object's first token and
  ``s = ||v|| / ||e||``, so the lambdas are *norm-scaled* (relative to the neuron's own vector)
  and mean the same in every model.
- ``eleuther``: ``v <- v - 2 e_old + 2 e_new`` (EleutherAI knowledge-neurons' variant, raw x2).

Every edit keeps the original slices; ``undo()`` restores them bit for bit, and ``save()`` /
``WeightEdit.load()`` persist an edit (original and edited values) as safetensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mkn.attribution.queries import encode
from mkn.attribution.scoring import RowEdit
from mkn.interventions.activation import group_neurons
from mkn.models.families import Neuron
from mkn.models.loading import LanguageModel


def value_vectors(lm: LanguageModel, layer: int) -> torch.Tensor:
    """A ``[neurons, hidden]`` *view* of layer ``layer``'s output-projection vectors."""
    weight = lm.down_proj(layer).weight
    return weight if lm.adapter.conv1d else weight.T


def object_vector(lm: LanguageModel, prompt: str, target: str) -> torch.Tensor:
    """The unembedding vector of ``target``'s first token after ``prompt``."""
    token = encode(lm, prompt, target).target_ids[0]
    return lm.model.get_output_embeddings().weight[token].detach().clone()


@dataclass
class WeightEdit:
    """An applied (or applicable) edit: per layer, neuron indices, original and new vectors."""

    lm: LanguageModel
    originals: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    edited: dict[int, torch.Tensor] = field(default_factory=dict)
    applied: bool = False

    def apply(self) -> WeightEdit:
        with torch.no_grad():
            for layer, (indices, _) in self.originals.items():
                value_vectors(self.lm, layer)[indices] = self.edited[layer]
        self.applied = True
        return self

    def undo(self) -> None:
        """Restore the original vectors exactly."""
        with torch.no_grad():
            for layer, (indices, original) in self.originals.items():
                value_vectors(self.lm, layer)[indices] = original
        self.applied = False

    def save(self, path: str | Path) -> None:
        tensors = {}
        for layer, (indices, original) in self.originals.items():
            tensors[f"{layer}.indices"] = indices
            tensors[f"{layer}.original"] = original
            tensors[f"{layer}.edited"] = self.edited[layer]
        save_file(tensors, str(path), metadata={"model": self.lm.name})

    @classmethod
    def load(cls, lm: LanguageModel, path: str | Path) -> WeightEdit:
        """An edit saved with :meth:`save` (not applied yet)."""
        tensors = load_file(str(path))
        layers = sorted({int(key.split(".")[0]) for key in tensors})
        originals = {layer: (tensors[f"{layer}.indices"], tensors[f"{layer}.original"])
                     for layer in layers}
        return cls(lm, originals, {layer: tensors[f"{layer}.edited"] for layer in layers})


def _edit(lm: LanguageModel, neurons: Iterable[Sequence[int]], update) -> WeightEdit:
    edit = WeightEdit(lm)
    for layer, indices in group_neurons(lm, neurons).items():
        index = torch.tensor(indices)
        original = value_vectors(lm, layer)[index].detach().clone()
        edit.originals[layer] = (index, original)
        edit.edited[layer] = update(original)
    return edit.apply()


def erase(lm: LanguageModel, neurons: Iterable[Neuron]) -> WeightEdit:
    """Zero the neurons' output vectors."""
    return _edit(lm, neurons, torch.zeros_like)


def _object_update(lm: LanguageModel, prompt: str, old: str, new: str, variant: str,
                   lambda_old: float, lambda_new: float):
    """The function mapping output vectors ``[k, hidden]`` to their edited values."""
    e_old, e_new = object_vector(lm, prompt, old), object_vector(lm, prompt, new)
    if variant == "dai":
        def update(v: torch.Tensor) -> torch.Tensor:
            scale_old = v.norm(dim=-1, keepdim=True) / e_old.norm()
            scale_new = v.norm(dim=-1, keepdim=True) / e_new.norm()
            return v - lambda_old * scale_old * e_old + lambda_new * scale_new * e_new
    elif variant == "eleuther":
        def update(v: torch.Tensor) -> torch.Tensor:
            return v - 2 * e_old + 2 * e_new
    else:
        raise ValueError(f"unknown edit variant {variant!r}; choose dai or eleuther")
    return update


def replace_object(lm: LanguageModel, neurons: Iterable[Neuron], prompt: str, old: str, new: str,
                   variant: str = "dai", lambda_old: float = 1.0,
                   lambda_new: float = 1.0) -> WeightEdit:
    """Move the fact ``prompt -> old`` to ``new`` by editing the neurons' output vectors."""
    return _edit(lm, neurons, _object_update(lm, prompt, old, new, variant, lambda_old,
                                             lambda_new))


def replace_object_rows(lm: LanguageModel, neuron_sets: Iterable[Iterable[Neuron]], prompt: str,
                        old: str, new: str, variant: str = "dai", lambda_old: float = 1.0,
                        lambda_new: float = 1.0) -> list[RowEdit]:
    """:func:`replace_object` on each of ``neuron_sets``, as row edits of
    :func:`mkn.attribution.scoring.score_rows` (``{layer: (indices, change of their output
    vectors)}``, float32); nothing is written, so many edits are measured in one batched pass."""
    update = _object_update(lm, prompt, old, new, variant, lambda_old, lambda_new)
    rows = []
    for neurons in neuron_sets:
        row = {}
        for layer, indices in group_neurons(lm, neurons).items():
            original = value_vectors(lm, layer)[torch.tensor(indices)].detach().float()
            row[layer] = (list(indices), update(original) - original)
        rows.append(row)
    return rows


@contextmanager
def edited(edit: WeightEdit) -> Iterator[WeightEdit]:
    """Keep ``edit`` applied inside the block; always undone after, even on error."""
    if not edit.applied:
        edit.apply()
    try:
        yield edit
    finally:
        edit.undo()

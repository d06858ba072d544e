"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", §2.1).

Three runs of a causal LM on a prompt whose subject is known:

1. clean: p(o) of the object's first token;
2. corrupted: Gaussian noise ``N(0, (noise * sigma)^2)`` added to the input embeddings of the
   subject's tokens (``sigma``: the standard deviation of the embedding module's outputs over
   the vocabulary; ROME uses ``noise = 3``), ``samples`` draws: p*(o), the mean over draws;
3. corrupted-with-restoration: the same draws, with one state set back to its clean value:
   the residual stream after block ``l`` (``hidden``), the MLP output of block ``l`` (``mlp``:
   the output of its FFN output projection, whose inputs are the neurons) or the attention
   output (``attn``), at one position ``t``; ``window`` > 1 restores the MLP or attention
   output of ``window`` consecutive layers around ``l`` at once (ROME: 10).

The *indirect effect* of a state is ``p_restored(o) - p*(o)``, averaged over draws; the grid
``[layers, positions]`` per kind is :attr:`Trace.effects`. The (layer, draw, position) rows of
a kind run in batched forward passes of several layers each (plus one clean and one corrupted
pass); ``at`` restores only the positions a caller reads (the rest of the grid is NaN).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from mkn.attribution.noise import add_noise, noise_draws
from mkn.attribution.queries import encode, split_prompt
from mkn.attribution.scoring import head_at
from mkn.models.loading import LanguageModel, uses_model

KINDS = ("hidden", "mlp", "attn")
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


@dataclass
class Trace:
    """The causal trace of one query (module docstring)."""

    prompt: str
    target: str
    subject: str
    tokens: list[str]
    subject_positions: list[int]
    clean_prob: float  # p(o), o the target's first token
    corrupted_prob: float  # p*(o), mean over the noise draws
    effects: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> [layers, positions]
    noise: float = 3.0
    samples: int = 10
    window: int = 1

    def peak(self, kind: str = "mlp") -> tuple[int, int, float]:
        """``(layer, position, indirect effect)`` of the largest effect of ``kind``."""
        grid = self.effects[kind].nan_to_num(-math.inf)  # NaN: not traced
        flat = int(grid.argmax())
        return flat // grid.shape[1], flat % grid.shape[1], float(grid.flatten()[flat])

    def layer_profile(self, kind: str = "mlp", position: int | None = None) -> torch.Tensor:
        """Per layer, the indirect effect at ``position`` (default: the subject's last token),
        ``[layers]``: what ROME plots as "the MLP at the last subject token"."""
        position = self.subject_positions[-1] if position is None else position
        return self.effects[kind][:, position]


def subject_positions(lm: LanguageModel, before: str, subject: str) -> list[int]:
    """The token positions of ``subject`` in the tokens of ``before`` (the prompt's text before
    the object, special tokens included): the tokens added by the text up to the subject's end
    beyond those of the text up to its start (its last occurrence)."""
    start = before.rfind(subject)
    if not subject or start < 0:
        raise ValueError(f"subject {subject!r} is not in the prompt {before!r}")
    tokenizer = lm.tokenizer

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    first, last = count(before[:start].rstrip()) if before[:start].strip() else count(""), \
        count(before[:start + len(subject)])
    if last <= first:
        raise ValueError(f"subject {subject!r} has no tokens of its own in {before!r}")
    return list(range(first, last))


def attention_of(block: torch.nn.Module) -> torch.nn.Module:
    """The attention module of a block (its child named self_attn, attn, attention or
    self_attention)."""
    for name in ATTENTION_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"no attention module among {', '.join(ATTENTION_NAMES)} in "
                     f"{type(block).__name__}")


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _module(lm: LanguageModel, kind: str, layer: int) -> torch.nn.Module:
    if kind == "hidden":
        return lm.blocks[layer]
    if kind == "mlp":
        return lm.down_proj(layer)
    return attention_of(lm.blocks[layer])


@contextmanager
def _hooks(modules_and_fns) -> Iterator[None]:
    with ExitStack() as stack:
        for module, fn in modules_and_fns:
            handle = module.register_forward_hook(fn)
            stack.callback(handle.remove)
        yield


POINTS = ("subject", "prediction")  # symbolic positions: the subject's last token, the last


def traced_positions(asked: Sequence[int | str] | None, length: int, subject: Sequence[int],
                     last: int) -> list[int]:
    """The sorted token positions of ``asked`` (ints, or ``"subject"``: the subject's last
    token, ``"prediction"``: the prediction position); every position when None."""
    if asked is None:
        return list(range(length))
    named = {"subject": subject[-1], "prediction": last}
    out = set()
    for point in asked:
        if isinstance(point, str):
            if point not in named:
                raise ValueError(f"unknown position {point!r}; use an int or one of "
                                 f"{', '.join(POINTS)}")
            out.add(named[point])
        elif not 0 <= point < length:
            raise ValueError(f"position {point} is outside the prompt's {length} tokens")
        else:
            out.add(int(point))
    if not out:
        raise ValueError("no positions to trace")
    return sorted(out)


@uses_model
def causal_trace(lm: LanguageModel, prompt: str, target: str, subject: str,
                 kinds: Sequence[str] = KINDS, samples: int = 10, noise: float = 3.0,
                 window: int = 1, seed: int = 0,
                 at: Mapping[str, Sequence[int | str]] | None = None,
                 rows_per_pass: int = 256) -> Trace:
    """The causal trace of ``prompt`` -> ``target`` with ``subject`` corrupted (module
    docstring). Causal LMs only; the target's first token is the one traced.

    ``at`` (kind -> positions, :func:`traced_positions`) restores only those positions of a
    kind (the grid is NaN elsewhere): what a caller reads, not the whole grid (issue 26). The
    rows of several layers share a pass, up to ``rows_per_pass`` rows."""
    if not lm.causal:
        raise ValueError(f"{lm.name} is a masked LM: causal tracing needs a causal LM")
    unknown = [kind for kind in [*kinds, *(at or {})] if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be among {', '.join(KINDS)}, got {list(kinds)}")
    if samples < 1 or window < 1 or noise <= 0 or rows_per_pass < 1:
        raise ValueError("samples, window and rows_per_pass must be >= 1 and noise > 0")
    step = encode(lm, prompt, target).steps[0]
    before, _ = split_prompt(prompt, target)
    positions = subject_positions(lm, before, subject)
    ids = torch.tensor(step.input_ids, device=lm.device)
    length, last = len(step.input_ids), step.position
    if positions[-1] > last:
        raise ValueError(f"subject {subject!r} lies after the prediction position")
    draws = noise_draws(lm, samples, len(positions), noise, seed)

    def prob(rows: int, hooks) -> torch.Tensor:
        on_last = torch.arange(rows, device=lm.device), torch.full((rows,), last,
                                                                   device=lm.device)
        with torch.no_grad(), _hooks(hooks), head_at(lm, *on_last):
            logits = lm.model(input_ids=ids[None].expand(rows, -1).contiguous()).logits[0]
        return torch.softmax(logits.float(), -1)[:, step.target_id]

    clean: dict[tuple[str, int], torch.Tensor] = {}

    def record(kind: str, layer: int):
        def hook(module, args, output):
            clean[(kind, layer)] = _first(output)[0].detach()

        return hook

    recorders = [(_module(lm, kind, layer), record(kind, layer)) for kind in kinds
                 for layer in range(lm.n_layers)]
    clean_prob = float(prob(1, recorders)[0])
    embed = lm.model.get_input_embeddings()
    corrupted = prob(samples, [(embed, add_noise(lm, positions, draws))])
    trace = Trace(prompt, target, subject, lm.tokenizer.convert_ids_to_tokens(list(
        step.input_ids)), positions, clean_prob, float(corrupted.mean()), noise=noise,
        samples=samples, window=window)

    def restore(kind: str, layer: int, rows: torch.Tensor, where: torch.Tensor):
        state = clean[(kind, layer)]

        def hook(module, args, output):
            out = _first(output).clone()
            out[rows, where] = state[where]
            return _replace_first(output, out)

        return hook

    for kind in kinds:
        traced = traced_positions((at or {}).get(kind), length, positions, last)
        grid = torch.full((lm.n_layers, length), math.nan)
        per_layer = len(traced) * samples  # rows of one layer: (draw, position)
        where = torch.tensor(traced, device=lm.device).repeat(samples)
        noise_rows = draws.repeat_interleave(len(traced), dim=0)
        step_layers = max(1, rows_per_pass // per_layer)
        for first in range(0, lm.n_layers, step_layers):
            group = range(first, min(first + step_layers, lm.n_layers))
            hooks = [(embed, add_noise(lm, positions, noise_rows.repeat(len(group), 1, 1)))]
            for g, layer in enumerate(group):
                span = [layer] if kind == "hidden" or window == 1 else [
                    x for x in range(layer - window // 2, layer - window // 2 + window)
                    if 0 <= x < lm.n_layers]
                rows = torch.arange(g * per_layer, (g + 1) * per_layer, device=lm.device)
                hooks += [(_module(lm, kind, x), restore(kind, x, rows, where)) for x in span]
            restored = prob(len(group) * per_layer, hooks).view(len(group), samples,
                                                               len(traced)).mean(1)
            grid[first:group.stop, traced] = restored.float().cpu() - trace.corrupted_prob
        trace.effects[kind] = grid
    return trace

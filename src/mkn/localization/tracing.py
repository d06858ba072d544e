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
``[layers, positions]`` per kind is :attr:`Trace.effects`. All (position, draw) rows of one
layer run in one batched forward pass: ``kinds x layers`` passes of ``positions x samples`` rows
(plus one clean and one corrupted pass).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
        grid = self.effects[kind]
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


@uses_model
def causal_trace(lm: LanguageModel, prompt: str, target: str, subject: str,
                 kinds: Sequence[str] = KINDS, samples: int = 10, noise: float = 3.0,
                 window: int = 1, seed: int = 0) -> Trace:
    """The causal trace of ``prompt`` -> ``target`` with ``subject`` corrupted (module
    docstring). Causal LMs only; the target's first token is the one traced."""
    if not lm.causal:
        raise ValueError(f"{lm.name} is a masked LM: causal tracing needs a causal LM")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be among {', '.join(KINDS)}, got {list(kinds)}")
    if samples < 1 or window < 1 or noise <= 0:
        raise ValueError("samples and window must be >= 1 and noise > 0")
    step = encode(lm, prompt, target).steps[0]
    before, _ = split_prompt(prompt, target)
    positions = subject_positions(lm, before, subject)
    ids = torch.tensor(step.input_ids, device=lm.device)
    length, last = len(step.input_ids), step.position
    if positions[-1] > last:
        raise ValueError(f"subject {subject!r} lies after the prediction position")
    draws = noise_draws(lm, samples, len(positions), noise, seed)

    def corrupt(rows_per_draw: int):
        return add_noise(lm, positions, draws, rows_per_draw)  # row r: draw r // rows_per_draw

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
    corrupted = prob(samples, [(embed, corrupt(1))])
    trace = Trace(prompt, target, subject, lm.tokenizer.convert_ids_to_tokens(list(
        step.input_ids)), positions, clean_prob, float(corrupted.mean()), noise=noise,
        samples=samples, window=window)
    row_positions = torch.arange(length, device=lm.device).repeat(samples)  # row: (draw, t)
    rows = torch.arange(length * samples, device=lm.device)
    for kind in kinds:
        grid = torch.zeros(lm.n_layers, length)
        for layer in range(lm.n_layers):
            span = [layer] if kind == "hidden" or window == 1 else [
                x for x in range(layer - window // 2, layer - window // 2 + window)
                if 0 <= x < lm.n_layers]

            def restore(at: int, kind: str = kind):
                state = clean[(kind, at)]

                def hook(module, args, output):
                    out = _first(output).clone()
                    out[rows, row_positions] = state[row_positions]
                    return _replace_first(output, out)

                return hook

            hooks = [(embed, corrupt(length)),
                     *[(_module(lm, kind, at), restore(at)) for at in span]]
            restored = prob(length * samples, hooks).view(samples, length).mean(0)
            grid[layer] = restored.float().cpu() - trace.corrupted_prob
        trace.effects[kind] = grid
    return trace

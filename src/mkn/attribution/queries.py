"""Turning (prompt, target) into token-level prediction steps.

A prompt is text with ``[Y]`` where the object goes, or with the object implied at the end.

- Causal LMs read the text before ``[Y]``; this makes SOV languages (ja/ko/hu), where the object
  sits mid-sentence, work.
- Masked LMs get one mask per target token in place of ``[Y]``.

The target's tokens are its *continuation* tokens: tokenize the prefix and prefix+object and take
what the second adds (``Paris`` after ``The capital of France is`` is `` Paris``; ``巴黎`` after
``法国的首都是`` has no space; a bare space token that a tokenizer puts before the object, as
Gemma's does before many Korean words, is moved to the prompt). Multi-token targets use teacher
forcing: step ``i`` predicts target token ``i`` given the prompt and the gold tokens ``< i``
(masked LMs: the earlier masks are filled with the gold tokens, the later ones stay masked).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from mkn.models.loading import LanguageModel

OBJECT = "[Y]"
SUBJECT = "[X]"


@dataclass(frozen=True)
class PredictionStep:
    """One teacher-forced prediction: read ``input_ids``, predict ``target_id`` at ``position``.

    ``query_positions`` are the positions of the query's own tokens (no special tokens, no target
    or mask tokens): the positions AMIG replaces one at a time to build its baseline.
    """

    input_ids: tuple[int, ...]
    position: int
    target_id: int
    query_positions: tuple[int, ...]


@dataclass(frozen=True)
class EncodedQuery:
    prompt: str
    target: str
    target_ids: tuple[int, ...]
    target_tokens: tuple[str, ...]
    steps: tuple[PredictionStep, ...]


_NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def spaceless(char: str) -> bool:
    name = unicodedata.name(char, "")
    return any(name.startswith(script) for script in _NO_SPACE_SCRIPTS) or "IDEOGRAPH" in name


def split_prompt(prompt: str, target: str) -> tuple[str, str]:
    """``(text before the object, text after it)``; adds a joining space for an implied object."""
    if SUBJECT in prompt:
        raise ValueError(f"prompt {prompt!r} still contains {SUBJECT}: fill in the subject first")
    if prompt.count(OBJECT) > 1:
        raise ValueError(f"prompt {prompt!r} contains {OBJECT} more than once")
    if OBJECT in prompt:
        before, after = prompt.split(OBJECT)
        return before, after
    if not prompt or prompt[-1].isspace() or spaceless(prompt[-1]) or (
        target and (spaceless(target[0]) or target[0].isspace())  # " Paris" brings its own
    ):
        return prompt, ""
    return prompt + " ", ""


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def continuation(tokenizer, before: str, target: str, special: bool) -> tuple[list[int], list[int]]:
    """``(prompt_ids, target_ids)`` such that prompt_ids + target_ids tokenizes ``before+target``.

    The prompt is ``before`` without trailing spaces. When the tokenizer merges across the
    boundary, the prompt is the longest common token prefix of the two tokenizations.
    """
    prefix = before.rstrip()
    prefix_ids = _ids(tokenizer, prefix, special)
    full_ids = _ids(tokenizer, before + target, special)
    if special:  # drop special tokens appended at the end (e.g. [SEP], </s>)
        special_ids = set(getattr(tokenizer, "all_special_ids", []))
        for ids in (prefix_ids, full_ids):
            while len(ids) > 1 and ids[-1] in special_ids:
                ids.pop()
    common = 0
    for a, b in zip(prefix_ids, full_ids, strict=False):
        if a != b:
            break
        common += 1
    return full_ids[:common], full_ids[common:]


# No token of a real vocabulary spans this many characters: a prompt longer than this many
# characters per position of the model's context cannot fit, and is refused before tokenizing
# (a 10 MB prompt would otherwise tokenize and run for minutes: issue 21).
MAX_CHARS_PER_TOKEN = 100


def encode(lm: LanguageModel, prompt: str, target: str) -> EncodedQuery:
    """Encode a query for ``lm``; clear errors for what cannot work."""
    tokenizer = lm.tokenizer
    if not target or not target.strip():
        raise ValueError(f"target {target!r} is empty")
    context = lm.max_length
    if context is not None and len(prompt) + len(target) > MAX_CHARS_PER_TOKEN * context:
        raise ValueError(f"prompt of {len(prompt):,} characters cannot fit the context of "
                         f"{lm.name} ({context:,} tokens); shorten it")
    before, after = split_prompt(prompt, target)
    if lm.causal and not before.strip():
        raise ValueError(f"prompt {prompt!r} leaves nothing before the object: a causal LM "
                         "would score it from the start token alone; put some context before "
                         f"{OBJECT}")
    if lm.causal:
        prompt_ids, target_ids = continuation(tokenizer, before, target, special=True)
        # a bare space token before the object (" 켄트주" -> "▁", "켄", ...) is no knowledge:
        # it joins the context instead of being scored as the object's first token
        while len(target_ids) > 1 and not tokenizer.decode(target_ids[:1]).strip():
            prompt_ids.append(target_ids.pop(0))
        if not target_ids:
            raise ValueError(f"target {target!r} tokenizes to nothing after prompt {prompt!r}")
        if not prompt_ids:
            raise ValueError(f"prompt {prompt!r} tokenizes to nothing; a causal LM needs context")
        special = set(getattr(tokenizer, "all_special_ids", []))
        steps = []
        for i, target_id in enumerate(target_ids):
            input_ids = tuple(prompt_ids + target_ids[:i])
            query_positions = tuple(p for p, t in enumerate(prompt_ids) if t not in special)
            steps.append(PredictionStep(input_ids, len(input_ids) - 1, target_id, query_positions))
    else:
        if OBJECT not in prompt:
            raise ValueError(f"a masked LM needs {OBJECT} in the prompt to place the mask(s): "
                             f"{prompt!r}")
        mask_token = tokenizer.mask_token
        if mask_token is None:
            raise ValueError(f"the tokenizer of {lm.name} has no mask token")
        _, target_ids = continuation(tokenizer, before, target, special=False)
        if not target_ids:
            raise ValueError(f"target {target!r} tokenizes to nothing after prompt {prompt!r}")
        masked = before + mask_token * len(target_ids) + after
        ids = _ids(tokenizer, masked, special=True)
        mask_positions = [p for p, t in enumerate(ids) if t == tokenizer.mask_token_id]
        if len(mask_positions) != len(target_ids):
            raise ValueError(f"placing {len(target_ids)} mask(s) for {target!r} in {prompt!r} "
                             f"gave {len(mask_positions)} mask tokens")
        special = set(getattr(tokenizer, "all_special_ids", []))
        query_positions = tuple(p for p, t in enumerate(ids) if t not in special)
        steps = []
        for i, (position, target_id) in enumerate(zip(mask_positions, target_ids, strict=True)):
            filled = list(ids)
            for p, t in zip(mask_positions[:i], target_ids[:i], strict=True):
                filled[p] = t
            steps.append(PredictionStep(tuple(filled), position, target_id, query_positions))
    longest = max(len(s.input_ids) for s in steps)
    if lm.max_length is not None and longest > lm.max_length:
        raise ValueError(f"prompt is {longest} tokens long, longer than the context of "
                         f"{lm.name} ({lm.max_length} tokens)")
    tokens = tuple(tokenizer.convert_ids_to_tokens(list(target_ids)))
    return EncodedQuery(prompt, target, tuple(target_ids), tokens, tuple(steps))


def encoding_problems(lm: LanguageModel, facts, languages: list[str]) -> dict[str, str]:
    """``fact id -> why one of its queries cannot be scored by lm`` (the first problem: language,
    prompt and reason), for facts with a query :func:`encode` refuses (a target that tokenizes to
    nothing, a prompt longer than the context, an object first for a causal LM...). Tokenizer
    work only: run it before any compute so that a bad fact fails (or, lenient, is skipped) at
    once and by name."""
    problems = {}
    for fact in facts:
        for lang in languages:
            target = fact.language(lang).object
            problem = None
            for prompt in fact.prompts(lang):
                try:
                    encode(lm, prompt, target)
                except ValueError as error:
                    problem = f"{lang}: {error}"
                    break
            if problem:
                problems[fact.id] = problem
                break
    return problems

"""Locate a fact's knowledge neurons in every language: one call shape for every method.

``locate_fact(lm, fact, languages, config)`` attributes every query of every language with
``mkn.attribute`` and aggregates:

- ``ig`` / ``amig``: per language, coarse neurons per query (``score > t_l * max``) refined
  across the language's queries (kept if found in more than a fraction ``p`` of them);
  language-agnostic neurons are the intersection of the languages' sets (and the soft version,
  present in at least a fraction ``q`` of languages).
- ``matrice``: per language the uncertainty lower bound ``s^l`` (see ``matrice.py``); knowledge
  neurons ``s^l > t_l * max s^l``; language-agnostic neurons pass ``score > t * max score`` on the
  cross-language score and are knowledge neurons in all (strict) or a fraction ``q`` (soft) of
  the languages.

Only knowledge the model has: each language of the fact is first probed
(:mod:`mkn.localization.knowledge`) and located only where the model knows the fact under
``config.known`` (default ``auto``: the gold object ranks first among the candidates where the
data has them, else greedy decoding gets it); the other languages are listed in
``FactResult.skipped``. ``known="any"`` locates every language (Dai et al., AMIG).
Language-agnostic sets need at least two located languages.

Generic neurons (:mod:`mkn.localization.generic`), when a list is given, are left out of the
knowledge-neuron sets (and so of the language-agnostic sets) and of the degenerate-neuron
candidates, and listed per language in ``LanguageResult.generic``.

Degenerate neurons (AMIG Algorithm 1) are searched among each language's top-k neurons.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mkn.attribution.api import (
    Attribution,
    Progress,
    attribute,
    method_names,
    neuron_frame,
    progress_printer,
)
from mkn.attribution.rules import RULES
from mkn.localization import matrice
from mkn.localization.degenerate import DegenerateResult, degenerate_neurons
from mkn.localization.generic import DEFAULT_THRESHOLD, GenericNeurons
from mkn.localization.knowledge import CRITERIA, Knowledge, KnownItems, known_items
from mkn.localization.neurons import (
    Neuron,
    coarse_neurons,
    refine,
    shared_neurons,
    threshold_for,
)
from mkn.localization.relations import DEFAULT_THRESHOLD as RELATION_THRESHOLD
from mkn.localization.relations import LeftOut, RelationNeurons
from mkn.models.loading import LanguageModel

if TYPE_CHECKING:
    import pandas

def locate_methods() -> tuple[str, ...]:
    """Every registered attribution method, and ``matrice`` (which aggregates one of them)."""
    return (*method_names(), "matrice")


class LocateConfig(BaseModel):
    """Every knob of localization, validated; saved next to the results."""

    model_config = ConfigDict(extra="forbid")

    method: str = "amig"
    steps: int = Field(20, ge=1)
    rule: str = "left"
    thresholds: dict[str, float] = Field(default_factory=dict,
                                         description="per-language t; '*' for the rest")
    max_queries: int | None = Field(None, ge=1, description="use the first N queries per "
                                    "language (cost control); None: all")
    refine_p: float = Field(0.3, ge=0, le=1)
    agnostic_fraction: float = Field(0.5, gt=0, le=1, description="q of the soft version")
    agnostic_threshold: float = Field(0.2, ge=0, le=1, description="t on MATRICE's score")
    matrice_lambda: float = Field(1.0, ge=0)
    matrice_baseline: str = Field("amig", description="per-query method MATRICE aggregates "
                                  "(any registered one; AMIG by default)")
    matrice_uniform: bool = False
    degenerate: bool = True
    degenerate_top_k: int = Field(20, ge=2)
    t_low: float = Field(0.2, ge=0, le=1)
    t_high: float = Field(0.25, ge=0, le=1)
    batch_size: int | None = Field(None, ge=1)
    known: str = Field("auto", description="which items to locate: auto, rank, greedy or any "
                       "(mkn.localization.knowledge)")
    generic_share: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="share of other "
                                 "relations' reference facts a neuron serves from which it is "
                                 "generic (mkn.localization.generic)")
    relation_share: float = Field(RELATION_THRESHOLD, gt=0, le=1, description="share of its "
                                  "relation's reference facts a neuron serves from which it is "
                                  "a relation neuron (mkn.localization.relations)")

    @field_validator("method", "rule", "matrice_baseline", "known")
    @classmethod
    def _known(cls, value: str, info) -> str:
        choices = {"method": locate_methods(), "rule": RULES, "matrice_baseline": method_names(),
                   "known": CRITERIA}[info.field_name]
        if value not in choices:
            raise ValueError(f"unknown {info.field_name} {value!r}; choose one of "
                             f"{', '.join(choices)}")
        return value

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        for lang, t in value.items():
            if not 0 <= t <= 1:
                raise ValueError(f"threshold for {lang!r} must be in [0, 1], got {t}")
        return value

    @property
    def attribution_method(self) -> str:
        """The per-query IG method (MATRICE: ``matrice_baseline``, AMIG's by default)."""
        return self.matrice_baseline if self.method == "matrice" else self.method


@dataclass
class LanguageResult:
    """Knowledge neurons of one fact in one language."""

    language: str
    target: str
    prompts: list[str]
    probs: list[float]
    correct: list[bool]
    neurons: list[Neuron]
    scores: torch.Tensor  # [layers, neurons]: mean IG (ig/amig) or s^l (matrice)
    confidence: float
    seconds: float = 0.0  # attribution + degenerate search of this language
    attribution_seconds: float = 0.0  # computing its attributions, even when taken from a cache
    known: bool = False  # the model knows the fact here (mkn.localization.knowledge)
    knowledge: Knowledge | None = None  # the probe of every query of the language
    generic: list[Neuron] = field(default_factory=list)  # knowledge neurons left out as generic
    relation: list[Neuron] = field(default_factory=list)  # left out as relation neurons
    query_neurons: list[list[Neuron]] = field(default_factory=list)  # coarse set of each query

    def neuron_records(self, neurons: list[Neuron] | None = None) -> list[list[float]]:
        return [[layer, index, round(float(self.scores[layer, index]), 6)]
                for layer, index in (self.neurons if neurons is None else neurons)]


@dataclass
class FactResult:
    fact_id: str
    relation: str
    languages: dict[str, LanguageResult]
    language_agnostic: list[Neuron]
    soft_language_agnostic: list[Neuron]
    degenerate: dict[str, DegenerateResult] = field(default_factory=dict)
    combined_scores: torch.Tensor | None = None
    skipped: dict[str, Knowledge] = field(default_factory=dict)  # languages not known: not located

    def to_frame(self, every_neuron: bool = False) -> pandas.DataFrame:
        """Long format, one row per (located language, neuron): ``fact``, ``relation``,
        ``language``, ``layer``, ``index``, ``hook``, ``score`` and ``rank`` (in that
        language's scores, 1 = top), ``knowledge`` (in the language's knowledge-neuron set),
        ``language_agnostic``, ``soft_language_agnostic``, ``degenerate`` (in one of the
        language's degenerate pairs), ``generic`` (left out as generic) and ``relation`` (left
        out as a relation neuron of the fact's relation: its relation set). Only the
        knowledge neurons unless ``every_neuron``. Needs pandas."""
        import pandas as pd

        strict, soft = set(self.language_agnostic), set(self.soft_language_agnostic)
        frames = []
        for lang, result in self.languages.items():
            frame = neuron_frame(result.scores, fact=self.fact_id, relation=self.relation,
                                 language=lang)
            pairs = self.degenerate[lang].pairs if lang in self.degenerate else []
            flags = {"knowledge": set(result.neurons), "language_agnostic": strict,
                     "soft_language_agnostic": soft,
                     "degenerate": {n for pair in pairs for n in pair},
                     "generic": set(result.generic), "relation": set(result.relation)}
            neurons = list(zip(frame["layer"], frame["index"], strict=True))
            for name, members in flags.items():
                frame[name] = [n in members for n in neurons]
            frames.append(frame if every_neuron else frame[frame["knowledge"]])
        if not frames:
            return neuron_frame(torch.zeros(0, 0), fact=[], relation=[], language=[]).assign(
                **{name: pd.Series(dtype=bool) for name in (
                    "knowledge", "language_agnostic", "soft_language_agnostic", "degenerate",
                    "generic", "relation")})
        return pd.concat(frames, ignore_index=True)


AttributionCache = dict[tuple, Attribution]


def attribution_key(prompt: str, target: str, config: LocateConfig) -> tuple:
    """The cache key of one query's attribution under ``config`` (shared by every method that
    uses the same IG baseline, steps and rule)."""
    return (prompt, target, config.attribution_method, config.steps, config.rule)


def _attribute(lm: LanguageModel, prompt: str, target: str, config: LocateConfig,
               cache: AttributionCache | None, say: Progress | None = None) -> Attribution:
    key = attribution_key(prompt, target, config)
    if cache is not None and key in cache:
        return cache[key]
    result = attribute(lm, prompt, target, method=config.attribution_method, steps=config.steps,
                       rule=config.rule, batch_size=config.batch_size)
    if say:
        say(f"{prompt!r} -> {target!r} attributed ({config.attribution_method}) in "
            f"{result.seconds:.1f} s")
    if cache is not None:
        cache[key] = result
    return result


def _language(lm: LanguageModel, lang: str, prompts: list[str], target: str,
              config: LocateConfig, cache: AttributionCache | None = None,
              generic: GenericNeurons | None = None,
              say: Progress | None = None, relations: RelationNeurons | None = None,
              relation: str = "") -> tuple[LanguageResult, list[Attribution]]:
    start = time.perf_counter()
    attributions = [
        _attribute(lm, prompt, target, config, cache,
                   say and (lambda line, i=i: say(f"{lang} query {i}/{len(prompts)}: {line}")))
        for i, prompt in enumerate(prompts, 1)]
    t = threshold_for(lang, config.thresholds)
    confidences = [a.confidence for a in attributions]
    per_query = [coarse_neurons(a.scores, t) for a in attributions]
    if config.method == "matrice":
        scores = matrice.language_score([a.scores for a in attributions], confidences,
                                        config.matrice_lambda, config.matrice_uniform)
        neurons = coarse_neurons(scores, t)
    else:
        scores = torch.stack([a.scores for a in attributions]).mean(0)
        neurons = refine(per_query, config.refine_p)
        neurons.sort(key=lambda n: -float(scores[n]))
    removed: list[Neuron] = []
    if generic is not None:
        neurons, removed = generic.split(neurons)
        per_query = [generic.split(query)[0] for query in per_query]
    of_relation: list[Neuron] = []
    if relations is not None:  # the fact set; the relation set is kept beside it
        neurons, of_relation = relations.split(relation, neurons)
        per_query = [relations.split(relation, query)[0] for query in per_query]
    result = LanguageResult(
        language=lang, target=target, prompts=prompts, probs=[a.prob for a in attributions],
        correct=[a.correct for a in attributions], neurons=neurons, scores=scores,
        confidence=sum(confidences) / len(confidences), seconds=time.perf_counter() - start,
        attribution_seconds=sum(a.seconds for a in attributions), generic=removed,
        relation=of_relation, query_neurons=per_query)
    return result, attributions


def top_neurons(scores: torch.Tensor, k: int, exclude: Iterable[Neuron] = ()) -> list[Neuron]:
    """The ``k`` highest-scoring neurons, leaving out ``exclude``."""
    exclude = set(exclude)
    flat = scores.flatten().topk(min(k + len(exclude), scores.numel())).indices
    n = scores.shape[1]
    ranked = [(int(i) // n, int(i) % n) for i in flat]
    return [neuron for neuron in ranked if neuron not in exclude][:k]


def locate_fact(lm: LanguageModel, fact, languages: list[str],
                config: LocateConfig | None = None,
                cache: AttributionCache | None = None, knowledge: KnownItems | None = None,
                generic: GenericNeurons | LeftOut | None = None,
                progress: Progress | bool | None = None,
                relations: RelationNeurons | None = None) -> FactResult:
    """Knowledge neurons of ``fact`` in the ``languages`` where the model knows it,
    language-agnostic and degenerate ones.

    ``cache`` (a dict) lets several calls share per-query attributions, e.g. ``amig`` and
    ``matrice`` on the same facts. ``knowledge``: the probe of the fact (probed here when None).
    ``generic``: generic neurons to leave out (none when None), or a
    :class:`~mkn.localization.relations.LeftOut` with the relation neurons too; ``relations``:
    relation neurons of the fact's relation to leave out (its fact set; the relation set is
    kept in ``LanguageResult.relation``; none when None). ``progress``: a callable given
    one line per attribution and per degenerate search (phase, fact, language, counts), or
    True to print them on stderr.
    """
    config = config or LocateConfig()
    left_out = LeftOut.of(generic, relations)
    generic, relations = left_out.generic, left_out.relations
    printer = progress_printer(progress)
    say = printer and (lambda line: printer(f"locate {fact.id}: {line}"))
    if not languages:
        raise ValueError("no languages given")
    missing = [lang for lang in languages if lang not in fact.languages]
    if missing:
        raise ValueError(f"fact {fact.id!r} has no {', '.join(missing)} "
                         f"(it has {', '.join(sorted(fact.languages))})")
    if knowledge is None:
        knowledge = known_items(lm, [fact], languages, config.known)
    per_language: dict[str, LanguageResult] = {}
    skipped: dict[str, Knowledge] = {}
    for lang in languages:
        probed = knowledge.knowledge[(fact.id, lang)]
        if not knowledge.known(fact.id, lang):
            skipped[lang] = probed
            continue
        prompts = fact.prompts(lang)[: config.max_queries]
        if not prompts:
            raise ValueError(f"fact {fact.id!r} has no queries in {lang!r}")
        per_language[lang], _ = _language(lm, lang, prompts, fact.languages[lang].object, config,
                                          cache, generic, say, relations, fact.relation)
        per_language[lang].knowledge = probed
        per_language[lang].known = probed.marked(knowledge.criterion)
    sets = {lang: r.neurons for lang, r in per_language.items()}
    combined = None
    if config.method == "matrice" and per_language:
        combined = matrice.multilingual_score(
            {lang: r.scores for lang, r in per_language.items()},
            {lang: r.confidence for lang, r in per_language.items()},
            config.matrice_lambda, config.matrice_uniform)
        passing = set(coarse_neurons(combined, config.agnostic_threshold))
        strict = [n for n in shared_neurons(sets, 1.0) if n in passing]
        soft = [n for n in shared_neurons(sets, config.agnostic_fraction) if n in passing]
    else:
        strict = shared_neurons(sets, 1.0)
        soft = shared_neurons(sets, config.agnostic_fraction)
    if len(per_language) < 2:  # nothing is shared across fewer than two languages
        strict, soft = [], []
    result = FactResult(fact.id, fact.relation, per_language, strict, soft,
                        combined_scores=combined, skipped=skipped)
    if config.degenerate:
        for lang, lang_result in per_language.items():
            queries = [(prompt, lang_result.target) for prompt in lang_result.prompts]
            exclude = left_out.excluded(fact.relation)
            candidates = top_neurons(lang_result.scores, config.degenerate_top_k, exclude)
            start = time.perf_counter()
            result.degenerate[lang] = degenerate_neurons(lm, queries, candidates,
                                                         config.t_low, config.t_high)
            lang_result.seconds += time.perf_counter() - start
            if say:
                say(f"{lang} degenerate search over {len(candidates)} candidates in "
                    f"{time.perf_counter() - start:.1f} s")
    return result

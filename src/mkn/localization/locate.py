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

Degenerate neurons (AMIG Algorithm 1) are searched among each language's top-k neurons.
Facts the model gets wrong are kept and marked (``correct`` per query, ``known`` per language).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mkn.attribution.api import METHODS, Attribution, attribute
from mkn.attribution.rules import RULES
from mkn.localization import matrice
from mkn.localization.degenerate import DegenerateResult, degenerate_neurons
from mkn.localization.neurons import (
    Neuron,
    coarse_neurons,
    refine,
    shared_neurons,
    threshold_for,
)
from mkn.models.loading import LanguageModel

LOCATE_METHODS = (*METHODS, "matrice")


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
    matrice_baseline: str = Field("amig", description="per-query IG of matrice: amig or ig")
    matrice_uniform: bool = False
    degenerate: bool = True
    degenerate_top_k: int = Field(20, ge=2)
    t_low: float = Field(0.2, ge=0, le=1)
    t_high: float = Field(0.25, ge=0, le=1)
    batch_size: int | None = Field(None, ge=1)

    @field_validator("method", "rule", "matrice_baseline")
    @classmethod
    def _known(cls, value: str, info) -> str:
        choices = {"method": LOCATE_METHODS, "rule": RULES,
                   "matrice_baseline": METHODS}[info.field_name]
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

    @property
    def known(self) -> bool:
        """The model gets the fact right on most of the language's queries."""
        return sum(self.correct) * 2 > len(self.correct)

    def neuron_records(self) -> list[list[float]]:
        return [[layer, index, round(float(self.scores[layer, index]), 6)]
                for layer, index in self.neurons]


@dataclass
class FactResult:
    fact_id: str
    relation: str
    languages: dict[str, LanguageResult]
    language_agnostic: list[Neuron]
    soft_language_agnostic: list[Neuron]
    degenerate: dict[str, DegenerateResult] = field(default_factory=dict)
    combined_scores: torch.Tensor | None = None


AttributionCache = dict[tuple, Attribution]


def _attribute(lm: LanguageModel, prompt: str, target: str, config: LocateConfig,
               cache: AttributionCache | None) -> Attribution:
    key = (prompt, target, config.attribution_method, config.steps, config.rule)
    if cache is not None and key in cache:
        return cache[key]
    result = attribute(lm, prompt, target, method=config.attribution_method, steps=config.steps,
                       rule=config.rule, batch_size=config.batch_size)
    if cache is not None:
        cache[key] = result
    return result


def _language(lm: LanguageModel, lang: str, prompts: list[str], target: str,
              config: LocateConfig, cache: AttributionCache | None = None
              ) -> tuple[LanguageResult, list[Attribution]]:
    start = time.perf_counter()
    attributions = [_attribute(lm, prompt, target, config, cache) for prompt in prompts]
    t = threshold_for(lang, config.thresholds)
    confidences = [a.confidence for a in attributions]
    if config.method == "matrice":
        scores = matrice.language_score([a.scores for a in attributions], confidences,
                                        config.matrice_lambda, config.matrice_uniform)
        neurons = coarse_neurons(scores, t)
    else:
        scores = torch.stack([a.scores for a in attributions]).mean(0)
        neurons = refine([coarse_neurons(a.scores, t) for a in attributions], config.refine_p)
        neurons.sort(key=lambda n: -float(scores[n]))
    result = LanguageResult(
        language=lang, target=target, prompts=prompts, probs=[a.prob for a in attributions],
        correct=[a.correct for a in attributions], neurons=neurons, scores=scores,
        confidence=sum(confidences) / len(confidences), seconds=time.perf_counter() - start,
        attribution_seconds=sum(a.seconds for a in attributions))
    return result, attributions


def top_neurons(scores: torch.Tensor, k: int) -> list[Neuron]:
    flat = scores.flatten().topk(min(k, scores.numel())).indices
    n = scores.shape[1]
    return [(int(i) // n, int(i) % n) for i in flat]


def locate_fact(lm: LanguageModel, fact, languages: list[str],
                config: LocateConfig | None = None,
                cache: AttributionCache | None = None) -> FactResult:
    """Knowledge neurons of ``fact`` in ``languages``, language-agnostic and degenerate ones.

    ``cache`` (a dict) lets several calls share per-query attributions, e.g. ``amig`` and
    ``matrice`` on the same facts.
    """
    config = config or LocateConfig()
    if not languages:
        raise ValueError("no languages given")
    missing = [lang for lang in languages if lang not in fact.languages]
    if missing:
        raise ValueError(f"fact {fact.id!r} has no {', '.join(missing)} "
                         f"(it has {', '.join(sorted(fact.languages))})")
    per_language: dict[str, LanguageResult] = {}
    for lang in languages:
        prompts = fact.prompts(lang)[: config.max_queries]
        if not prompts:
            raise ValueError(f"fact {fact.id!r} has no queries in {lang!r}")
        per_language[lang], _ = _language(lm, lang, prompts, fact.languages[lang].object, config,
                                          cache)
    sets = {lang: r.neurons for lang, r in per_language.items()}
    combined = None
    if config.method == "matrice":
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
    result = FactResult(fact.id, fact.relation, per_language, strict, soft,
                        combined_scores=combined)
    if config.degenerate:
        for lang, lang_result in per_language.items():
            queries = [(prompt, lang_result.target) for prompt in lang_result.prompts]
            candidates = top_neurons(lang_result.scores, config.degenerate_top_k)
            start = time.perf_counter()
            result.degenerate[lang] = degenerate_neurons(lm, queries, candidates,
                                                         config.t_low, config.t_high)
            lang_result.seconds += time.perf_counter() - start
    return result

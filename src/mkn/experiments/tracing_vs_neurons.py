"""Tracing vs neurons: does causal tracing put a fact where its knowledge neurons are?

Per known item (fact, language; its first query), on a causal LM:

- the causal trace (:mod:`mkn.localization.tracing`, ROME: noise on the subject's tokens) of the
  MLP output of each layer at the subject's last token: the *tracing profile* over layers, as
  |indirect effect| (how much restoring that state moves p(gold), in either direction: a
  restoration can also lower it where the noise happened to help);
- the item's knowledge neurons by the run's method (``--method``), as the share of them in each
  layer: the *neuron profile*;
- ``agreement``: Spearman's rank correlation over layers of the two profiles (None when either
  is flat: no neurons, or a trace with no effect);
- the control ``unrelated_agreement``: the same trace against the neuron profile of a fact of
  another relation known in the language (if localization is specific to the fact, its own
  neurons agree better than another fact's); ``specificity`` = agreement - unrelated agreement;
- ``agreement_at_prediction``: the same correlation with the MLP trace at the prediction
  position, where the knowledge neurons are read;
- ``attention_share`` (Geva et al. 2023): at the prediction position, the summed positive
  indirect effect of the attention outputs over that of attention and MLP outputs: how much of
  the recall runs through attention, which FFN neurons cannot see.

Summaries are medians over items with bootstrap 95% intervals over facts.
"""

from __future__ import annotations

import random

import torch

from mkn.experiments.common import (
    Progress,
    interval_row,
    knowledge_line,
    locate_known,
    markdown_table,
    unrelated_facts,
)
from mkn.experiments.metrics import clustered_interval, spearman
from mkn.interventions.controls import stable_seed
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.localization.neurons import layer_histogram
from mkn.localization.tracing import causal_trace
from mkn.models.loading import LanguageModel

PHASES = 2  # progress ticks per fact: locating, then tracing
# the states the experiment reads (the rest of the grid is not traced: issue 26)
TRACED = {"mlp": ("subject", "prediction"), "attn": ("prediction",)}


def neuron_profile(neurons, n_layers: int) -> list[float]:
    """Share of ``neurons`` in each layer (zeros when there are none)."""
    counts = layer_histogram(neurons, n_layers)
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def denoised(profile: list[float], floor: float = 1e-6) -> list[float]:
    """``profile`` with values below ``floor`` times its largest magnitude set to 0: rounding
    from the batch shapes of the restored runs (~1e-9), not effects, must not rank layers."""
    peak = max((abs(v) for v in profile), default=0.0)
    return [v if abs(v) > floor * peak else 0.0 for v in profile]


def attention_share(effects: dict[str, torch.Tensor], position: int) -> float | None:
    """Positive attention effect / (positive attention + positive MLP effect) summed over
    layers at ``position`` (None when both are 0)."""
    attn = float(effects["attn"][:, position].clamp_min(0).sum())
    mlp = float(effects["mlp"][:, position].clamp_min(0).sum())
    return attn / (attn + mlp) if attn + mlp > 0 else None


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, samples: int = 10, noise: float = 3.0,
        progress: Progress | None = None, cache: AttributionCache | None = None,
        known: KnownItems | None = None, generic: GenericNeurons | None = None) -> dict:
    if not lm.causal:
        raise ValueError(f"tracing-vs-neurons needs a causal LM; {lm.name} is a masked LM")
    known, located = locate_known(lm, facts, languages, config, progress, cache, known,
                                  generic)
    profiles = {(fact_id, lang): neuron_profile(result.languages[lang].neurons, lm.n_layers)
                for fact_id, result in located.items() for lang in result.languages}
    items = []
    for fact in facts:
        for lang in located[fact.id].languages:
            prompt, subject = fact.prompts(lang)[0], fact.languages[lang].subject
            found = causal_trace(lm, prompt, fact.languages[lang].object, subject,
                                 kinds=tuple(TRACED), samples=samples, noise=noise,
                                 seed=stable_seed(seed, fact.id, lang, "trace"), at=TRACED)
            trace = denoised(found.layer_profile("mlp").abs().tolist())
            at_prediction = denoised(found.layer_profile(
                "mlp", len(found.tokens) - 1).abs().tolist())
            own = profiles[(fact.id, lang)]
            others = [g for g in unrelated_facts(fact, facts, lang, len(facts), seed, known)
                      if (g.id, lang) in profiles and any(profiles[(g.id, lang)])]
            other = random.Random(stable_seed(seed, fact.id, lang, "other")).choice(
                others) if others else None
            agreement = spearman(trace, own) if any(own) else None
            unrelated = spearman(trace, profiles[(other.id, lang)]) if other else None
            items.append({
                "fact_id": fact.id, "language": lang, "subject": subject,
                "neurons": len(located[fact.id].languages[lang].neurons),
                "tracing_profile": trace, "neuron_profile": own,
                "peak_layer": int(torch.tensor(trace).argmax()),
                "clean_prob": found.clean_prob, "corrupted_prob": found.corrupted_prob,
                "agreement": agreement, "unrelated_fact": other.id if other else None,
                "prediction_profile": at_prediction,
                "agreement_at_prediction": spearman(at_prediction, own)
                if any(own) and any(at_prediction) else None,
                "unrelated_agreement": unrelated,
                "specificity": None if agreement is None or unrelated is None
                else agreement - unrelated,
                "attention_share": attention_share(found.effects, len(found.tokens) - 1)})
        if progress:
            progress(fact.id)
    return {"items": items, "samples": samples, "noise": noise, "method": config.method,
            "summary": summarize(items, seed), "knowledge": known.to_summary()}


def summarize(items: list[dict], seed: int = 0) -> dict:
    out: dict = {"items": len(items)}
    for key in ("agreement", "unrelated_agreement", "specificity", "agreement_at_prediction",
                "attention_share"):
        out[key] = clustered_interval([(i["fact_id"], i[key]) for i in items
                                       if i[key] is not None], seed=seed)
    out["flat"] = sum(i["agreement"] is None for i in items)
    return out


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """The study's summary: the agreement, its control, specificity and the attention share."""
    return {key: value for key, value in result["summary"].items() if isinstance(value, dict)}


def table(result: dict) -> str:
    s = result["summary"]

    def row(name: str, key: str) -> list:
        return interval_row(name, s[key])

    body = markdown_table(["measure (median over items)", "facts", "value", "95% CI"], [
        row(f"agreement: Spearman(tracing MLP profile, {result['method']} neurons per layer)",
            "agreement"),
        row("control: the same trace vs an unrelated fact's neurons", "unrelated_agreement"),
        row("specificity = agreement - control", "specificity"),
        row("agreement with the MLP trace at the prediction position", "agreement_at_prediction"),
        row("attention share of the indirect effect (Geva et al. 2023)", "attention_share")])
    return (f"{body}\n\n{s['items']} items; {s['flat']} without a ranking to compare (no "
            f"neurons or no effect). {knowledge_line(result['knowledge'])}")

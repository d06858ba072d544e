"""Localization vs editing (Hase et al., NeurIPS 2023, "Does Localization Inform Editing?").

Per known item (fact, language; its first query) and a counterfactual object (another fact of
the same relation, as in injection), the fact is edited *at each layer in turn*: mkn's neuron
edit (:func:`mkn.interventions.weights.replace_object`, Dai et al.) on the item's ``k``
highest-scoring neurons of that layer (by the run's method; neurons the run leaves out of the
fact's set, generic and relation neurons, are never taken). Per layer:

- ``gain``: log p(new) after the edit - log p(new) before, on the edited query;
- ``efficacy``: p(new) > p(old) after the edit (the criterion by which an item counts as known:
  the new object ranks above the old one);
- the control: the same edit on ``k`` random neurons of the same layer (``draws`` draws);
- the localization signals of the layer: the causal trace's |indirect effect| of its MLP output
  at the subject's last token (:mod:`mkn.localization.tracing`), its share of the item's
  knowledge neurons, and its share of the item's positive attribution mass.

Per item, Spearman's correlation over layers between the gain and each signal says whether
localization predicts where editing works; ``best_layer_agrees``: the layer with the largest
signal is the layer with the largest gain (chance: 1 / layers). Medians over items with bootstrap
95% intervals over facts. The best layer's edit is also measured for locality
(:mod:`mkn.interventions.locality`): the change of p(gold) of other facts of the same relation
and of other relations known in the item's language.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping

import torch

from mkn.attribution.queries import encode
from mkn.attribution.scoring import score_rows
from mkn.experiments.common import (
    Progress,
    generic_for,
    interval_row,
    knowledge_line,
    locate_known,
    markdown_table,
    neighbourhood,
)
from mkn.experiments.injection import NEIGHBOURS, counterfactual
from mkn.experiments.metrics import clustered_interval, spearman
from mkn.experiments.tracing_vs_neurons import denoised, neuron_profile
from mkn.interventions.controls import CleanProbs, random_like, stable_seed
from mkn.interventions.locality import locality
from mkn.interventions.weights import replace_object, replace_object_rows
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import AttributionCache, LocateConfig
from mkn.localization.relations import LeftOut
from mkn.localization.tracing import causal_trace
from mkn.models.loading import LanguageModel

PHASES = 2  # progress ticks per fact: locating, then editing layer by layer
SIGNALS = ("tracing", "neuron_share", "attribution_mass")


def edit_scores(lm: LanguageModel, edits: list, prompt: str, old: str, new: str
                ) -> tuple[float, list[tuple[float, bool]]]:
    """log p(new) on ``prompt`` unedited, and per edit (a list of neurons each) ``(log p(new),
    p(new) > p(old))`` with those neurons edited old -> new: every edit a row pair of one
    batched pass (:func:`~mkn.interventions.weights.replace_object_rows`), each row starting at
    the layer it edits."""
    rows = replace_object_rows(lm, edits, prompt, old, new)
    new_q, old_q = encode(lm, prompt, new), encode(lm, prompt, old)
    scored = score_rows(lm, [new_q, old_q] * len(rows) + [new_q], [None] * (2 * len(rows) + 1),
                        edits=[row for row in rows for _ in (new_q, old_q)] + [None])

    def log(p: float) -> float:
        return math.log(max(p, 1e-30))

    return log(scored[-1].prob), [(log(scored[2 * i].prob), scored[2 * i].prob
                                   > scored[2 * i + 1].prob) for i in range(len(rows))]


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def mass_profile(scores: torch.Tensor) -> list[float]:
    """Each layer's share of the positive attribution mass."""
    positive = scores.float().clamp_min(0).sum(-1)
    total = float(positive.sum())
    return [float(v) / total if total else 0.0 for v in positive]


def without(scores: torch.Tensor, excluded) -> torch.Tensor:
    """``scores`` as float with the ``excluded`` neurons (generic and relation neurons left out
    of the fact's set) at -inf, so that no layer's top-k takes them."""
    ranked = scores.float().clone()
    for layer, index in excluded:
        ranked[layer, index] = -math.inf
    return ranked


def run(lm: LanguageModel, facts: list, languages: list[str], config: LocateConfig,
        seed: int = 0, k: int = 8, draws: int = 1, samples: int = 10,
        progress: Progress | None = None, cache: AttributionCache | None = None,
        known: KnownItems | None = None,
        generic: GenericNeurons | LeftOut | Mapping[str, GenericNeurons | LeftOut] | None = None
        ) -> dict:
    if not lm.causal:
        raise ValueError(f"localization-vs-editing needs a causal LM; {lm.name} is a masked LM")
    known, located = locate_known(lm, facts, languages, config, progress, cache, known,
                                  generic)
    items, skipped = [], []
    clean = CleanProbs(lm)
    for fact in facts:
        excluded = LeftOut.of(generic_for(generic, config.method)).excluded(fact.relation)
        other = counterfactual(fact, facts, random.Random(stable_seed(seed, fact.id, "new")))
        for lang in located[fact.id].languages:
            if other is None or lang not in other.languages:
                skipped.append({"fact_id": fact.id, "language": lang,
                                "reason": "no counterfactual of the same relation"})
                continue
            result = located[fact.id].languages[lang]
            ranked = without(result.scores, excluded)  # the fact set's neurons only
            prompt, old = fact.prompts(lang)[0], fact.languages[lang].object
            new, subject = other.languages[lang].object, fact.languages[lang].subject
            trace = causal_trace(lm, prompt, old, subject, kinds=("mlp",), samples=samples,
                                 seed=stable_seed(seed, fact.id, lang, "trace"),
                                 at={"mlp": ("subject",)})
            signals = {"tracing": denoised(trace.layer_profile("mlp").abs().tolist()),
                       "neuron_share": neuron_profile(result.neurons, lm.n_layers),
                       "attribution_mass": mass_profile(result.scores)}
            rng = random.Random(stable_seed(seed, fact.id, lang, "random-edit"))
            top, edits = [], []  # the k highest-scoring neurons of each layer, its controls
            for layer in range(lm.n_layers):
                order = torch.argsort(ranked[layer], descending=True)
                top.append([(layer, int(i)) for i in order[:k]])
                edits += [top[-1], *[random_like(top[-1], lm.n_neurons, rng)
                                     for _ in range(draws)]]
            before, scores = edit_scores(lm, edits, prompt, old, new)
            per_layer = [scores[i:i + 1 + draws] for i in range(0, len(scores), 1 + draws)]
            gains = [own[0] - before for own, *_ in per_layer]
            efficacy = [own[1] for own, *_ in per_layer]
            random_gains = [statistics.fmean(g - before for g, _ in drawn)
                            for _, *drawn in per_layer]
            random_efficacy = [statistics.fmean(t for _, t in drawn) for _, *drawn in per_layer]
            best_edit = max(range(lm.n_layers), key=gains.__getitem__)
            # locality of the best layer's edit: its same- and other-relation neighbours
            edit = replace_object(lm, top[best_edit], prompt, old, new)
            edit.undo()
            around = neighbourhood(fact, [g for g in facts if g.id != other.id], [lang],
                                   NEIGHBOURS, seed, known)
            moved = locality(lm, edit, around, clean)[lang]
            items.append({
                "locality": {group: _mean(values) for group, values in moved.items()},
                "fact_id": fact.id, "language": lang, "new_from": other.id, "k": k,
                "gain": gains, "efficacy": efficacy, "random_gain": random_gains,
                "random_efficacy": random_efficacy, "signals": signals,
                "best_edit_layer": best_edit,
                **{f"rho_{name}": spearman(gains, profile) if any(profile) else None
                   for name, profile in signals.items()},
                **{f"best_{name}_agrees": (max(range(lm.n_layers), key=profile.__getitem__)
                                           == best_edit) if any(profile) else None
                   for name, profile in signals.items()}})
        if progress:
            progress(fact.id)
    return {"items": items, "skipped": skipped, "k": k, "draws": draws, "samples": samples,
            "method": config.method, "layers": lm.n_layers,
            "summary": summarize(items, lm.n_layers, seed), "knowledge": known.to_summary()}


def summarize(items: list[dict], layers: int, seed: int = 0) -> dict:
    out: dict = {"items": len(items), "chance_best_layer": 1 / layers if layers else None}
    for name in SIGNALS:
        out[f"rho_{name}"] = clustered_interval([(i["fact_id"], i[f"rho_{name}"]) for i in items
                                                 if i[f"rho_{name}"] is not None], seed=seed)
        out[f"best_{name}_agrees"] = clustered_interval(
            [(i["fact_id"], float(i[f"best_{name}_agrees"])) for i in items
             if i[f"best_{name}_agrees"] is not None], statistics.fmean, seed=seed)
    out["efficacy"] = clustered_interval([(i["fact_id"], statistics.fmean(i["efficacy"]))
                                          for i in items], statistics.fmean, seed=seed)
    out["random_efficacy"] = clustered_interval(
        [(i["fact_id"], statistics.fmean(i["random_efficacy"])) for i in items],
        statistics.fmean, seed=seed)
    for group in ("same_relation", "other_relation"):
        out[f"locality_{group}"] = clustered_interval(
            [(i["fact_id"], i["locality"][group]) for i in items
             if (i.get("locality") or {}).get(group) is not None], seed=seed)
    return out


def headline(result: dict, languages: list[str], seed: int = 0) -> dict:
    """The study's summary: every correlation, best-layer rate and efficacy with its control."""
    return {key: value for key, value in result["summary"].items() if isinstance(value, dict)}


def table(result: dict) -> str:
    s = result["summary"]

    def cells(label: str, key: str) -> list:
        return interval_row(label, s[key])

    rows = [cells(f"Spearman(edit gain, {name.replace('_', ' ')}) over layers", f"rho_{name}")
            for name in SIGNALS]
    rows += [cells(f"largest {name.replace('_', ' ')} is the best layer to edit "
                   f"(chance {s['chance_best_layer']:.3g})", f"best_{name}_agrees")
             for name in SIGNALS]
    rows += [cells(f"efficacy of the top-{result['k']} neuron edit, mean over layers",
                   "efficacy"),
             cells(f"control: {result['k']} random neurons of the same layer",
                   "random_efficacy")]
    rows += [cells(f"locality of the best layer's edit: change of p(gold) of "
                   f"{group.replace('_', '-')} facts (median)", f"locality_{group}")
             for group in ("same_relation", "other_relation") if f"locality_{group}" in s]
    return (markdown_table(["measure", "facts", "value", "95% CI"], rows)
            + f"\n\n{s['items']} items ({len(result['skipped'])} skipped: no counterfactual). "
            + knowledge_line(result["knowledge"]))

"""What every experiment shares: the setup record, measuring queries, writing results."""

from __future__ import annotations

import inspect
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mkn.attribution.api import predict_many
from mkn.attribution.scoring import Prediction
from mkn.experiments.metrics import clustered_interval
from mkn.interventions.controls import stable_seed
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems, known_items
from mkn.localization.locate import (
    AttributionCache,
    FactResult,
    LocateConfig,
    locate_fact,
    locate_methods,
)
from mkn.localization.relations import LeftOut
from mkn.localization.stats import markdown_table  # noqa: F401  (re-exported)
from mkn.models.loading import LanguageModel
from mkn.runs.directory import run_date, write_atomic

Query = tuple[str, str]  # (prompt, target)
Progress = Callable[[str], None]


@dataclass
class Setup:
    """What produced a result: printed and saved with it."""

    experiment: str
    model: str
    data: str
    languages: list[str]
    limit: int | None
    seed: int
    method: str
    steps: int
    facts: list[str] = field(default_factory=list)
    dtype: str = "float32"
    sample: str = "first facts in source order"
    max_queries: int | None = None
    known: str = "auto"
    generic: str = "none"
    relation_neurons: str = "keep"
    options: dict = field(default_factory=dict)
    date: str = field(default_factory=run_date)

    @classmethod
    def of(cls, experiment: str, cfg, languages: list[str], facts: Sequence,
           options: dict | None = None) -> Setup:
        """The setup of ``experiment`` run with a :class:`mkn.jobs.config.RunConfig`."""
        return cls(experiment=experiment, model=cfg.model, data=cfg.data, languages=languages,
                   limit=cfg.limit, seed=cfg.seed, method=cfg.locate.method,
                   steps=cfg.locate.steps, facts=[f.id for f in facts], dtype=cfg.dtype,
                   sample=describe_sample(cfg), max_queries=cfg.locate.max_queries,
                   known=cfg.locate.known, generic=cfg.generic,
                   relation_neurons=cfg.relation_neurons, options=dict(options or {}))

    def describe(self) -> str:
        queries_used = (f"at most {self.max_queries} queries per language attributed"
                        if self.max_queries else "all queries attributed")
        return (f"{self.experiment}: model {self.model} ({self.dtype}), data {self.data}, "
                f"languages {','.join(self.languages)}, {len(self.facts)} facts (limit "
                f"{self.limit}; {self.sample}), seed {self.seed}, method {self.method}, "
                f"{self.steps} steps, {queries_used}, known items by {self.known}, generic "
                f"neurons {'kept' if self.generic == 'keep' else 'left out'}, relation neurons "
                f"{'kept' if self.relation_neurons == 'keep' else 'left out (fact sets)'}"
                + "".join(f", {k}={v}" for k, v in self.options.items()) + f"; {self.date}")


def describe_sample(cfg) -> str:
    """How a RunConfig draws its facts, in words."""
    parts = [f"random (seed {cfg.seed})" if cfg.shuffle else "first in source order"]
    if cfg.relations:
        parts.append(f"relations {','.join(cfg.relations)}")
    if cfg.per_relation:
        parts.append(f"at most {cfg.per_relation} per relation")
    return ", ".join(parts)


def queries(fact, lang: str) -> list[Query]:
    """The (prompt, gold object) queries of ``fact`` in ``lang``; a clear error if missing."""
    if lang not in fact.languages:
        raise ValueError(f"fact {fact.id!r} has no language {lang!r} "
                         f"(it has {', '.join(sorted(fact.languages))})")
    target = fact.languages[lang].object
    return [(prompt, target) for prompt in fact.prompts(lang)]


class CleanPredictions:
    """:func:`mkn.attribution.api.predict_many` of queries with nothing intervened on, each
    query scored once per experiment run (the clean "before" of many items shares its unrelated
    facts); call it only while the model is as the run found it."""

    def __init__(self, lm: LanguageModel):
        self.lm = lm
        self.known: dict[Query, Prediction] = {}

    def __call__(self, asked: Sequence[Query]) -> list[Prediction]:
        missing = list(dict.fromkeys(q for q in asked if q not in self.known))
        self.known.update(zip(missing, predict_many(self.lm, missing), strict=True))
        return [self.known[q] for q in asked]


def probe_known(lm: LanguageModel, facts: Sequence, languages: list[str],
                config: LocateConfig, known: KnownItems | None = None) -> KnownItems:
    """The items kept under ``config.known`` (probed unless given); an error if none is."""
    known = known or known_items(lm, facts, languages, config.known)
    known.require_some("(fact, language) items")
    return known


def unrelated_facts(fact, facts: Sequence, language: str, count: int, seed: int | str,
                    known: KnownItems | None = None) -> list:
    """Up to ``count`` facts of *other relations* than ``fact`` (kept in ``language`` by
    ``known``, when given), drawn with a seed that depends only on ``seed``, the fact and the
    language."""
    pool = [g for g in facts if g.relation != fact.relation
            and (known is None or known.known(g.id, language))]
    rng = random.Random(stable_seed(seed, fact.id, language, "unrelated"))
    return rng.sample(pool, min(count, len(pool)))


def same_relation_facts(fact, facts: Sequence, language: str, count: int, seed: int | str,
                        known: KnownItems | None = None) -> list:
    """Up to ``count`` other facts of the *same* relation as ``fact`` (kept in ``language`` by
    ``known``, when given), seeded like :func:`unrelated_facts`: the control that tells a fact's
    neurons from its relation's."""
    pool = [g for g in facts if g.relation == fact.relation and g.id != fact.id
            and (known is None or known.known(g.id, language))]
    rng = random.Random(stable_seed(seed, fact.id, language, "same-relation"))
    return rng.sample(pool, min(count, len(pool)))


def neighbourhood(fact, facts: Sequence, languages: Sequence[str], count: int, seed: int | str,
                  known: KnownItems | None = None) -> dict[str, dict[str, list]]:
    """``{language: {"same_relation": [queries], "other_relation": [queries]}}``: up to
    ``count`` other facts of each kind (:func:`same_relation_facts`, :func:`unrelated_facts`)
    in each language, their queries."""
    return {lang: {"same_relation": [queries(g, lang) for g in same_relation_facts(
                       fact, facts, lang, count, seed, known)],
                   "other_relation": [queries(g, lang) for g in unrelated_facts(
                       fact, facts, lang, count, seed, known)]}
            for lang in languages}


def locate_all(lm: LanguageModel, facts: Iterable, languages: list[str], config: LocateConfig,
               progress: Progress | None = None, cache: AttributionCache | None = None,
               known: KnownItems | None = None,
               generic: GenericNeurons | Mapping[str, GenericNeurons] | None = None
               ) -> dict[str, FactResult]:
    """``locate_fact`` for every fact, keyed by fact id (``generic``: a list, or one per
    method)."""
    located = {}
    for fact in facts:
        located[fact.id] = locate_fact(lm, fact, languages, config, cache, known,
                                       generic_for(generic, config.method))
        if progress:
            progress(fact.id)
    return located


def locate_known(lm: LanguageModel, facts: Sequence, languages: list[str], config: LocateConfig,
                 progress: Progress | None = None, cache: AttributionCache | None = None,
                 known: KnownItems | None = None,
                 generic: GenericNeurons | Mapping[str, GenericNeurons] | None = None
                 ) -> tuple[KnownItems, dict[str, FactResult]]:
    """The items kept under ``config.known`` (:func:`probe_known`) and every fact located
    there without the degenerate search (what the experiments that edit or trace need)."""
    known = probe_known(lm, facts, languages, config, known)
    return known, locate_all(lm, facts, languages,
                             config.model_copy(update={"degenerate": False}), progress, cache,
                             known, generic)


def generic_for(generic: GenericNeurons | LeftOut | Mapping[str, GenericNeurons | LeftOut] | None,
                method: str) -> GenericNeurons | LeftOut | None:
    """What the sets of ``method`` leave out: its generic-neuron list, or a
    :class:`~mkn.localization.relations.LeftOut` with its relation neurons too (either may be
    given per method)."""
    return generic.get(method) if isinstance(generic, Mapping) else generic


MATRICE_ABLATIONS = ("lambda0", "uniform", "min")


def parse_ranking(name: str) -> tuple[str, str]:
    """``(method, variant)`` of a ranking name: a registered method (or matrice) alone
    (variant ""), ``METHOD-source`` or a MATRICE ablation (``matrice-lambda0``...); a one-line
    error otherwise. Method names may contain '-' (``grad-x-act-source``)."""
    base, _, variant = name.rpartition("-")
    if name in locate_methods():
        return name, ""
    if base in locate_methods() and (variant == "source" or (
            base == "matrice" and variant in MATRICE_ABLATIONS)):
        return base, variant
    raise ValueError(f"unknown ranking {name!r}: a method ({', '.join(locate_methods())}), "
                     f"METHOD-source, or matrice-{{{','.join(MATRICE_ABLATIONS)}}}")


def methods_of(run: Callable, options: Mapping) -> tuple[str, ...]:
    """The localization methods an experiment's ``run`` compares (each needs its own generic
    neuron list): its ``methods`` option, or the bases of its ``rankings``; () for one method."""
    defaults = {name: p.default for name, p in inspect.signature(run).parameters.items()}
    if "methods" in defaults:
        return tuple(options.get("methods", defaults["methods"]))
    if "rankings" in defaults:
        rankings = options.get("rankings", defaults["rankings"])
        return tuple(dict.fromkeys(parse_ranking(name)[0] for name in rankings))
    return ()


CONTROL_KEYS = ("effect", "random_effect", "unrelated_effect", "selectivity", "specificity",
                "matched_effect", "same_relation_effect", "matched_selectivity",
                "relation_specificity")


def control_summary(effects: Sequence[tuple[str, dict]], seed: int = 0) -> dict:
    """Medians over items of an effect and its controls, from ``(fact_id,
    ControlledEffect.to_dict())`` pairs, each with a bootstrap 95% interval over facts; plus
    ``unrelated_moved``, the median of |change| of unrelated facts."""
    out: dict = {"items": len(effects)}
    for key in CONTROL_KEYS:
        out[key] = clustered_interval([(f, e[key]) for f, e in effects
                                       if e.get(key) is not None], seed=seed)
    out["unrelated_moved"] = clustered_interval(
        [(f, abs(e["unrelated_effect"])) for f, e in effects if e["unrelated_effect"] is not None],
        seed=seed)
    return out


FEW_FACTS = 5  # an interval resting on fewer facts than this carries a visible warning


def few_facts(facts: int | None) -> str:
    """`` (! only N facts)`` when an interval rests on fewer than :data:`FEW_FACTS` facts."""
    return f" (! only {facts} fact{'s' * (facts != 1)})" if facts is not None and \
        facts < FEW_FACTS else ""


def ci_text(entry: dict) -> str:
    """``[low, high]`` of an interval entry, with a warning when it rests on fewer than
    :data:`FEW_FACTS` facts."""
    low, high = entry["ci95"]
    return f"[{low:.3g}, {high:.3g}]{few_facts(entry.get('facts'))}"


def fmt_ci(entry: dict | None) -> str:
    """``median [low, high]`` of a :func:`control_summary` entry ("" when empty), with a
    warning when it rests on fewer than :data:`FEW_FACTS` facts."""
    if not entry or entry.get("value") is None:
        return ""
    return f"{entry['value']:.3g} {ci_text(entry)}"


CONTROL_HEADER = ["intervention", "items", "effect (median)", "random set", "unrelated facts",
                  "selectivity [95% CI]", "specificity [95% CI]", "magnitude-matched set",
                  "same-relation facts", "relation specificity [95% CI]"]


def control_row(mode: str, summary: dict) -> list:
    """A table row of :data:`CONTROL_HEADER` for one :func:`control_summary` (an experiment
    without the magnitude-matched or same-relation control leaves those cells empty)."""
    def value(key: str):
        return (summary.get(key) or {}).get("value")

    return [mode, summary["items"], value("effect"), value("random_effect"),
            value("unrelated_effect"), fmt_ci(summary.get("selectivity")),
            fmt_ci(summary.get("specificity")), value("matched_effect"),
            value("same_relation_effect"), fmt_ci(summary.get("relation_specificity"))]


def interval_row(label: str, entry: dict | None) -> list:
    """A markdown row ``[label, facts, value, [low, high]]`` of a :func:`clustered_interval`
    entry (empty cells where it has none)."""
    entry = entry or {}
    return [label, entry.get("facts"), entry.get("value"),
            ci_text(entry) if entry.get("ci95") else ""]


def knowledge_line(summary: dict, rest: str = "the others are not measured") -> str:
    """One line with a run's knowledge filter and the items it kept per language."""
    counts = ", ".join(f"{lang} {c['known']}/{c['items']}"
                       for lang, c in summary["per_language"].items())
    return (f"Items known by {summary['criterion']} ({summary['definition']}): {counts}"
            + ("." if summary["criterion"] == "any" else f"; {rest}."))


def write_result(out: Path, setup: Setup, result: dict, table_markdown: str) -> Path:
    """``out/<experiment>.json`` (setup + result) and ``out/<experiment>.md`` (the table), each
    written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    path = write_atomic(out / f"{setup.experiment}.json",
                        json.dumps({"setup": asdict(setup), "result": result}, indent=2,
                                   ensure_ascii=False) + "\n")
    write_atomic(out / f"{setup.experiment}.md", f"{setup.describe()}\n\n{table_markdown}\n")
    return path


FIXED_ARGUMENTS = ("lm", "facts", "languages", "config", "seed", "progress", "cache", "known",
                   "generic")


OPTION_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "draws": (lambda v: v >= 1, "at least 1"),
    "unrelated": (lambda v: v >= 1, "at least 1"),
    "wrong": (lambda v: v >= 1, "at least 1"),
    "measure_queries": (lambda v: v >= 0, "0 (all) or more"),
    "keep": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "q": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "factor": (lambda v: v > 0, "greater than 0"),
    "lambda_old": (lambda v: v >= 0, "0 or more"),
    "lambda_new": (lambda v: v >= 0, "0 or more"),
    "sizes": (lambda v: len(v) > 0 and all(k >= 1 for k in v), "positive integers"),
    "methods": (lambda v: len(v) > 0 and set(v) <= set(locate_methods()),
                lambda: f"one or more of {', '.join(locate_methods())}"),
    "rankings": (lambda v: len(v) > 0, "at least one ranking"),
}


def experiment_options(run: Callable, pairs: Sequence[str]) -> dict:
    """``["lambda_new=8", "source=zh"]`` -> keyword arguments of an experiment's ``run``, each
    converted to the type of its default and range-checked (:data:`OPTION_RANGES`; every number
    finite) before any compute; unknown names and bad values are clear errors."""
    parameters = {name: param for name, param in inspect.signature(run).parameters.items()
                  if name not in FIXED_ARGUMENTS}
    options = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"option {pair!r} is not NAME=VALUE")
        if name not in parameters:
            raise ValueError(f"unknown option {name!r}; this experiment takes "
                             f"{', '.join(parameters) or 'none'}")
        default = parameters[name].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("expected true or false")
                value = text.lower() in ("true", "1", "yes")
            elif isinstance(default, int | float):
                value = type(default)(text)
            elif isinstance(default, tuple):
                kind = type(default[0]) if default else str
                value = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
            else:
                value = text
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ValueError("must be a finite number")
            check = OPTION_RANGES.get(name)
            if check is not None and not check[0](value):
                raise ValueError(f"must be {check[1]() if callable(check[1]) else check[1]}")
            if name == "rankings" and not set(value) <= set(default):  # the known rankings
                raise ValueError(f"must be among {', '.join(default)}")
        except ValueError as error:
            raise ValueError(f"option {name}={text!r}: {error}") from None
        options[name] = value
    return options



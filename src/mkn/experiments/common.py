"""What every experiment shares: the setup record, measuring queries, writing results."""

from __future__ import annotations

import inspect
import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mkn.attribution.api import predict_many
from mkn.experiments.metrics import relative_change
from mkn.interventions.activation import intervene
from mkn.localization.locate import AttributionCache, FactResult, LocateConfig, locate_fact
from mkn.models.loading import LanguageModel

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
    options: dict = field(default_factory=dict)
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def of(cls, experiment: str, cfg, languages: list[str], facts: Sequence,
           options: dict | None = None) -> Setup:
        """The setup of ``experiment`` run with a :class:`mkn.runs.config.RunConfig`."""
        return cls(experiment=experiment, model=cfg.model, data=cfg.data, languages=languages,
                   limit=cfg.limit, seed=cfg.seed, method=cfg.locate.method,
                   steps=cfg.locate.steps, facts=[f.id for f in facts], dtype=cfg.dtype,
                   sample=describe_sample(cfg), max_queries=cfg.locate.max_queries,
                   options=dict(options or {}))

    def describe(self) -> str:
        queries_used = (f"at most {self.max_queries} queries per language attributed"
                        if self.max_queries else "all queries attributed")
        return (f"{self.experiment}: model {self.model} ({self.dtype}), data {self.data}, "
                f"languages {','.join(self.languages)}, {len(self.facts)} facts (limit "
                f"{self.limit}; {self.sample}), seed {self.seed}, method {self.method}, "
                f"{self.steps} steps, {queries_used}"
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


def clean_probs(lm: LanguageModel, qs: Sequence[Query]) -> list[float]:
    """p(gold) of each query (batched; active interventions apply)."""
    return [p.prob for p in predict_many(lm, qs)]


def mean_relative_change(lm: LanguageModel, qs: Sequence[Query], neurons, mode: str,
                         factor: float = 2.0, before: Sequence[float] | None = None) -> float:
    """Mean over ``qs`` of the relative change of p(gold) when ``neurons`` are suppressed or
    enhanced (x ``factor``) at every position; ``before``: the clean probabilities, if known."""
    before = clean_probs(lm, qs) if before is None else before
    with intervene(lm, neurons, mode, factor=factor):
        after = clean_probs(lm, qs)
    return statistics.fmean(relative_change(b, a) for b, a in zip(before, after, strict=True))


def locate_all(lm: LanguageModel, facts: Iterable, languages: list[str], config: LocateConfig,
               progress: Progress | None = None,
               cache: AttributionCache | None = None) -> dict[str, FactResult]:
    """``locate_fact`` for every fact, keyed by fact id."""
    located = {}
    for fact in facts:
        located[fact.id] = locate_fact(lm, fact, languages, config, cache)
        if progress:
            progress(fact.id)
    return located


def write_result(out: Path, setup: Setup, result: dict, table_markdown: str) -> Path:
    """``out/<experiment>.json`` (setup + result) and ``out/<experiment>.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{setup.experiment}.json"
    path.write_text(json.dumps({"setup": asdict(setup), "result": result}, indent=2,
                               ensure_ascii=False) + "\n", encoding="utf-8")
    (out / f"{setup.experiment}.md").write_text(f"{setup.describe()}\n\n{table_markdown}\n",
                                                encoding="utf-8")
    return path


FIXED_ARGUMENTS = ("lm", "facts", "languages", "config", "seed", "progress", "cache")


def experiment_options(run: Callable, pairs: Sequence[str]) -> dict:
    """``["lambda_new=8", "source=zh"]`` -> keyword arguments of an experiment's ``run``, each
    converted to the type of its default; unknown names and bad values are clear errors."""
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
                value = tuple(x.strip() for x in text.split(",") if x.strip())
            else:
                value = text
        except ValueError as error:
            raise ValueError(f"option {name}={text!r}: {error}") from None
        options[name] = value
    return options


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured markdown table; floats with 3 significant digits."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)

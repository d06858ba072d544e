"""Generic neurons: knowledge neurons of many facts of *different* relations.

A neuron found for most facts, whatever the relation, does not store *a* fact: suppressing it
also moves unrelated facts (the specificity control of :mod:`mkn.interventions.controls` shows
it). We find such neurons on a reference sample of facts and leave them out of knowledge-neuron,
language-agnostic and degenerate sets by default (``--generic keep`` keeps them, as Dai et al.
and AMIG do).

Definition. The reference sample gives a knowledge-neuron set per (fact, language) item. For a
neuron ``n`` and a relation ``r``, let ``others(r)`` be the items of relations other than ``r``;
the *share* of ``n`` is

    share(n) = min over relations r of |{i in others(r) : n in KN(i)}| / |others(r)|

i.e. the fraction of items outside the one relation it serves most in which ``n`` is still a
knowledge neuron. A neuron of one relation (every capital) has a share near 0; a neuron of every
fact, near 1. ``n`` is *generic* when ``share(n) >= threshold`` (default 0.3: on real data,
dropping the neurons that were knowledge neurons of at least 30% of the sampled facts cut the
collateral drop of unrelated facts from 59% to 11% while the fact's own drop stayed at 94%).
Shares are computed per language over that language's items when it has at least
:data:`MIN_SUPPORT` items outside any single relation, else over the items of all languages
pooled (a language the model knows little of borrows the others' list).

The reference sample (:func:`reference_generic`): up to 32 facts of the run's data source, at
most 4 per relation (seeded), the items the model knows (:mod:`mkn.localization.knowledge`), one
query each, located with the run's method and settings (bad records and facts the model cannot
score are left out of it and listed in the list's ``source``). It is computed once per model, dtype,
data, languages and settings and cached under ``$MKN_CACHE/generic/`` (or
``$MKN_GENERIC_CACHE``); ``mkn generic`` shows or rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mkn.models.loading import LanguageModel, cache_dir

Neuron = tuple[int, int]

DEFAULT_THRESHOLD = 0.3
MIN_SUPPORT = 4  # items outside any single relation needed for a language's own shares
REFERENCE_FACTS = 32
REFERENCE_PER_RELATION = 4
FORMAT = 1  # version of the cached file


@dataclass(frozen=True)
class ReferenceItem:
    """The knowledge neurons of one (fact, language) item of the reference sample."""

    fact_id: str
    relation: str
    language: str
    neurons: tuple[Neuron, ...]


def relation_shares(items: Sequence[tuple[str, Iterable[Neuron]]]) -> tuple[dict[Neuron, float],
                                                                              int]:
    """``(share per neuron, support)`` for ``(relation, neurons)`` items (module docstring).

    ``support`` is the number of items outside the largest relation (the smallest denominator);
    with a single relation nothing can be said: ``({}, 0)``.
    """
    per_relation = Counter(relation for relation, _ in items)
    if len(per_relation) < 2:
        return {}, 0
    total = len(items)
    counts: dict[Neuron, Counter] = defaultdict(Counter)
    for relation, neurons in items:
        for neuron in set(neurons):
            counts[neuron][relation] += 1
    shares = {}
    for neuron, by_relation in counts.items():
        found = sum(by_relation.values())
        shares[neuron] = min((found - by_relation[r]) / (total - size)
                             for r, size in per_relation.items())
    return shares, total - max(per_relation.values())


@dataclass
class GenericNeurons:
    """Generic neurons per language, from the knowledge neurons of a reference sample."""

    items: list[ReferenceItem]
    threshold: float = DEFAULT_THRESHOLD
    source: dict = field(default_factory=dict)  # what the reference sample was (provenance)

    @cached_property
    def _per_language(self) -> dict[str, tuple[dict[Neuron, float], int]]:
        by_language: dict[str, list[tuple[str, tuple[Neuron, ...]]]] = defaultdict(list)
        for item in self.items:
            by_language[item.language].append((item.relation, item.neurons))
        return {lang: relation_shares(rows) for lang, rows in by_language.items()}

    @cached_property
    def _pooled(self) -> dict[Neuron, float]:
        return relation_shares([(i.relation, i.neurons) for i in self.items])[0]

    def own_list(self, language: str) -> bool:
        """Whether ``language`` has enough reference items for shares of its own."""
        return self._per_language.get(language, ({}, 0))[1] >= MIN_SUPPORT

    def shares(self, language: str) -> dict[Neuron, float]:
        """Share of every neuron seen in the reference sample, for ``language``."""
        return self._per_language[language][0] if self.own_list(language) else self._pooled

    def neurons(self, language: str) -> dict[Neuron, float]:
        """The generic neurons of ``language`` and their shares, highest first."""
        generic = {n: s for n, s in self.shares(language).items() if s >= self.threshold}
        return dict(sorted(generic.items(), key=lambda kv: (-kv[1], kv[0])))

    def split(self, language: str, neurons: Iterable[Neuron]) -> tuple[list[Neuron],
                                                                        list[Neuron]]:
        """``(kept, generic)``: ``neurons`` without and with the generic ones, order kept."""
        generic = self.neurons(language)
        neurons = list(neurons)
        return ([n for n in neurons if n not in generic], [n for n in neurons if n in generic])

    def with_threshold(self, threshold: float) -> GenericNeurons:
        return GenericNeurons(self.items, threshold, self.source)

    def summary(self, languages: Sequence[str]) -> dict:
        """Per language: reference items, whether its own shares were used, generic count."""
        items = Counter(i.language for i in self.items)
        return {lang: {"reference_items": items.get(lang, 0), "own_list": self.own_list(lang),
                       "generic": len(self.neurons(lang))} for lang in languages}

    def to_json(self) -> dict:
        return {"format": FORMAT, "threshold": self.threshold, "source": self.source,
                "items": [{"fact_id": i.fact_id, "relation": i.relation, "language": i.language,
                           "neurons": [list(n) for n in i.neurons]} for i in self.items]}

    @classmethod
    def from_json(cls, data: dict, where: str = "generic-neuron list") -> GenericNeurons:
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            items = [ReferenceItem(str(i["fact_id"]), str(i["relation"]), str(i["language"]),
                                   tuple((int(n[0]), int(n[1])) for n in i["neurons"]))
                     for i in data["items"]]
            return cls(items, float(data["threshold"]), dict(data.get("source") or {}))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise ValueError(f"{where}: not a generic-neuron list ({error})") from None

    def save(self, path: Path) -> Path:
        """Write atomically (temporary file, then rename)."""
        from mkn.runs.directory import write_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1)
                            + "\n")

    @classmethod
    def load(cls, path: Path) -> GenericNeurons:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read a generic-neuron list ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a generic-neuron list")
        return cls.from_json(data, str(path))


# --- the reference sample ---------------------------------------------------------------------

def reference_facts(data: str, languages: Sequence[str], facts: int = REFERENCE_FACTS,
                    seed: int = 0):
    """The reference sample of ``data``: up to ``facts`` facts, at most
    :data:`REFERENCE_PER_RELATION` per relation, interleaved by relation (seeded)."""
    from mkn.data import load_facts

    return load_facts(data, list(languages), limit=facts, seed=seed,
                      per_relation=REFERENCE_PER_RELATION, lenient=True)


def _reference_key(lm: LanguageModel, data: str, languages: Sequence[str], config,
                   facts: Sequence) -> dict:
    settings = config.model_dump(include={"method", "steps", "rule", "thresholds", "refine_p",
                                          "matrice_lambda", "matrice_baseline",
                                          "matrice_uniform", "known"})
    content = hashlib.sha256("\n".join(json.dumps(f.to_dict(), sort_keys=True, ensure_ascii=False)
                                       for f in facts).encode()).hexdigest()[:16]
    return {"model": lm.name, "dtype": str(lm.dtype).removeprefix("torch."),
            "shape": [lm.n_layers, lm.n_neurons], "data": data, "languages": sorted(languages),
            "settings": settings, "sample": {"facts": len(facts), "per_relation":
                                             REFERENCE_PER_RELATION, "content": content}}


def reference_path(key: dict) -> Path:
    """Where the list of ``key`` is cached: ``$MKN_GENERIC_CACHE`` or ``$MKN_CACHE/generic``."""
    folder = Path(os.environ.get("MKN_GENERIC_CACHE") or cache_dir() / "generic")
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in
                   f"{Path(key['model']).name}-{key['data']}")[:60]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return folder / f"{slug}-{digest}.json"


def cached_lists(lm: LanguageModel) -> list[tuple[GenericNeurons, Path]]:
    """Every cached list built for ``lm`` (same name, dtype and shape), newest first: what a
    single ``mkn attribute`` uses to flag generic neurons."""
    folder = reference_path({"model": lm.name, "data": ""}).parent
    found = []
    for path in sorted(folder.glob("*.json"), key=lambda p: -p.stat().st_mtime) \
            if folder.is_dir() else []:
        try:
            generic = GenericNeurons.load(path)
        except ValueError:
            continue
        key = generic.source.get("key", {})
        if (key.get("model"), key.get("dtype"), key.get("shape")) == (
                lm.name, str(lm.dtype).removeprefix("torch."), [lm.n_layers, lm.n_neurons]):
            found.append((generic, path))
    return found


def build_reference(lm: LanguageModel, facts: Sequence, languages: Sequence[str], config,
                    progress: Callable[[str], None] | None = None,
                    cache: dict | None = None) -> list[ReferenceItem]:
    """Locate the known items of ``facts`` (one query each, generic neurons kept)."""
    from mkn.localization.knowledge import known_items
    from mkn.localization.locate import locate_fact

    settings = config.model_copy(update={"max_queries": 1, "degenerate": False})
    known = known_items(lm, facts, languages, settings.known)
    items = []
    for fact in facts:
        langs = known.languages_of(fact.id)
        if langs:
            result = locate_fact(lm, fact, langs, settings, cache, knowledge=known)
            items += [ReferenceItem(fact.id, fact.relation, lang, tuple(r.neurons))
                      for lang, r in result.languages.items()]
        if progress:
            progress(fact.id)
    return items


def reference_generic(lm: LanguageModel, data: str, languages: Sequence[str], config,
                      rebuild: bool = False,
                      task: Callable[[str, int], Callable[[str], None]] | None = None,
                      cache: dict | None = None,
                      facts: int = REFERENCE_FACTS) -> tuple[GenericNeurons, Path, bool]:
    """The cached generic-neuron list of ``lm`` on ``data`` (built on first use from a
    reference sample of up to ``facts`` facts).

    Returns ``(list, path, built)``; ``task(title, total)`` makes a progress callback.
    ``config.generic_share`` sets the threshold (the cached items do not depend on it).
    """
    from mkn.attribution.queries import encoding_problems

    sample = reference_facts(data, languages, facts)
    problems = encoding_problems(lm, sample, list(languages))  # facts the model cannot score
    facts = [f for f in sample if f.id not in problems]
    skipped = [str(s) for s in sample.skipped] + [f"fact {i}: {r}" for i, r in problems.items()]
    key = _reference_key(lm, data, languages, config, facts)
    path = reference_path(key)
    if path.exists() and not rebuild:
        found = GenericNeurons.load(path)
        if found.source.get("key") == key:
            return found.with_threshold(config.generic_share), path, False
    tick = task("generic neurons: reference sample", len(facts)) if task else None
    items = build_reference(lm, facts, languages, config, tick, cache)
    generic = GenericNeurons(items, config.generic_share,
                             {"key": key, "facts": [f.id for f in facts], "skipped": skipped,
                              "rebuild": rebuild_command(key)})
    generic.save(path)
    return generic, path, True


def rebuild_command(key: dict) -> str:
    """The command that rebuilds the list of ``key``."""
    s = key["settings"]
    return (f"mkn generic --model {key['model']} --dtype {key['dtype']} --data {key['data']} "
            f"--languages {','.join(key['languages'])} --method {s['method']} "
            f"--steps {s['steps']} --known {s['known']} --reference-facts "
            f"{key['sample']['facts']} --rebuild")

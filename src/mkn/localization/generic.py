"""Generic neurons: knowledge neurons of many facts of *different* relations.

A neuron found for many facts, whatever the relation, does not store *a* fact: suppressing it
also moves unrelated facts (the specificity control of :mod:`mkn.interventions.controls` shows
it). We find such neurons on a reference sample of facts the model knows and leave them out of
knowledge-neuron, language-agnostic and degenerate sets by default (``--generic keep`` keeps
them, as Dai et al. and AMIG do).

Definition. The reference sample gives a knowledge-neuron set per (fact, language) item; a
neuron *serves* a fact when it is in the fact's set in any language (the union over languages,
so one list holds for every language, including those the model knows little of). For a neuron
``n`` and a relation ``r``, let ``others(r)`` be the reference facts of relations other than
``r``; the *share* of ``n`` is

    share(n) = min over relations r of |{f in others(r) : n serves f}| / |others(r)|

i.e. the fraction of facts outside the one relation it serves most that it still serves. A
neuron of one relation (every capital) has a share near 0; a neuron of every fact, near 1. ``n``
is *generic* when ``share(n) >= threshold`` and it serves at least :data:`MIN_FACTS` facts
outside that relation (so that a small sample does not call a neuron of one or two facts
generic).

Default threshold 0.05, chosen on facts disjoint from the study's
(``benchmarks/bench_generic_rule.py``, docs/BENCHMARKS.md, "Which rule for generic neurons?"):
on gemma-3-270m, bmlama17 in en, es, nl, ko and zh with the study's 48 facts removed, a reference
sample of 48 known facts and 58 known items of 24 *other* known facts (the three overlaps 0,
checked), the fixed criterion (median own drop at least 80%, then the smallest median change of
unrelated facts under suppression) chose 0.05 among 0.05, 0.07, 0.1 and 0.15: unrelated facts
moved by 25% (0.07: 27%, 0.1: 26%, 0.15: 32%, nothing generic: 33%; the intervals overlap), the
fact's own p(gold) dropped by 96%. The earlier default, 0.07, had been chosen on 32 bmlama17
facts of which 28 were in the study's sample (issue 20).

The reference sample (:func:`reference_facts`): facts of the run's data source in a seeded
random order, probed (:mod:`mkn.localization.knowledge`) :data:`PROBE_CHUNK` at a time until
:data:`REFERENCE_FACTS` facts known in at least one of the languages are found (at most
:data:`REFERENCE_PER_RELATION` per relation, interleaved by relation, at most
:data:`REFERENCE_POOL` facts probed); each is located with the run's method and settings, one
query per language, on the languages where it is known. Bad records and facts the model cannot
score are left out and listed in the list's ``source``. The list is computed once per model,
dtype, data, languages and settings and cached under ``$MKN_CACHE/generic/`` (or
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

from mkn.localization.knowledge import KnownItems, known_items
from mkn.models.families import Neuron
from mkn.models.loading import LanguageModel, cache_dir
from mkn.runs.directory import data_fingerprint, digest, write_atomic

DEFAULT_THRESHOLD = 0.05
MIN_FACTS = 3  # facts outside its own relation a generic neuron must serve
REFERENCE_FACTS = 48
REFERENCE_PER_RELATION = 4
REFERENCE_POOL = 1024  # at most this many facts probed to find the reference sample
MIN_REFERENCE_FACTS = 20  # below this, or
MIN_REFERENCE_RELATIONS = 4  # below this, a list says little: not built unless asked
PROBE_CHUNK = 64
FORMAT = 2  # version of the cached file

_PROBED: dict[str, tuple] = {}  # reference samples probed in this process, by key


class ThinReference(ValueError):
    """A reference sample too small for a meaningful generic-neuron list."""


def check_reference_size(facts: int, relations: int, where: str,
                         min_facts: int = MIN_REFERENCE_FACTS,
                         min_relations: int = MIN_REFERENCE_RELATIONS) -> None:
    """:class:`ThinReference` (one line) when ``facts`` or ``relations`` is below the minimum:
    a neuron's share across relations means little on a handful of facts (issue 22)."""
    if facts < min_facts or relations < min_relations:
        raise ThinReference(f"{where} has {facts} facts of {relations} relations, too few for "
                            f"a generic-neuron list (at least {min_facts} facts of "
                            f"{min_relations} relations)")


@dataclass(frozen=True)
class ReferenceItem:
    """The knowledge neurons of one (fact, language) item of the reference sample."""

    fact_id: str
    relation: str
    language: str
    neurons: tuple[Neuron, ...]


@dataclass(frozen=True)
class Shares:
    """Per neuron: its share (module docstring) and how many facts outside its top relation it
    serves; ``support``: facts outside the largest relation (the smallest denominator)."""

    share: dict[Neuron, float]
    outside: dict[Neuron, int]
    support: int


def relation_shares(rows: Sequence[tuple[str, Iterable[Neuron]]]) -> Shares:
    """:class:`Shares` of ``(relation, neurons)`` rows, one row per fact (module docstring).

    With a single relation nothing can be said: no shares, support 0.
    """
    per_relation = Counter(relation for relation, _ in rows)
    if len(per_relation) < 2:
        return Shares({}, {}, 0)
    total = len(rows)
    counts: dict[Neuron, Counter] = defaultdict(Counter)
    for relation, neurons in rows:
        for neuron in set(neurons):
            counts[neuron][relation] += 1
    share, outside = {}, {}
    for neuron, by_relation in counts.items():
        found = sum(by_relation.values())
        share[neuron] = min((found - by_relation[r]) / (total - size)
                            for r, size in per_relation.items())
        outside[neuron] = found - max(by_relation.values())
    return Shares(share, outside, total - max(per_relation.values()))


def fact_rows(items: Iterable[ReferenceItem]) -> list[tuple[str, set[Neuron]]]:
    """``(relation, neurons serving the fact in any language)`` per reference fact."""
    relation: dict[str, str] = {}
    served: dict[str, set[Neuron]] = defaultdict(set)
    for item in items:
        relation[item.fact_id] = item.relation
        served[item.fact_id].update(item.neurons)
    return [(relation[fact], served[fact]) for fact in relation]


@dataclass
class GenericNeurons:
    """Generic neurons, from the knowledge neurons of a reference sample (module docstring)."""

    items: list[ReferenceItem]
    threshold: float = DEFAULT_THRESHOLD
    source: dict = field(default_factory=dict)  # what the reference sample was (provenance)

    @cached_property
    def _shares(self) -> Shares:
        return relation_shares(fact_rows(self.items))

    @property
    def facts(self) -> int:
        """Reference facts (with at least one located language)."""
        return len({item.fact_id for item in self.items})

    @property
    def relations(self) -> int:
        """Relations of the reference facts."""
        return len({item.relation for item in self.items})

    def shares(self) -> dict[Neuron, float]:
        """Share of every neuron seen in the reference sample."""
        return self._shares.share

    @cached_property
    def _generic(self) -> dict[Neuron, float]:
        shares = self._shares
        generic = {n: s for n, s in shares.share.items()
                   if s >= self.threshold and shares.outside[n] >= MIN_FACTS}
        return dict(sorted(generic.items(), key=lambda kv: (-kv[1], kv[0])))

    def neurons(self) -> dict[Neuron, float]:
        """The generic neurons and their shares, highest first (one list for every
        language)."""
        return self._generic

    def split(self, neurons: Iterable[Neuron]) -> tuple[list[Neuron], list[Neuron]]:
        """``(kept, generic)``: ``neurons`` without and with the generic ones, order kept."""
        generic = self.neurons()
        neurons = list(neurons)
        return ([n for n in neurons if n not in generic], [n for n in neurons if n in generic])

    def with_threshold(self, threshold: float) -> GenericNeurons:
        return GenericNeurons(self.items, threshold, self.source)

    @property
    def digest(self) -> str:
        """Content digest of the list (threshold and reference items): what a run's identity
        records, so that a resume cannot mix two lists that both came from "auto"."""
        return digest({k: v for k, v in self.to_json().items() if k != "source"})

    def summary(self, languages: Sequence[str]) -> dict:
        """Per language: reference items (facts located in it) and generic neurons."""
        items = Counter(i.language for i in self.items)
        return {lang: {"reference_items": items.get(lang, 0), "generic": len(self._generic)}
                for lang in languages}

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

def reference_pool(data: str, languages: Sequence[str], seed: int = 0):
    """Every fact of ``data`` that has ``languages``, in a seeded random order (bad records
    skipped and listed in ``skipped``)."""
    from mkn.data import load_facts

    return load_facts(data, list(languages), seed=seed, lenient=True)


def reference_facts(lm: LanguageModel, pool: Sequence, languages: Sequence[str], criterion: str,
                    facts: int = REFERENCE_FACTS,
                    progress: Callable[[str], None] | None = None) -> tuple[list, KnownItems,
                                                                            dict[str, str]]:
    """The reference sample: up to ``facts`` facts of ``pool`` known in at least one language,
    at most :data:`REFERENCE_PER_RELATION` per relation, interleaved by relation (module
    docstring). Returns ``(facts, their probe, {fact id: why it cannot be scored})``."""
    from mkn.attribution.queries import encoding_problems

    by_relation: dict[str, list] = defaultdict(list)
    knowledge: dict = {}
    problems: dict[str, str] = {}
    step = min(PROBE_CHUNK, max(16, 2 * facts))  # a small sample probes a small pool
    for start in range(0, min(len(pool), REFERENCE_POOL), step):
        chunk = list(pool[start:start + step])
        problems.update(encoding_problems(lm, chunk, list(languages)))
        chunk = [f for f in chunk if f.id not in problems]
        known = known_items(lm, chunk, languages, criterion, progress)
        knowledge.update(known.knowledge)
        for fact in chunk:
            if known.languages_of(fact.id) and len(by_relation[fact.relation]) < \
                    REFERENCE_PER_RELATION:
                by_relation[fact.relation].append(fact)
        if sum(len(group) for group in by_relation.values()) >= facts:
            break
    chosen = [group[k] for k in range(REFERENCE_PER_RELATION) for group in by_relation.values()
              if k < len(group)][:facts]
    return chosen, KnownItems(criterion, list(languages), knowledge), problems


def _reference_key(lm: LanguageModel, data: str, languages: Sequence[str], config,
                   pool: Sequence, facts: int) -> dict:
    settings = config.model_dump(include={"method", "steps", "rule", "thresholds", "refine_p",
                                          "matrice_lambda", "matrice_baseline",
                                          "matrice_uniform", "known"})
    return {"format": FORMAT, "model": lm.name, "dtype": str(lm.dtype).removeprefix("torch."),
            "shape": [lm.n_layers, lm.n_neurons], "data": data, "languages": sorted(languages),
            "settings": settings,
            "sample": {"facts": facts, "per_relation": REFERENCE_PER_RELATION,
                       "pool": REFERENCE_POOL, "content": data_fingerprint(pool)}}


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
                    known: KnownItems, progress: Callable[[str], None] | None = None,
                    cache: dict | None = None) -> list[ReferenceItem]:
    """Locate the known items of ``facts`` (one query each, generic neurons kept)."""
    from mkn.localization.locate import locate_fact

    settings = config.model_copy(update={"max_queries": 1, "degenerate": False})
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


def check_held_out(reference: Iterable[str], evaluated: Iterable[str]) -> int:
    """The number of facts the reference sample shares with the evaluated ones, which must be 0:
    a list tuned on the facts it is judged on is refused with a one-line error naming them."""
    overlap = sorted(set(reference) & set(evaluated))
    if overlap:
        shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more"
                                          if len(overlap) > 5 else "")
        raise ValueError(f"the generic-neuron reference sample overlaps the evaluated facts in "
                         f"{len(overlap)} fact(s) ({shown}); hold them out (held_out=) or "
                         "pass --generic FILE built on other facts")
    return 0


def reference_generic(lm: LanguageModel, data: str, languages: Sequence[str], config,
                      rebuild: bool = False,
                      task: Callable[[str, int], Callable[[str], None]] | None = None,
                      cache: dict | None = None,
                      facts: int = REFERENCE_FACTS,
                      held_out: Iterable[str] = (), min_facts: int = MIN_REFERENCE_FACTS,
                      min_relations: int = MIN_REFERENCE_RELATIONS,
                      ) -> tuple[GenericNeurons, Path, bool]:
    """The cached generic-neuron list of ``lm`` on ``data`` (built on first use from a
    reference sample of up to ``facts`` known facts, none of them in ``held_out``: the facts
    the run evaluates, so the list is never tuned on them; the overlap is checked, 0 or an
    error, and counted in ``source["held_out"]``).

    Returns ``(list, path, built)``; ``task(title, total)`` makes a progress callback.
    ``config.generic_share`` sets the threshold (the cached items do not depend on it).
    ``cache`` shares attributions between the lists of several methods, which also share the
    probed reference sample (kept in this process). A pool, or a sample of known facts,
    smaller than ``min_facts`` facts of ``min_relations`` relations is :class:`ThinReference`
    (before anything is probed, where the pool already is).
    """
    everything = reference_pool(data, languages)
    held = set(held_out)
    pool = [fact for fact in everything if fact.id not in held]
    check_reference_size(len(pool), len({f.relation for f in pool}),
                         f"the reference pool of {data} (the run's facts held out)",
                         min_facts, min_relations)
    key = _reference_key(lm, data, languages, config, pool, facts)
    path = reference_path(key)
    if path.exists() and not rebuild:
        found = GenericNeurons.load(path)
        # the key says what it was built from; the digest, that it was not edited since
        if found.source.get("key") == key and found.source.get("digest") == found.digest:
            check_held_out(found.source.get("facts", []), held)
            check_reference_size(found.facts, found.relations, f"the reference sample at {path}",
                                 min_facts, min_relations)
            return found.with_threshold(config.generic_share), path, False
    sample_key = digest({**key, "settings": config.known})  # the same for every method
    if sample_key in _PROBED:  # probed for another method of the run
        chosen, known, problems = _PROBED[sample_key]
    else:
        most = min(len(pool), REFERENCE_POOL)  # the bar stops early once enough are known
        probing = task(f"generic neurons: probing for {facts} known facts (of at most {most})",
                       most) if task else None
        chosen, known, problems = reference_facts(lm, pool, languages, config.known, facts,
                                                  probing)
        if len(_PROBED) >= 8:
            _PROBED.clear()
        _PROBED[sample_key] = chosen, known, problems
    tick = task("generic neurons: reference sample", len(chosen)) if task else None
    items = build_reference(lm, chosen, languages, config, known, tick, cache)
    skipped = [str(s) for s in everything.skipped] + [f"fact {i}: {r}"
                                                       for i, r in problems.items()]
    check_held_out((f.id for f in chosen), held)
    generic = GenericNeurons(items, config.generic_share,
                             {"key": key, "facts": [f.id for f in chosen], "skipped": skipped,
                              "probed": len(known.facts()),
                              "held_out": {"facts": len(held & {f.id for f in everything}),
                                           "overlap": 0},
                              "rebuild": rebuild_command(key)})
    generic.source["digest"] = generic.digest  # checked when the cache is read
    generic.save(path)  # cached even when thin: the probing and attributions are not redone
    check_reference_size(generic.facts, generic.relations,
                         f"the reference sample of {data} (the facts the model knows)",
                         min_facts, min_relations)
    return generic, path, True


def rebuild_command(key: dict) -> str:
    """The command that rebuilds the list of ``key``."""
    s = key["settings"]
    return (f"mkn generic --model {key['model']} --dtype {key['dtype']} --data {key['data']} "
            f"--languages {','.join(key['languages'])} --method {s['method']} "
            f"--steps {s['steps']} --known {s['known']} --reference-facts "
            f"{key['sample']['facts']} --rebuild")

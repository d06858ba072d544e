"""The reference sample of facts the model knows, located once and cached: the list of generic
neurons (:mod:`mkn.localization.generic`) is computed from it.

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
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mkn.attribution.queries import encoding_problems
from mkn.data import in_turn, load_facts
from mkn.localization.generic import FORMAT, GenericNeurons, ReferenceItem, check_held_out
from mkn.localization.knowledge import KnownItems, known_items
from mkn.localization.locate import locate_fact
from mkn.localization.relations import RelationNeurons
from mkn.models.loading import LanguageModel, cache_dir
from mkn.runs.directory import data_fingerprint, digest

REFERENCE_FACTS = 48
REFERENCE_PER_RELATION = 4
REFERENCE_POOL = 1024  # at most this many facts probed to find the reference sample
MIN_REFERENCE_FACTS = 20  # below this, or
MIN_REFERENCE_RELATIONS = 4  # below this, a list says little: not built unless asked
PROBE_CHUNK = 64
RELATION_REFERENCE_FACTS = 6  # known reference facts sought per relation for its list
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


# --- the reference sample ---------------------------------------------------------------------

def reference_pool(data: str, languages: Sequence[str], seed: int = 0):
    """Every fact of ``data`` that has ``languages``, in a seeded random order (bad records
    skipped and listed in ``skipped``)."""
    return load_facts(data, list(languages), seed=seed, lenient=True)


def reference_facts(lm: LanguageModel, pool: Sequence, languages: Sequence[str], criterion: str,
                    facts: int = REFERENCE_FACTS,
                    progress: Callable[[str], None] | None = None,
                    per_relation: int = REFERENCE_PER_RELATION,
                    relations: Iterable[str] | None = None) -> tuple[list, KnownItems,
                                                                     dict[str, str]]:
    """The reference sample: up to ``facts`` facts of ``pool`` known in at least one language,
    at most ``per_relation`` per relation, interleaved by relation (module docstring); with
    ``relations``, only facts of those, and probing stops once each has ``per_relation`` (the
    sample of relation neurons). Returns ``(facts, their probe, {fact id: why it cannot be
    scored})``."""
    wanted = None if relations is None else set(relations)
    if wanted is not None:
        pool = [fact for fact in pool if fact.relation in wanted]
        facts = per_relation * len(wanted)
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
            if known.languages_of(fact.id) and len(by_relation[fact.relation]) < per_relation:
                by_relation[fact.relation].append(fact)
        if sum(len(group) for group in by_relation.values()) >= facts:
            break
    chosen = in_turn(by_relation.values())[:facts]
    return chosen, KnownItems(criterion, list(languages), knowledge), problems


def _reference_key(lm: LanguageModel, data: str, languages: Sequence[str], config,
                   pool: Sequence, facts: int, per_relation: int = REFERENCE_PER_RELATION
                   ) -> dict:
    settings = config.model_dump(include={"method", "steps", "rule", "thresholds", "refine_p",
                                          "matrice_lambda", "matrice_baseline",
                                          "matrice_uniform", "known"})
    return {"format": FORMAT, "model": lm.name, "dtype": str(lm.dtype).removeprefix("torch."),
            "shape": [lm.n_layers, lm.n_neurons], "data": data, "languages": sorted(languages),
            "settings": settings,
            "sample": {"facts": facts, "per_relation": per_relation,
                       "pool": REFERENCE_POOL, "content": data_fingerprint(pool)}}


def reference_path(key: dict, kind: str = "") -> Path:
    """Where the list of ``key`` is cached: ``$MKN_GENERIC_CACHE`` or ``$MKN_CACHE/generic``
    (relation-neuron lists: its ``relations`` folder, ``kind``)."""
    folder = Path(os.environ.get("MKN_GENERIC_CACHE") or cache_dir() / "generic") / kind
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


def _cached_list(cls, path: Path, key: dict, held: set[str], rebuild: bool):
    """The list cached at ``path`` when it was built from ``key`` (what it was built from) and
    not edited since (its digest), its reference facts checked disjoint from ``held``; None
    when there is none to reuse."""
    if rebuild or not path.exists():
        return None
    found = cls.load(path)
    if found.source.get("key") != key or found.source.get("digest") != found.digest:
        return None
    check_held_out(found.source.get("facts", []), held)
    return found


def _reusable(cls, key: dict, kind: str, held: set[str], rebuild: bool,
              shipped: str | os.PathLike | None):
    """``(list, path)``: the list of ``key`` from the cache, else from the folder of prebuilt
    lists ``shipped`` (read only; same file name under ``kind``), when it was built from
    exactly ``key`` and its digest checks; else ``(None, the cache path to build it at)``."""
    path = reference_path(key, kind)
    candidates = [path] + ([Path(shipped) / kind / path.name] if shipped else [])
    for candidate in candidates:
        found = _cached_list(cls, candidate, key, held, rebuild)
        if found is not None:
            return found, candidate
    return None, path


def _built_list(cls, lm: LanguageModel, chosen: Sequence, languages: Sequence[str], config,
                known: KnownItems, threshold: float, key: dict, path: Path, held: set[str],
                everything, problems: dict[str, str], tick: Callable[[str], None] | None,
                cache: dict | None, **source):
    """Locate the reference sample ``chosen`` (:func:`build_reference`), check it disjoint from
    ``held``, and save the list with its provenance (``source`` adds to it) and digest at
    ``path``."""
    items = build_reference(lm, chosen, languages, config, known, tick, cache)
    check_held_out((f.id for f in chosen), held)
    skipped = [str(s) for s in everything.skipped] + [f"fact {i}: {r}"
                                                       for i, r in problems.items()]
    found = cls(items, threshold,
                {"key": key, "facts": [f.id for f in chosen], "skipped": skipped,
                 "probed": len(known.facts()),
                 "held_out": {"facts": len(held & {f.id for f in everything}), "overlap": 0},
                 **source})
    found.source["digest"] = found.digest  # checked when the cache is read
    found.save(path)
    return found


def _probed_once(sample: dict, probe_sample: Callable[[], tuple]) -> tuple:
    """The probed reference sample of ``sample`` (the list's key with only the knowledge
    criterion of its settings: the same for every method), probed once per process: the lists
    of a run's other methods take it from here."""
    sample_key = digest(sample)
    if sample_key not in _PROBED:
        if len(_PROBED) >= 8:
            _PROBED.clear()
        _PROBED[sample_key] = probe_sample()
    return _PROBED[sample_key]


def reference_generic(lm: LanguageModel, data: str, languages: Sequence[str], config,
                      rebuild: bool = False,
                      task: Callable[[str, int], Callable[[str], None]] | None = None,
                      cache: dict | None = None,
                      facts: int = REFERENCE_FACTS,
                      held_out: Iterable[str] = (), min_facts: int = MIN_REFERENCE_FACTS,
                      min_relations: int = MIN_REFERENCE_RELATIONS,
                      shipped: str | os.PathLike | None = None,
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
    (before anything is probed, where the pool already is). ``shipped``: a folder of prebuilt
    lists (e.g. committed beside a study config), read when the cache has none.
    """
    everything = reference_pool(data, languages)
    held = set(held_out)
    pool = [fact for fact in everything if fact.id not in held]
    check_reference_size(len(pool), len({f.relation for f in pool}),
                         f"the reference pool of {data} (the run's facts held out)",
                         min_facts, min_relations)
    key = _reference_key(lm, data, languages, config, pool, facts)
    found, path = _reusable(GenericNeurons, key, "", held, rebuild, shipped)
    if found is not None:
        check_reference_size(found.facts, found.relations, f"the reference sample at {path}",
                             min_facts, min_relations)
        return found.with_threshold(config.generic_share), path, False
    most = min(len(pool), REFERENCE_POOL)  # the bar stops early once enough are known
    chosen, known, problems = _probed_once(
        {**key, "settings": config.known},
        lambda: reference_facts(lm, pool, languages, config.known, facts, task(
            f"generic neurons: probing for {facts} known facts (of at most {most})", most)
            if task else None))
    tick = task("generic neurons: reference sample", len(chosen)) if task else None
    # cached even when thin: the probing and attributions are not redone
    generic = _built_list(GenericNeurons, lm, chosen, languages, config, known,
                          config.generic_share, key, path, held, everything, problems, tick,
                          cache, rebuild=rebuild_command(key))
    check_reference_size(generic.facts, generic.relations,
                         f"the reference sample of {data} (the facts the model knows)",
                         min_facts, min_relations)
    return generic, path, True


def reference_relations(lm: LanguageModel, data: str, languages: Sequence[str], config,
                        relations: Iterable[str], held_out: Iterable[str] = (),
                        per_relation: int = RELATION_REFERENCE_FACTS, rebuild: bool = False,
                        task: Callable[[str, int], Callable[[str], None]] | None = None,
                        cache: dict | None = None, shipped: str | os.PathLike | None = None
                        ) -> tuple[RelationNeurons, Path, bool]:
    """The cached relation-neuron list of ``lm`` for ``relations`` of ``data``
    (:mod:`mkn.localization.relations`): up to ``per_relation`` known facts of each, none of
    them in ``held_out`` (the evaluated facts; the overlap is checked, 0 or an error), located
    like the generic-neuron sample. A relation with too few known facts is listed as not
    covered, not refused. Returns ``(list, path, built)``; ``config.relation_share`` sets the
    threshold; ``shipped`` as for :func:`reference_generic`."""
    relations = sorted(set(relations))
    held = set(held_out)
    everything = reference_pool(data, languages)
    pool = [f for f in everything if f.id not in held and f.relation in relations]
    key = {**_reference_key(lm, data, languages, config, pool, per_relation * len(relations),
                            per_relation), "kind": "relations", "relations": relations}
    found, path = _reusable(RelationNeurons, key, "relations", held, rebuild, shipped)
    if found is not None:
        return found.with_threshold(config.relation_share), path, False
    most = min(len(pool), REFERENCE_POOL)
    chosen, known, problems = _probed_once(
        {**key, "settings": config.known},
        lambda: reference_facts(lm, pool, languages, config.known, progress=task(
            f"relation neurons: probing for {per_relation} known facts of each of "
            f"{len(relations)} relations (of at most {most})", most) if task else None,
            per_relation=per_relation, relations=relations))
    tick = task("relation neurons: reference sample", len(chosen)) if task else None
    found = _built_list(RelationNeurons, lm, chosen, languages, config, known,
                        config.relation_share, key, path, held, everything, problems, tick,
                        cache)
    return found, path, True


def rebuild_command(key: dict) -> str:
    """The command that rebuilds the list of ``key``."""
    s = key["settings"]
    return (f"mkn generic --model {key['model']} --dtype {key['dtype']} --data {key['data']} "
            f"--languages {','.join(key['languages'])} --method {s['method']} "
            f"--steps {s['steps']} --known {s['known']} --reference-facts "
            f"{key['sample']['facts']} --rebuild")

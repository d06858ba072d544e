"""The steps every job shares, in the order a run takes them: prepare (configuration, run
directory, facts, model), probe (which items the model knows), the generic-neuron lists (one per
method, reference facts held out) and, on a parallel backend, every attribution first.

``mkn locate``, ``probe``, ``experiment``, ``reproduce`` and ``demo`` call these; the command line
only adds its progress bars and tables. ``say`` prints a line, ``task(title, total)`` makes a
progress callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkn.attribution.queries import encoding_problems
from mkn.data import load_facts
from mkn.jobs.config import RunConfig, load_run_config
from mkn.localization.backends import Backend, attribution_keys, make_backend, prefetch
from mkn.localization.generic import GenericNeurons, check_held_out
from mkn.localization.knowledge import KnownItems, known_items
from mkn.localization.locate import LocateConfig
from mkn.localization.reference import (
    MIN_REFERENCE_FACTS,
    REFERENCE_FACTS,
    RELATION_REFERENCE_FACTS,
    ThinReference,
    reference_generic,
    reference_relations,
)
from mkn.localization.relations import LeftOut, RelationNeurons
from mkn.models.devices import default_dtype, resolve_device, resolve_dtype
from mkn.models.loading import LanguageModel
from mkn.runs.directory import RunDirectory, data_fingerprint
from mkn.runs.directory import claim as claim_directory

Say = Callable[[str], None]
TaskFactory = Callable[[str, int], Callable[[str], None]]
Load = Callable[[str, str | None, str | None, Any], LanguageModel]  # model, dtype, device, map


def concrete_dtype(dtype: str | None, device: str | None) -> str:
    """``auto``/None -> the dtype it gives on ``device`` (a run records a concrete dtype, so a
    resume on another CPU cannot mix two)."""
    if dtype in (None, "auto"):
        return default_dtype(resolve_device(device))
    return str(resolve_dtype(dtype)[0]).removeprefix("torch.")


@dataclass
class Prepared:
    """A run ready to work: its configuration, facts, languages, model, the metadata its
    records carry and its claimed directory (None when the job writes none)."""

    cfg: RunConfig
    facts: Any  # mkn.data.FactSet
    languages: list[str]
    lm: LanguageModel
    meta: dict
    run: RunDirectory | None


def prepare(config: Path | None, load: Load, say: Say, claim: dict | None = None,
            **flags) -> Prepared:
    """Resolve the configuration (a YAML file and flags), claim the run directory (``claim``:
    keyword arguments of :func:`mkn.runs.directory.claim`, its ``identity`` extended with the
    configuration), load the facts (the sample pinned into the identity), load the model with
    ``load`` (its weights pinned) and keep the facts it can score. A failure leaves a new
    directory as it was."""
    for key in ("languages", "relations"):
        if isinstance(flags.get(key), str):
            flags[key] = [x.strip() for x in flags[key].split(",") if x.strip()]
    cfg = load_run_config(config, **flags)
    asked, cfg.dtype = cfg.dtype, concrete_dtype(cfg.dtype, cfg.device)
    settings = cfg.model_dump(exclude={"locate", "backend", "workers", "gpus_per_worker",
                                       "device", "device_map"})
    run = None
    if claim is not None:  # the lock first: a second writer fails at once, before any read
        identity = {**claim.get("identity", {}), "locate": cfg.locate.model_dump(), **settings}
        run = claim_directory(**{**claim, "identity": identity})
    try:
        facts = load_facts(cfg.data, cfg.languages, cfg.limit, cfg.lenient,
                           seed=cfg.seed if cfg.shuffle else None, relations=cfg.relations,
                           per_relation=cfg.per_relation)
        if not facts:
            raise ValueError(f"no facts to work on: {facts.summary()}")
        languages = cfg.languages or facts.languages
        say(f"data: {facts.summary()}")
        for skipped in facts.skipped:
            say(f"skipped {skipped}")
        sample = {"facts": len(facts), "fact_ids": [f.id for f in facts],
                  "data_fingerprint": data_fingerprint(facts),
                  "skipped": [str(s) for s in facts.skipped], "unaligned": facts.unaligned}
        meta = {**settings, "languages": languages, **sample}
        if run is not None:  # the sample by content: a resume on edited data is refused
            run.pin_all(sample)
        lm = load(cfg.model, asked, cfg.device, cfg.device_map)
        if run is not None:  # the weights by content: a resume against others is refused
            run.pin("weights", lm.weights_digest())
        facts = encodable(lm, facts, languages, cfg.lenient, meta, say)
        # a list file that overlaps the run's facts is refused before the run starts
        for kind, mode, share in ((GenericNeurons, cfg.generic, cfg.locate.generic_share),
                                  (RelationNeurons, cfg.relation_neurons,
                                   cfg.locate.relation_share)):
            if mode not in ("auto", "keep"):
                list_file(kind, mode, share, [f.id for f in facts])
    except BaseException:
        if run is not None:
            run.abandon()  # a failed start leaves the directory as it was
        raise
    return Prepared(cfg, facts, languages, lm, meta, run)


def encodable(lm: LanguageModel, facts, languages: list[str], lenient: bool, meta: dict,
              say: Say):
    """The facts whose every query the model can score: a fact that cannot be (its target
    tokenizes to nothing...) is an error naming it, or, ``lenient``, skipped, named and counted
    (in ``meta`` too)."""
    problems = encoding_problems(lm, facts, languages)
    if not problems:
        return facts
    if not lenient:
        fact_id, reason = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more facts)" if len(problems) > 1 else ""
        raise ValueError(f"fact {fact_id}: {reason}{more}; --lenient skips such facts")
    kept = facts.without(problems)
    for fact_id, reason in problems.items():
        say(f"skipped fact {fact_id}: {reason}")
    if not kept:
        raise ValueError(f"no facts left: all {len(facts)} have queries the model cannot score")
    meta.update({"facts": len(kept), "fact_ids": [f.id for f in kept],
                 "skipped": [str(s) for s in kept.skipped]})
    return kept


def probe(lm: LanguageModel, facts: Sequence, languages: list[str], criterion: str,
          task: TaskFactory, say: Say, title: str = "probe: does the model know it?",
          what: str = "(fact, language) items") -> KnownItems:
    """Which items the model knows (a progress bar, then one line of counts); an error before
    any other work when it knows none."""
    known = known_items(lm, facts, languages, criterion, progress=task(title, len(facts)))
    say(known.describe())
    known.require_some(what)
    return known


def list_file(kind, path: str, threshold: float, held_out: Sequence[str]):
    """A generic- or relation-neuron list file (``kind``) at ``threshold``, its reference
    facts checked disjoint from ``held_out`` (a one-line error naming the file)."""
    loaded = kind.load(Path(path)).with_threshold(threshold)
    try:
        check_held_out([item.fact_id for item in loaded.items], held_out)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return loaded


@dataclass
class GenericLists:
    """The generic-neuron list of each method (``lists``: None when they are kept in the sets)
    and, when kept for want of a reference sample, why (``kept``)."""

    lists: dict[str, GenericNeurons] | None
    kept: str | None = None

    @property
    def digests(self) -> dict[str, str]:
        return {method: g.digest for method, g in (self.lists or {}).items()}

    def of(self, method: str) -> GenericNeurons | None:
        return None if self.lists is None else self.lists[method]


def generic_lists(lm: LanguageModel, data: str, languages: Sequence[str], locate: LocateConfig,
                  methods: Sequence[str], mode: str = "auto", *, task: TaskFactory, say: Say,
                  held_out: Iterable[str] = (), cache: dict | None = None,
                  facts: int = REFERENCE_FACTS, min_facts: int = MIN_REFERENCE_FACTS,
                  run: RunDirectory | None = None, pin: str = "generic_digest",
                  shipped: str | None = None) -> GenericLists:
    """The generic-neuron list of each of ``methods`` (``mode``: ``auto`` builds or reads the
    cached list of ``data``; ``keep`` none; otherwise a list written by ``mkn generic``, for
    every method). The reference sample holds out ``held_out`` (the run's facts; checked, for a
    file too). A reference sample too small for a list (:class:`ThinReference`) keeps generic
    neurons in the sets, with a warning. ``run`` records each list by content digest under
    ``pin`` (a resume with another list is refused). ``shipped``: a folder of prebuilt lists
    read when the cache has none (:func:`mkn.localization.reference.reference_generic`)."""
    held_out = list(held_out)
    if mode == "keep":
        return GenericLists(None)
    if mode != "auto":
        loaded = list_file(GenericNeurons, mode, locate.generic_share, held_out)
        found = GenericLists({method: loaded for method in methods})
    else:
        lists = {}
        cache = {} if cache is None else cache  # the methods share their attributions
        for method in methods:
            config = locate.model_copy(update={"method": method})
            try:
                generic, path, built = reference_generic(
                    lm, data, languages, config, task=task, cache=cache, facts=facts,
                    held_out=held_out, min_facts=min_facts, shipped=shipped)
            except ThinReference as error:
                kept = f"{error}: generic neurons are kept in this run's sets"
                say(f"warning: {kept} (as with --generic keep); --generic FILE takes a list "
                    "built on other data (mkn generic --data ... --out FILE)")
                if run is not None:
                    run.pin(pin, "kept: the reference sample is too small")
                return GenericLists(None, kept)
            held = generic.source.get("held_out", {})
            say(f"generic neurons ({method}, share >= {generic.threshold:g}, {generic.facts} "
                f"reference facts, the run's {held.get('facts', 0)} facts held out: overlap "
                f"{held.get('overlap', 0)}): {len(generic.neurons())}; "
                f"{'built' if built else 'reused'} at {path}")
            lists[method] = generic
        found = GenericLists(lists)
    if run is not None:
        run.pin(pin, found.digests)
    return found


@dataclass
class RelationLists:
    """The relation-neuron list of each method (``lists``: None when relation neurons are kept
    in the sets)."""

    lists: dict[str, RelationNeurons] | None

    @property
    def digests(self) -> dict[str, str]:
        return {method: r.digest for method, r in (self.lists or {}).items()}


def relation_lists(lm: LanguageModel, data: str, languages: Sequence[str], locate: LocateConfig,
                   methods: Sequence[str], relations: Iterable[str], mode: str = "auto", *,
                   task: TaskFactory, say: Say, held_out: Iterable[str] = (),
                   cache: dict | None = None, run: RunDirectory | None = None,
                   pin: str = "relation_digest",
                   per_relation: int = RELATION_REFERENCE_FACTS,
                   shipped: str | None = None) -> RelationLists:
    """The relation-neuron list of each of ``methods`` for ``relations``
    (:mod:`mkn.localization.relations`; ``mode``: ``auto`` builds or reads the cached list of
    ``data``, ``keep`` none, otherwise a list file for every method), its reference facts held
    out from ``held_out`` (checked, for a file too), up to ``per_relation`` of each relation.
    ``run`` pins each list's digest under ``pin``; ``shipped`` as for :func:`generic_lists`."""
    held_out = list(held_out)
    if mode == "keep":
        found = RelationLists(None)
    elif mode != "auto":
        loaded = list_file(RelationNeurons, mode, locate.relation_share, held_out)
        found = RelationLists({method: loaded for method in methods})
    else:
        lists = {}
        cache = {} if cache is None else cache
        for method in methods:
            config = locate.model_copy(update={"method": method})
            listed, path, built = reference_relations(lm, data, languages, config, relations,
                                                      held_out, per_relation, task=task,
                                                      cache=cache, shipped=shipped)
            sizes = listed.sizes()
            uncovered = sorted(set(relations) - set(sizes))
            say(f"relation neurons ({method}, share >= {listed.threshold:g} of a relation's "
                f"reference facts, the run's facts held out: overlap "
                f"{listed.source.get('held_out', {}).get('overlap', 0)}): "
                + (", ".join(f"{r} {n}" for r, n in sizes.items()) or "none")
                + (f"; too few known reference facts (kept in the sets): "
                   f"{', '.join(uncovered)}" if uncovered else "")
                + f"; {'built' if built else 'reused'} at {path}")
            lists[method] = listed
        found = RelationLists(lists)
    if run is not None:
        run.pin(pin, found.digests if found.lists is not None else "keep")
    return found


def left_out(generic: GenericLists, relations: RelationLists | None,
             methods: Sequence[str]) -> dict[str, LeftOut]:
    """What each method's sets leave out: its generic and relation neurons (the experiments'
    ``generic=``)."""
    rel = relations.lists if relations is not None else None
    return {m: LeftOut(generic.of(m), rel[m] if rel is not None else None) for m in methods}


def set_lists(lm: LanguageModel, cfg: RunConfig, languages: Sequence[str], facts: Sequence,
              methods: Sequence[str], *, task: TaskFactory, say: Say,
              run: RunDirectory | None = None, cache: dict | None = None
              ) -> tuple[GenericLists, dict[str, LeftOut]]:
    """The generic and relation-neuron lists a run's sets leave out (``cfg.generic``,
    ``cfg.relation_neurons``), both held out from the run's ``facts``: the generic lists and,
    per method, what its sets leave out."""
    cache = {} if cache is None else cache  # both lists share their attributions
    held_out = [f.id for f in facts]
    generic = generic_lists(lm, cfg.data, languages, cfg.locate, methods, cfg.generic,
                            task=task, say=say, held_out=held_out, run=run, cache=cache)
    relations = relation_lists(lm, cfg.data, languages, cfg.locate, methods,
                               {f.relation for f in facts}, cfg.relation_neurons, task=task,
                               say=say, held_out=held_out, run=run, cache=cache)
    return generic, left_out(generic, relations, methods)


def backend_for(cfg: RunConfig, lm: LanguageModel) -> Backend:
    """The attribution backend a run configuration asks for (a context manager)."""
    return make_backend(cfg.backend, cfg.workers, model_spec=cfg.model, dtype=cfg.dtype, lm=lm,
                        gpus_per_worker=cfg.gpus_per_worker)


def prefetch_attributions(backend: Backend, facts: Sequence, languages: list[str],
                          locate: LocateConfig, methods: Sequence[str],
                          known: KnownItems | None, cache, task: TaskFactory,
                          title: str = "attributions") -> None:
    """Compute every attribution a run of ``methods`` will need on ``backend`` (Ray actors)
    into ``cache``; the measurements then run here, reading it."""
    keys = attribution_keys(facts, languages, locate, tuple(methods), known)
    prefetch(backend, keys, cache, task(title, len(keys)), locate.batch_size)

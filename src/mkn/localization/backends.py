"""Where facts are located: in this process (``local``, the default) or on Ray actors (``ray``).

Backends also compute attributions by cache key (:meth:`attributions`): ``mkn experiment`` and
``mkn reproduce`` with ``--backend ray`` have every attribution their facts need computed on the
actors first (:func:`prefetch`), then measure in this process from the warm cache, so their
results are the same as a local run's.

Why hand-made actor pools rather than Ray Data's ``map_batches`` with an actor class: each actor
must hold one model copy for its whole life (both give that), results must come back in input
order with a bounded number of items in flight (here: ``in_flight`` per actor and a ``window``;
Ray Data can preserve order, but then buffers behind the slowest block), and the results are
Python dataclasses holding tensors, which Ray Data would convert into Arrow/pandas blocks and
back. A few lines of ``ray.wait`` give the order, the bound and the objects as they are.

A backend takes the facts still to do and yields ``(fact, FactResult)`` **in the input order**,
whatever order the work finishes in, so the caller stores facts exactly as a local run would
(the run files are then byte-identical, timings aside).

``RayBackend(workers=N, model_spec=...)`` starts ``N`` actors, each holding one copy of the model
(one GPU each where the cluster has GPUs, else CPU threads shared out between them), and keeps a
bounded number of facts in flight, so memory stays flat on any number of facts. Ray is an
optional extra (``pip install 'mkn[ray]'``) imported only when a Ray backend is used::

    with RayBackend(workers=4, model_spec="gemma-3-270m") as backend:
        run_locate(None, facts, languages, config, out, backend=backend)

The model spec is what each actor loads the model from: a name or path for ``mkn.load_model``,
or a picklable zero-argument callable returning a ``LanguageModel`` (e.g. a module-level function
building a tiny model in a test).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch

from mkn.attribution.api import Attribution, attribute
from mkn.localization.generic import GenericNeurons
from mkn.localization.knowledge import KnownItems
from mkn.localization.locate import (
    AttributionCache,
    FactResult,
    LocateConfig,
    attribution_key,
    locate_fact,
)
from mkn.models.loading import EMBEDDED_MODELS, LanguageModel, load_model

ModelSpec = str | os.PathLike | Callable[[], LanguageModel]
AttributionKey = tuple  # (prompt, target, method, steps, rule): a key of locate_fact's cache

BACKENDS = ("local", "ray")


class Backend(Protocol):
    """Locates facts; ``n_layers`` is the model's (for the run's statistics)."""

    @property
    def n_layers(self) -> int: ...

    def locate(self, facts: Sequence, languages: list[str], config: LocateConfig,
               known: KnownItems | None = None, generic: GenericNeurons | None = None
               ) -> Iterator[tuple[object, FactResult]]: ...

    def attributions(self, keys: Sequence[AttributionKey], batch_size: int | None = None
                     ) -> Iterator[tuple[AttributionKey, Attribution]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc) -> None: ...


class LocalBackend:
    """Facts one after the other with the model of this process.

    ``cache`` (a dict) shares per-query attributions with other work (see ``locate_fact``).
    """

    def __init__(self, lm: LanguageModel, cache: AttributionCache | None = None):
        self.lm = lm
        self.cache = cache

    @property
    def n_layers(self) -> int:
        return self.lm.n_layers

    def locate(self, facts: Sequence, languages: list[str], config: LocateConfig,
               known: KnownItems | None = None, generic: GenericNeurons | None = None
               ) -> Iterator[tuple[object, FactResult]]:
        for fact in facts:
            yield fact, locate_fact(self.lm, fact, languages, config, self.cache, known, generic)

    def attributions(self, keys: Sequence[AttributionKey], batch_size: int | None = None
                     ) -> Iterator[tuple[AttributionKey, Attribution]]:
        for key in keys:
            yield key, attribute_key(self.lm, key, batch_size)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_spec(model_spec: ModelSpec, dtype: str | torch.dtype = "float32",
              device: str = "cpu") -> LanguageModel:
    """The model a spec stands for, on ``device``."""
    if callable(model_spec):
        lm = model_spec()
        if device != "cpu":
            lm.model.to(device)
        return lm
    return load_model(model_spec, dtype=dtype, device=device)


def attribute_key(lm: LanguageModel, key: AttributionKey,
                  batch_size: int | None = None) -> Attribution:
    """The attribution ``locate_fact`` would compute for cache ``key`` (with the run's
    ``batch_size``, as it does), tensors on the CPU."""
    prompt, target, method, steps, rule = key
    result = attribute(lm, prompt, target, method=method, steps=steps, rule=rule,
                       batch_size=batch_size)
    for name in ("scores", "baseline_prob", "completeness_gap"):
        setattr(result, name, getattr(result, name).detach().cpu())
    return result


def result_to_cpu(result: FactResult) -> FactResult:
    """``result`` with its tensors on the CPU (for shipping out of a GPU worker)."""
    for r in result.languages.values():
        r.scores = r.scores.detach().cpu()
    if result.combined_scores is not None:
        result.combined_scores = result.combined_scores.detach().cpu()
    return result


class _Worker:
    """The body of a Ray actor: one model copy, facts located one at a time."""

    def __init__(self, model_spec: ModelSpec, dtype: str, device: str, threads: int):
        torch.set_num_threads(threads)
        self.lm = load_spec(model_spec, dtype, device)

    def n_layers(self) -> int:
        return self.lm.n_layers

    def locate(self, fact, languages: list[str], config: LocateConfig,
               known: KnownItems | None = None,
               generic: GenericNeurons | None = None) -> FactResult:
        return result_to_cpu(locate_fact(self.lm, fact, languages, config, None, known, generic))

    def attribute(self, key: AttributionKey, batch_size: int | None = None) -> Attribution:
        return attribute_key(self.lm, key, batch_size)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("the ray backend needs Ray: pip install 'mkn[ray]' (or ray>=2.9)"
                          ) from None
    return ray


class RayBackend:
    """Facts spread over ``workers`` Ray actors; results come back in input order.

    Args:
        workers: number of actors (model copies).
        model_spec: a name/path for ``mkn.load_model`` or a picklable zero-argument callable
            returning a ``LanguageModel``.
        dtype: the model's dtype (for a name/path spec).
        in_flight: facts queued per actor at once (2: the next is ready when one finishes).
        window: most facts submitted but not yet handed back (bounds the reorder buffer when
            one fact is slow); default ``4 * workers * in_flight``.
        num_gpus: GPUs per actor; default 1 where the cluster has at least ``workers`` GPUs, a
            share of them where it has fewer, 0 where it has none.
        address: the Ray cluster to join (default: the running one, ``$RAY_ADDRESS``, or a new
            local one). Ray is initialized only if it is not already, and shut down on
            ``close()`` only if this backend started it.
        threads: torch threads per actor (default: the cluster's CPUs shared out). Float sums
            can depend on the thread count: a Ray run writes the same bytes as a local run
            with ``torch.set_num_threads(threads)`` on the same machine, and agrees with one
            on other threads within the tolerance the README states.
    """

    def __init__(self, workers: int, model_spec: ModelSpec, dtype: str = "float32",
                 in_flight: int = 2, window: int | None = None, num_gpus: float | None = None,
                 address: str | None = None, threads: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if (not callable(model_spec) and str(model_spec) not in EMBEDDED_MODELS
                and Path(model_spec).expanduser().exists()):
            model_spec = str(Path(model_spec).expanduser().resolve())  # workers may run elsewhere
        self.workers = workers
        self.model_spec = model_spec
        self.dtype = dtype
        self.in_flight = in_flight
        self.window = max(window or 4 * workers * in_flight, workers * in_flight)
        self.num_gpus = num_gpus
        self.address = address
        self.threads = threads
        self._ray = None
        self._started_ray = False
        self._actors: list = []
        self._n_layers: int | None = None

    def _start(self) -> None:
        if self._actors:
            return
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            # worker output would break progress bars; their errors reach us as exceptions
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        resources = ray.cluster_resources()
        cpus = float(resources.get("CPU", 1))
        gpus = float(resources.get("GPU", 0))
        num_gpus = self.num_gpus
        if num_gpus is None:
            num_gpus = min(1.0, gpus / self.workers) if gpus >= 1 else 0.0
        threads = self.threads or max(1, int(cpus) // self.workers)
        num_cpus = min(float(threads), cpus / self.workers)  # every actor fits in the cluster
        device = "cuda" if num_gpus > 0 else "cpu"
        actor_class = ray.remote(_Worker)
        self._actors = [
            actor_class.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(
                self.model_spec, self.dtype, device, threads)
            for _ in range(self.workers)]
        layers = ray.get([actor.n_layers.remote() for actor in self._actors])  # loaded, or why not
        self._n_layers = layers[0]

    @property
    def n_layers(self) -> int:
        self._start()
        return self._n_layers  # type: ignore[return-value]

    def locate(self, facts: Sequence, languages: list[str], config: LocateConfig,
               known: KnownItems | None = None, generic: GenericNeurons | None = None
               ) -> Iterator[tuple[object, FactResult]]:
        facts = list(facts)
        if not facts:
            return
        self._start()
        ray = self._ray
        languages_ref, config_ref = ray.put(list(languages)), ray.put(config)
        generic_ref = ray.put(generic)
        yield from self._ordered(facts, lambda actor, fact: actor.locate.remote(
            fact, languages_ref, config_ref, known.subset([fact.id]) if known else None,
            generic_ref))

    def attributions(self, keys: Sequence[AttributionKey], batch_size: int | None = None
                     ) -> Iterator[tuple[AttributionKey, Attribution]]:
        keys = list(keys)
        if keys:
            self._start()
            yield from self._ordered(keys, lambda actor, key: actor.attribute.remote(
                key, batch_size))

    def _ordered(self, items: list, submit: Callable) -> Iterator[tuple[object, object]]:
        """``(item, result)`` in the order of ``items``, whatever order the actors finish in,
        with at most ``in_flight`` tasks per actor and ``window`` items between the first
        unfinished and the last submitted (memory stays flat on any number of items)."""
        ray = self._ray
        load = [0] * len(self._actors)  # tasks in flight per actor
        pending: dict = {}  # ObjectRef -> (item index, actor index)
        buffer: dict[int, object] = {}  # finished early, waiting for their turn
        submitted = handed = 0
        try:
            while handed < len(items):
                while (submitted < len(items) and submitted - handed < self.window
                       and min(load) < self.in_flight):
                    actor = load.index(min(load))
                    ref = submit(self._actors[actor], items[submitted])
                    pending[ref] = (submitted, actor)
                    load[actor] += 1
                    submitted += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index, actor = pending.pop(ref)
                    load[actor] -= 1
                    buffer[index] = ray.get(ref)
                while handed in buffer:
                    yield items[handed], buffer.pop(handed)
                    handed += 1
        finally:
            for ref in pending:  # stopped early (an error, or the caller stopped reading)
                with contextlib.suppress(Exception):  # finished already, or the actor is gone
                    ray.cancel(ref)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_backend(name: str, workers: int = 1, model_spec: ModelSpec | None = None,
                 dtype: str = "float32", lm: LanguageModel | None = None,
                 gpus_per_worker: float | None = None) -> Backend:
    """The backend called ``name``: ``local`` (needs ``lm``) or ``ray`` (needs ``model_spec``;
    ``gpus_per_worker``: GPUs each actor reserves, default one each where the cluster has them,
    0 for CPU actors)."""
    if name == "local":
        if lm is None:
            raise ValueError("the local backend needs a loaded model")
        return LocalBackend(lm)
    if name == "ray":
        if model_spec is None:
            raise ValueError("the ray backend needs a model spec (name, path or factory)")
        return RayBackend(workers, model_spec, dtype=dtype, num_gpus=gpus_per_worker)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def attribution_keys(facts: Sequence, languages: Sequence[str], config: LocateConfig,
                     methods: Sequence[str], known: KnownItems) -> list[AttributionKey]:
    """The cache keys ``locate_fact`` will ask for: every known (fact, language), its first
    ``max_queries`` prompts, for each method's IG baseline (MATRICE's is AMIG's by default)."""
    keys = {}
    for method in methods:
        settings = config.model_copy(update={"method": method})
        for fact in facts:
            for lang in languages:
                if not known.known(fact.id, lang):
                    continue
                target = fact.languages[lang].object
                for prompt in fact.prompts(lang)[: settings.max_queries]:
                    keys[attribution_key(prompt, target, settings)] = None
    return list(keys)


def prefetch(backend: Backend, keys: Sequence[AttributionKey], cache,
             progress: Callable[[str], None] | None = None,
             batch_size: int | None = None) -> int:
    """Compute the ``keys`` missing from ``cache`` on ``backend`` (rows per pass: the run's
    ``batch_size``, as ``locate_fact`` uses it) and store them there (in key order); returns
    how many were computed."""
    todo = [key for key in keys if key not in cache]
    for key, result in backend.attributions(todo, batch_size):
        cache[key] = result
        if progress:
            progress(key[0])
    return len(todo)

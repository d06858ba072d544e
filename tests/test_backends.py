"""Backends: a Ray run writes the same files as a local one, resumes, and Ray stays optional."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mkn.data.schema import Fact
from mkn.localization.backends import LocalBackend, RayBackend, load_spec, make_backend
from mkn.localization.generic import GenericNeurons, ReferenceItem
from mkn.localization.locate import LocateConfig
from mkn.localization.run import run_locate
from tests.tiny_models import build, knowing, torch_threads, two_relation_facts

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'mkn[ray]'; "
                               "`make test` installs it with the dev extra)")

# A picklable zero-argument factory (a partial of an importable function) is a valid spec.
FACTORY = functools.partial(build, "llama", cached=False)
LANGUAGES = ["en", "zh"]
CONFIG = LocateConfig(method="amig", steps=2, thresholds={"*": 0.1}, degenerate_top_k=4,
                      t_low=0.5, t_high=0.0)
SAME_FILES = ("config.json", "knowledge.jsonl", "neurons.jsonl", "language_agnostic.jsonl",
              "degenerate.jsonl", "done.jsonl")


def facts() -> list[Fact]:
    """Capitals and official languages (known in en and zh, in en only, or not at all), the
    first made slow (many queries) so the others finish first."""
    sample = two_relation_facts()
    slow = sample[0].model_copy(deep=True)
    en = slow.languages["en"]
    slow.languages["en"] = en.model_copy(update={"queries": [
        *en.queries, "[X] has the capital [Y] .", "The capital of [X] is the city [Y] .",
        "In [X] the capital is [Y] .", "[X] : the capital is [Y] ."]})
    return [slow, *sample[1:]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """The tiny model that knows some facts, saved: what every actor and the local run load."""
    root = tmp_path_factory.mktemp("knowing")
    lm = knowing("llama")
    lm.model.save_pretrained(root)
    lm.tokenizer.save_pretrained(root)
    return str(root)


def assert_same_run(a: Path, b: Path) -> None:
    for name in SAME_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    names = sorted(p.name for p in (a / "scores").iterdir())
    assert names == sorted(p.name for p in (b / "scores").iterdir())
    assert len(names) == sum("england" not in f.id for f in facts())  # facts located somewhere
    for name in names:
        left, right = load_file(a / "scores" / name), load_file(b / "scores" / name)
        assert left.keys() == right.keys()
        assert all(left[k].equal(right[k]) for k in left), name


class Recording:
    """A backend that notes which facts it was asked to locate."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []

    @property
    def n_layers(self) -> int:
        return self.inner.n_layers

    def locate(self, facts, languages, config, known=None, generic=None):
        self.asked += [fact.id for fact in facts]
        yield from self.inner.locate(facts, languages, config, known, generic)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("local")
    with torch_threads(1):
        lm = load_spec(model_dir)
        summary = run_locate(lm, facts(), LANGUAGES, CONFIG, out, meta={"model": "tiny"},
                             generic=generic_list())
    return out, summary


def generic_list() -> GenericNeurons:
    """A hand-made generic-neuron list (a neuron of every reference item is generic)."""
    items = [ReferenceItem(f"f{i}", f"P{i % 3}", lang, ((1, 7), (0, i)))
             for i in range(9) for lang in LANGUAGES]
    return GenericNeurons(items)


@pytest.fixture(scope="module")
def ray_backend(model_dir):
    ray = pytest.importorskip("ray", reason="ray is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        # one thread per actor, as the local run: float sums can depend on the thread count
        with RayBackend(workers=2, model_spec=model_dir, threads=1) as backend:
            yield backend
        assert ray.is_initialized(), "the backend shuts down only a Ray it started"
    finally:
        ray.shutdown()


@needs_ray
def test_ray_run_writes_the_same_files_as_a_local_run(local_run, ray_backend, model_dir,
                                                      tmp_path):
    local, summary = local_run
    done = []
    with torch_threads(1):  # the driver probes what the model knows, on the local run's threads
        lm = load_spec(model_dir)
        ray_summary = run_locate(lm, facts(), LANGUAGES, CONFIG, tmp_path,
                                 meta={"model": "tiny"}, on_fact=done.append,
                                 backend=ray_backend, generic=generic_list())
    assert done == [fact.id for fact in facts()]
    assert_same_run(local, tmp_path)
    assert {k: v for k, v in ray_summary.items() if k != "cost"} == \
        {k: v for k, v in summary.items() if k != "cost"}  # timings differ
    assert summary["knowledge"]["per_language"]["zh"] == {"items": 10, "located": 4,
                                                          "skipped": 6, "known": 4}
    records = [json.loads(line) for line in (tmp_path / "neurons.jsonl").read_text().splitlines()]
    assert all([1, 7] not in [n[:2] for n in r["neurons"]] for r in records)  # generic: left out


@needs_ray
def test_ray_resume_skips_done_facts(local_run, ray_backend, model_dir, tmp_path):
    local, _ = local_run
    first = facts()[:2]
    with torch_threads(1):
        lm = load_spec(model_dir)
        run_locate(lm, first, LANGUAGES, CONFIG, tmp_path, meta={"model": "tiny"},
                   generic=generic_list())
        recording, done = Recording(ray_backend), []
        run_locate(lm, facts(), LANGUAGES, CONFIG, tmp_path, resume=True,
                   meta={"model": "tiny"}, on_fact=done.append, backend=recording,
                   generic=generic_list())
    assert recording.asked == [fact.id for fact in facts()[2:]]
    assert done == [fact.id for fact in facts()]
    assert_same_run(local, tmp_path)


@needs_ray
def test_ray_hands_results_back_in_order_with_a_small_window(ray_backend):
    small = RayBackend(workers=2, model_spec=FACTORY, in_flight=1, window=2)
    small._actors, small._ray, small._n_layers = ray_backend._actors, ray_backend._ray, 2
    located = list(small.locate(facts(), LANGUAGES, CONFIG))
    assert [fact.id for fact, _ in located] == [fact.id for fact in facts()]
    assert [r.fact_id for _, r in located] == [fact.id for fact in facts()]


@needs_ray
def test_ray_errors_reach_the_caller(ray_backend):
    bad = facts()[1].model_copy(deep=True)
    bad.languages.pop("zh")
    with pytest.raises(ValueError, match="has no zh"):
        list(ray_backend.locate([facts()[0], bad], LANGUAGES, CONFIG))


def test_local_backend_needs_no_ray():
    code = ("import sys, mkn.localization.run, mkn.localization.backends; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_choice_is_checked():
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("spark")
    with pytest.raises(ValueError, match="needs a loaded model"):
        make_backend("local")
    with pytest.raises(ValueError, match="model spec"):
        make_backend("ray", workers=2)
    with pytest.raises(ValueError, match="workers"):
        RayBackend(workers=0, model_spec=FACTORY)
    assert isinstance(make_backend("local", lm=build("llama")), LocalBackend)


class _Misses(dict):
    """A cache that counts what had to be computed after the prefetch."""

    misses = 0

    def __setitem__(self, key, value):
        self.misses += 1
        super().__setitem__(key, value)


@needs_ray
def test_ray_backend_serves_an_experiment_with_the_same_results(ray_backend, model_dir):
    """``experiment``/``reproduce`` with ``--backend ray``: every attribution is computed on the
    actors (none locally), and the result is the same as a local run's, byte for byte."""
    from mkn.experiments import cross_lingual_editing
    from mkn.localization.backends import attribution_keys, prefetch
    from mkn.localization.knowledge import known_items

    sample, generic = facts(), generic_list()
    with torch_threads(1):
        lm = load_spec(model_dir)
        known = known_items(lm, sample, LANGUAGES, CONFIG.known)
        local = cross_lingual_editing.run(lm, sample, LANGUAGES, CONFIG, known=known,
                                          generic=generic)
        keys = attribution_keys(sample, LANGUAGES, CONFIG, (CONFIG.method,), known)
        cache = {}
        assert prefetch(ray_backend, keys, cache) == len(keys) > 0
        counted = _Misses(cache)
        remote = cross_lingual_editing.run(lm, sample, LANGUAGES, CONFIG, cache=counted,
                                           known=known, generic=generic)
    assert counted.misses == 0
    assert json.dumps(remote, sort_keys=True) == json.dumps(local, sort_keys=True)

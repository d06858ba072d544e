"""Backends: a Ray run writes the same files as a local one, resumes, and Ray stays optional."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mkn.data.schema import Fact
from mkn.localization.locate import LocateConfig
from mkn.localization.run import run_locate
from mkn.runs.backends import LocalBackend, RayBackend, make_backend
from tests.test_experiments import tiny_facts
from tests.tiny_models import build, torch_threads

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'mkn[ray]'; "
                               "`make test` installs it with the dev extra)")

# What every actor builds: a picklable zero-argument factory (a partial of an importable
# function), the same random tiny model as ``build("llama", cached=False)`` here.
FACTORY = functools.partial(build, "llama", cached=False)
LANGUAGES = ["en", "zh"]
CONFIG = LocateConfig(method="amig", steps=2, thresholds={"*": 0.1}, degenerate_top_k=4,
                      t_low=0.5, t_high=0.0)
SAME_FILES = ("config.json", "neurons.jsonl", "language_agnostic.jsonl", "degenerate.jsonl",
              "done.jsonl")


def facts() -> list[Fact]:
    """The tiny capitals, the first made slow (many queries) so the others finish first."""
    capitals = tiny_facts()
    slow = capitals[0].model_copy(deep=True)
    en = slow.languages["en"]
    slow.languages["en"] = en.model_copy(update={"queries": [
        *en.queries, "[X] has the capital [Y] .", "The capital of [X] is the city [Y] .",
        "In [X] the capital is [Y] .", "[X] : the capital is [Y] ."]})
    return [slow, *capitals[1:]]


def assert_same_run(a: Path, b: Path) -> None:
    for name in SAME_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    names = sorted(p.name for p in (a / "scores").iterdir())
    assert names == sorted(p.name for p in (b / "scores").iterdir())
    assert len(names) == len(facts())
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

    def locate(self, facts, languages, config):
        self.asked += [fact.id for fact in facts]
        yield from self.inner.locate(facts, languages, config)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    with torch_threads(1):
        lm = build("llama", cached=False)
        summary = run_locate(lm, facts(), LANGUAGES, CONFIG, out, meta={"model": "tiny"})
    return out, summary


@pytest.fixture(scope="module")
def ray_backend():
    ray = pytest.importorskip("ray", reason="ray is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        with RayBackend(workers=2, model_spec=FACTORY) as backend:
            yield backend
        assert ray.is_initialized(), "the backend shuts down only a Ray it started"
    finally:
        ray.shutdown()


@needs_ray
def test_ray_run_writes_the_same_files_as_a_local_run(local_run, ray_backend, tmp_path):
    local, summary = local_run
    done = []
    ray_summary = run_locate(None, facts(), LANGUAGES, CONFIG, tmp_path, meta={"model": "tiny"},
                             on_fact=done.append, backend=ray_backend)
    assert done == [fact.id for fact in facts()]
    assert_same_run(local, tmp_path)
    assert ray_summary.keys() == summary.keys()


@needs_ray
def test_ray_resume_skips_done_facts(local_run, ray_backend, tmp_path):
    local, _ = local_run
    first = facts()[:2]
    with torch_threads(1):
        run_locate(build("llama", cached=False), first, LANGUAGES, CONFIG, tmp_path,
                   meta={"model": "tiny"})
    recording, done = Recording(ray_backend), []
    run_locate(None, facts(), LANGUAGES, CONFIG, tmp_path, resume=True, meta={"model": "tiny"},
               on_fact=done.append, backend=recording)
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
    code = ("import sys, mkn.localization.run, mkn.runs.backends; "
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

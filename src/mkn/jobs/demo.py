"""The main job (``make demo``): the whole toolkit once, on the real default model.

1. attribute one fact and show its top neurons;
2. probe which of a few built-in facts the model knows, in several languages;
3. find the model's generic neurons on a reference sample of the built-in facts (cached);
4. locate the knowledge neurons of the known items (language-agnostic and degenerate neurons
   included, generic ones left out);
5. cross-lingual editing: suppress/enhance language-agnostic vs single-language neurons, every
   effect beside a random set of the same size and unrelated facts of other relations;
6. write the HTML report.

Sized to finish within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mkn.attribution.api import Attribution, attribute
from mkn.data import load_facts
from mkn.experiments import cross_lingual_editing
from mkn.experiments.common import Setup, write_result
from mkn.jobs.pipeline import TaskFactory, generic_lists, probe
from mkn.localization.generic import GenericNeurons
from mkn.localization.locate import LocateConfig
from mkn.localization.reference import MIN_REFERENCE_FACTS
from mkn.localization.run import run_locate
from mkn.models.loading import LanguageModel
from mkn.report import write_report
from mkn.runs.directory import RunDirectory

LANGUAGES = ["en", "zh", "fr", "es"]
FACTS = 4
STEPS = 12
REFERENCE_FACTS = 16  # the generic-neuron reference sample (built once, then cached)

CONFIG = LocateConfig(method="amig", steps=STEPS)


def identity(model_name: str, dtype: str = "float32") -> dict:
    """What a demo run directory holds: a later demo into it continues it (same identity)."""
    return {"job": "demo", "model": model_name, "dtype": dtype, "languages": LANGUAGES,
            "facts": FACTS,
            "reference_facts": REFERENCE_FACTS, "locate": CONFIG.model_dump()}


def run(lm: LanguageModel, out: Path, model_name: str, progress: TaskFactory,
        say: Callable[[str], None],
        directory: RunDirectory) -> tuple[Attribution, dict, dict, Path, GenericNeurons | None]:
    """Run the demo into ``out``, claimed by the caller (``directory``: an earlier demo of the
    same identity is continued, its finished facts kept); ``progress(title, total)`` returns a
    per-fact callback."""
    example = attribute(lm, "The capital of France is", "Paris", method="amig", steps=STEPS)
    facts = load_facts("builtin", LANGUAGES, limit=FACTS, per_relation=1)  # 4 relations
    config = CONFIG
    cache: dict = {}
    known = probe(lm, facts, LANGUAGES, config.known, progress, say, "probe")
    lists = generic_lists(lm, "builtin", LANGUAGES, config, [config.method], task=progress,
                          say=say, held_out=[f.id for f in facts], cache=cache,
                          facts=REFERENCE_FACTS, min_facts=REFERENCE_FACTS)
    generic = lists.of(config.method)
    if generic is not None and generic.facts < MIN_REFERENCE_FACTS:
        say(f"warning: {generic.facts} reference facts are fewer than the "
            f"{MIN_REFERENCE_FACTS} a meaningful list needs (the built-in data is small); the "
            "demo builds it anyway to show the step, and its specificity reflects that")
    meta = {"job": "demo", "model": model_name, "data": "builtin", "limit": FACTS, "seed": 0,
            "fact_ids": [f.id for f in facts], "generic": "auto"}
    say(f"locating {len(facts)} built-in facts in {', '.join(LANGUAGES)} ({STEPS} steps)")
    summary = run_locate(lm, facts, LANGUAGES, config, out, resume=True, meta=meta,
                         on_fact=progress("locate", len(facts)), cache=cache, known=known,
                         generic=generic, run=directory)
    setup = Setup(experiment="cross-lingual-editing", model=model_name, data="builtin",
                  languages=LANGUAGES, limit=FACTS, seed=0, method="amig", steps=STEPS,
                  facts=[f.id for f in facts], generic="auto")
    say("cross-lingual editing with the same neurons, beside random sets and unrelated facts")
    editing = cross_lingual_editing.run(
        lm, list(facts), LANGUAGES, config,
        progress=progress("cross-lingual editing", len(facts) * cross_lingual_editing.PHASES),
        cache=cache, known=known, generic=generic)
    write_result(out / "experiments", setup, editing, cross_lingual_editing.table(editing))
    report = write_report(out)
    return example, summary, editing, report, generic

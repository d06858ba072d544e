"""The main job (``make demo``): the whole toolkit once, on the real default model.

1. attribute one fact and show its top neurons;
2. locate knowledge neurons of a few built-in facts in several languages (language-agnostic
   and degenerate neurons included);
3. cross-lingual editing: suppress/enhance language-agnostic vs single-language neurons;
4. write the HTML report.

Sized to finish within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mkn.attribution.api import Attribution, attribute
from mkn.data import load_facts
from mkn.experiments import cross_lingual_editing
from mkn.experiments.common import Setup, write_result
from mkn.localization.locate import LocateConfig
from mkn.localization.run import run_locate
from mkn.models.loading import LanguageModel
from mkn.report import write_report

LANGUAGES = ["en", "zh", "fr", "es"]
FACTS = 4
STEPS = 12


def run(lm: LanguageModel, out: Path, model_name: str,
        progress: Callable[[str, int], Callable[[str], None]],
        say: Callable[[str], None]) -> tuple[Attribution, dict, dict, Path]:
    """Run the demo into ``out``; ``progress(title, total)`` returns a per-fact callback."""
    example = attribute(lm, "The capital of France is", "Paris", method="amig", steps=STEPS)
    facts = load_facts("builtin", LANGUAGES, limit=FACTS)
    config = LocateConfig(method="amig", steps=STEPS)
    cache: dict = {}
    meta = {"job": "demo", "model": model_name, "data": "builtin", "limit": FACTS, "seed": 0,
            "fact_ids": [f.id for f in facts]}
    say(f"locating {len(facts)} built-in facts in {', '.join(LANGUAGES)} ({STEPS} steps)")
    summary = run_locate(lm, facts, LANGUAGES, config, out, meta=meta,
                         on_fact=progress("locate", len(facts)), cache=cache)
    setup = Setup(experiment="cross-lingual-editing", model=model_name, data="builtin",
                  languages=LANGUAGES, limit=FACTS, seed=0, method="amig", steps=STEPS,
                  facts=[f.id for f in facts])
    say("cross-lingual editing with the same neurons")
    editing = cross_lingual_editing.run(
        lm, list(facts), LANGUAGES, config,
        progress=progress("cross-lingual editing", len(facts) * cross_lingual_editing.PHASES),
        cache=cache)
    write_result(out / "experiments", setup, editing, cross_lingual_editing.table(editing))
    report = write_report(out)
    return example, summary, editing, report

"""The HTML report: every section from a fake run and a real tiny one, escaping, no external
resources, robustness to missing or broken inputs, and a real headless Chromium rendering."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mkn.data.schema import Fact
from mkn.experiments import cross_lingual_editing, enhancement, fact_checking, injection
from mkn.experiments import localization_quality as lq
from mkn.experiments.common import Setup, write_result
from mkn.interventions.controls import ControlledEffect
from mkn.localization.knowledge import CRITERION_TEXT
from mkn.localization.locate import LocateConfig
from mkn.localization.run import RECORD_FILES, run_locate
from mkn.report import write_report
from mkn.runs.store import RunStore
from tests.tiny_models import knowing, torch_threads

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
LANGS = ["en", "zh"]
N_LAYERS = 4
# (fact id, en object, zh object, known in en, known in zh)
FACTS = [("capital-france", "Paris", "巴黎", True, True),
         (EVIL, EVIL, "柏林", True, False),
         ("capital-japan", "Tokyo", "东京", False, True)]
SECTIONS = ("config", "overview", "neurons", "agnostic", "degenerate", "experiments")
# layers / overlap / agnostic + one figure per experiment, + the controls of three of them
LOCATE_PLOTS, EXPERIMENT_PLOTS = 3, 8  # each experiment with controls: + its controls plot


def _neurons(seed: int, count: int) -> list[list[int]]:
    return [[(seed + 3 * k) % N_LAYERS, (7 * seed + 11 * k) % 64] for k in range(count)]


def fake_locate_run(directory: Path) -> None:
    """A locate run directory as ``mkn locate`` writes it (records through the real store),
    without summary.json (the report computes it)."""
    config = {"locate": LocateConfig(steps=2).model_dump(), "languages": LANGS,
              "model": "tiny-llama", "data": "builtin", "limit": 3, "seed": 0,
              "dtype": "float32", "backend": "local", "facts": len(FACTS),
              "fact_ids": [f[0] for f in FACTS], "skipped": []}
    store = RunStore(directory, config, record_files=RECORD_FILES)
    for number, (fact, en, zh, known_en, known_zh) in enumerate(FACTS):
        neurons = {lang: _neurons(number + i, 5 + 2 * i) for i, lang in enumerate(LANGS)}
        shared = sorted(map(list, {tuple(n) for n in neurons["en"]}
                                   & {tuple(n) for n in neurons["zh"]}))
        records = {"neurons": [], "degenerate": [], "timings": []}
        for lang, target, known in (("en", en, known_en), ("zh", zh, known_zh)):
            records["neurons"].append({
                "fact_id": fact, "relation": "P36", "language": lang, "target": target,
                "queries": 2, "prompts": [f"{EVIL} [Y].", "x [Y]."], "probs": [0.4, 0.1],
                "correct": [known, known], "known": known,
                "neurons": [[layer, index, 0.5 / (k + 1)]
                            for k, (layer, index) in enumerate(neurons[lang])]})
            records["degenerate"].append({
                "fact_id": fact, "language": lang, "candidates": neurons[lang][:4],
                "potential": neurons[lang][:3],
                "pairs": [[neurons[lang][0], neurons[lang][1]],
                          [neurons[lang][0], neurons[lang][2]]]})
            records["timings"].append({"fact_id": fact, "language": lang, "seconds": 1.5 + number})
        records["language_agnostic"] = [{
            "fact_id": fact, "relation": "P36", "languages": LANGS,
            "neurons": shared or [neurons["en"][0]], "soft_neurons": neurons["en"] + neurons["zh"],
            "soft_fraction": 0.5, "known_in": [lang for lang, k in (("en", known_en),
                                                                   ("zh", known_zh)) if k]}]
        store.write(fact, records)


def _setup(name: str) -> Setup:
    return Setup(experiment=name, model="tiny-llama", data="builtin", languages=LANGS,
                 limit=3, seed=0, method="amig", steps=2, facts=[f[0] for f in FACTS])


def _effect(mode: str, effect: float) -> dict:
    """An effect of a three-neuron set beside made-up controls (three random draws, two
    unrelated facts)."""
    return ControlledEffect.record(mode, [(0, 1), (1, 5), (1, 7)], effect, (0.01, -0.02, 0.0),
                                   (-0.05, 0.03), [[(0, 2), (1, 1), (1, 2)]] * 3).to_dict()


KNOWLEDGE = {"criterion": "auto", "definition": CRITERION_TEXT["auto"],
             "per_language": {"en": {"items": 3, "known": 2, "skipped": 1},
                              "zh": {"items": 3, "known": 2, "skipped": 1}}}
CONTROLS = {"draws": 3, "unrelated": 2, "knowledge": KNOWLEDGE}


def fake_experiments(out: Path) -> None:
    """One result of every experiment, summarized by the experiments' own code."""
    items = []
    for number, (fact, *_rest) in enumerate(FACTS):
        for lang in LANGS:
            item = {"fact_id": fact, "language": lang, "unrelated_fact": "capital-france"}
            for k, method in enumerate(lq.METHODS):
                changes = {"enhance_related": 0.5 + k, "enhance_unrelated": 0.05,
                           "suppress_related": -0.4 - 0.1 * k, "suppress_unrelated": -0.02}
                item[method] = {"neurons": 3 + number, "sr": 15.0 + 5 * k + number, **changes,
                                "suppress": _effect("suppress", -0.4 - 0.1 * k),
                                "enhance": _effect("enhance", 0.5 + k)}
            items.append(item)
    result = {"items": items, "summary": lq.summarize(items, lq.METHODS), **CONTROLS}
    write_result(out, _setup("localization-quality"), result, lq.table(result))

    items = []
    for fact, *_rest in FACTS:
        for source in [*LANGS, cross_lingual_editing.AGNOSTIC]:
            suppress = {lang: -0.6 if lang == source else -0.2 for lang in LANGS}
            enhance = {lang: 1.2 if lang == source else 0.3 for lang in LANGS}
            items.append({"fact_id": fact, "source": source, "neurons": 4,
                          "suppress": suppress, "enhance": enhance,
                          "suppress_controls": {k: _effect("suppress", v)
                                                for k, v in suppress.items()},
                          "enhance_controls": {k: _effect("enhance", v)
                                               for k, v in enhance.items()}})
    result = {"items": items, "summary": cross_lingual_editing.summarize(items, LANGS),
              "soft": False, **CONTROLS}
    write_result(out, _setup("cross-lingual-editing"), result,
                 cross_lingual_editing.table(result))

    judgments = [{"fact_id": fact, "relation": "P36", "language": lang, "candidate": cand,
                  "true": truth, "neurons": 2, "score": 0.1 if dkn else -0.1, "dkn_true": dkn,
                  "model_true": model, "random_true": not dkn, "control_score": 0.0}
                 for fact, *_rest in FACTS for lang in LANGS
                 for cand, truth, dkn, model in (("Paris", True, True, lang == "en"),
                                                 ("Rome", False, lang == "zh", False))]
    result = {"train_facts": 2, "test_facts": 3, "skipped_relations": [EVIL],
              "kept_neurons": {}, "judgments": judgments,
              "summary": fact_checking.summarize(judgments, LANGS), **CONTROLS}
    write_result(out, _setup("fact-checking"), result, fact_checking.table(result))

    items = [{"fact_id": EVIL, "weak": "zh", "strong": ["en"], "neurons": 3,
              "before": [[False, False], [0.1, 0.2]], "after": [[True, False], [0.4, 0.3]],
              "unrelated_before": [[True, True], [0.5, 0.6]],
              "unrelated_after": [[True, False], [0.5, 0.4]],
              "controls": _effect("enhance", 2.5)}]
    result = {"items": items, "ineligible_facts": 2, "factor": 2.0,
              "summary": enhancement.summarize(items), **CONTROLS}
    write_result(out, _setup("enhancement"), result, enhancement.table(result))

    def rows(n: int, success: bool) -> list[dict]:
        return [{"prompt": f"{EVIL} [Y]", "new_top1": success, "efficacy": True, "p_new": 0.3}
                for _ in range(n)]

    items = [{"fact_id": fact, "new_from": "capital-france", "neurons": 3,
              "reliability": rows(1, True), "generalization": rows(1, number % 2 == 0),
              "portability": {"zh": rows(1, False)}, "locality": [True, True, number == 0],
              "random": [{"reliability": rows(1, False), "generalization": rows(1, False),
                          "portability": {"zh": rows(1, False)}}]}
             for number, (fact, *_rest) in enumerate(FACTS)]
    result = {"source": "en", "items": items, "skipped": [],
              "summary": injection.summarize(items, ["zh"]), **CONTROLS}
    write_result(out, _setup("injection"), result, injection.table(result))


def images(page: str) -> list[Image.Image]:
    """The inline PNG plots of ``page``, decoded."""
    sources = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in sources]


def assert_self_contained(page: str) -> None:
    external = re.findall(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:[a-z]+:)?//""",
                          page, flags=re.IGNORECASE)
    assert not external, f"external resources: {external}"
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    assert "<link" not in page.lower()
    # one script only, the table sorter, allowed by its hash and nothing else
    from mkn.report.html import _script

    code, digest = _script()
    assert page.lower().count("<script") == 1 and f"<script>{code}</script>" in page
    assert f"script-src '{digest}'" in page


def assert_escaped(page: str) -> None:
    assert ESCAPED in page
    assert EVIL not in page


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    fake_locate_run(run_dir)
    fake_experiments(run_dir / "experiments")
    return run_dir


@pytest.fixture(scope="module")
def fake_report(fake_run) -> Path:
    with torch_threads(1):
        return write_report(fake_run)


def test_report_of_a_fake_run_has_every_section_and_plot(fake_run, fake_report):
    assert fake_report == fake_run / "report.html"
    page = fake_report.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    for title in ("Localization quality", "Cross-lingual editing", "Fact-checking",
                  "Enhancement of weak languages", "Knowledge injection"):
        assert title in page
    plots = images(page)
    assert page.count("<img") == len(plots) == LOCATE_PLOTS + EXPERIMENT_PLOTS
    for plot in plots:
        assert plot.format == "PNG" and plot.width > 300 and plot.height > 200
        assert np.asarray(plot.convert("L")).std() > 10, "a plot is blank"
    assert "No summary.json: statistics computed from the records." in page
    assert "tiny-llama" in page and "seconds" in page  # config and cost
    # the two facts the model gets wrong somewhere are marked (facts, agnostic, degenerate tables)
    assert page.count('<tr class="wrong">') == 2 + 2 + 2
    assert "wrong in zh" in page and "wrong in en" in page
    assert_self_contained(page)
    assert_escaped(page)
    assert not (fake_run / "summary.json").exists()  # the report only reads the run


TINY_FACTS = (("capital-france", "France", "Paris", "法国", "巴黎"),
              (EVIL, "Germany", "Berlin", "德国", "柏林"))


def test_report_of_a_tiny_locate_run(tmp_path):
    torch.set_num_threads(1)
    facts = [Fact(id=fact_id, relation="P36", languages={
        "en": {"subject": s_en, "object": o_en, "queries": ["The capital of [X] is [Y] ."]},
        "zh": {"subject": s_zh, "object": o_zh, "queries": ["[X]的首都是[Y]。"]}})
        for fact_id, s_en, o_en, s_zh, o_zh in TINY_FACTS]
    config = LocateConfig(method="amig", steps=2, thresholds={"*": 0.1}, degenerate_top_k=4,
                          t_low=0.5, t_high=0.0)
    run_dir = tmp_path / "locate"
    with torch_threads(1):
        run_locate(knowing("llama"), facts, LANGS, config, run_dir,
                   meta={"model": "tiny-llama", "data": "inline", "seed": 0, "limit": None})
        fake_experiments(run_dir)  # results next to the records work too
        out = write_report(run_dir, tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html" and not (run_dir / "report.html").exists()
    page = out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "No summary.json" not in page  # the run's own summary.json is used
    # layers and overlap always; the agnostic histogram when the random model shares neurons
    assert len(images(page)) >= 2 + EXPERIMENT_PLOTS
    assert "capital-france" in page and "tiny-llama" in page
    assert_self_contained(page)
    assert_escaped(page)


def test_missing_and_broken_inputs_leave_notes_not_crashes(tmp_path):
    empty = tmp_path / "empty"  # issue 21: a folder that is not a run is not written into
    empty.mkdir()
    with pytest.raises(ValueError, match="empty holds no mkn results .* nothing written"):
        write_report(empty)
    assert list(empty.iterdir()) == []

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    (broken / "neurons.jsonl").write_text('{"fact_id": 1}\n{oops\n', encoding="utf-8")
    (broken / "notes.json").write_text(json.dumps([1, 2]), encoding="utf-8")
    (broken / "strange.json").write_text(json.dumps(
        {"setup": {"experiment": EVIL}, "result": {"summary": {"x": EVIL}}}), encoding="utf-8")
    (broken / "cross-lingual-editing.json").write_text(json.dumps(
        {"setup": {"experiment": "cross-lingual-editing"},
         "result": {"summary": {"en": {"suppress": "oops"}}}}), encoding="utf-8")
    page = write_report(broken).read_text(encoding="utf-8")
    assert "config.json: could not be read" in page
    assert "neurons.jsonl: could not be read" in page
    assert "notes.json: not an experiment result" in page
    assert "Unknown experiment" in page  # shown as stored, escaped
    assert "could not be drawn" in page  # a known experiment with an unexpected shape
    assert_escaped(page)
    assert_self_contained(page)

    with pytest.raises(NotADirectoryError):
        write_report(tmp_path / "missing")


def test_an_edited_config_is_shown_with_a_warning(tmp_path):
    """Issue 21: an edited config.json was shown as if the run had used it."""
    fake_locate_run(tmp_path)
    assert "config.json was changed" not in write_report(tmp_path).read_text(encoding="utf-8")
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    config["locate"]["steps"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "config.json was changed after the run wrote it" in page


def test_interrupted_run_leaves_out_unfinished_facts(tmp_path):
    fake_locate_run(tmp_path)
    with (tmp_path / "neurons.jsonl").open("a", encoding="utf-8") as handle:  # killed mid-fact
        handle.write(json.dumps({"unit": "half-done", "fact_id": "half-done", "language": "en",
                                 "neurons": [], "known": True}) + "\n")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "1 facts left out: unfinished" in page and ">half-done<" not in page
    assert ">capital-france<" in page or "capital-france" in page  # the finished ones shown


# ----------------------------------------------------------------------------- Chromium

PROBE = ('<script>window.addEventListener("load", () => {const all = [...document.images];'
         'document.body.setAttribute("data-probe", "images " + all.filter(i => i.complete '
         '&& i.naturalWidth > 0).length + "/" + all.length);});</script>')


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable; installed with apt-get when missing and possible (root)."""
    path = _find_chromium()
    if path is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       capture_output=True, timeout=900, check=False)
        path = _find_chromium()
    if path is None:
        reason = ("chromium is not installed and could not be installed "
                  "(`make test` installs it: apt-get install chromium)")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing outside can be reached
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, check=False)


def test_chromium_renders_the_report(chromium, fake_report, tmp_path):
    shot = tmp_path / "shot.png"
    run = _run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}",
                        "--window-size=1280,2000", fake_report.resolve().as_uri())
    assert run.returncode == 0, run.stderr[-3000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, f"console messages: {console}"  # the page has no script: no message
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    pixels = np.asarray(image).astype(int).reshape(-1, 3)
    non_white = int((pixels.min(axis=1) < 235).sum())
    colored = int((pixels.max(axis=1) - pixels.min(axis=1) > 80).sum())
    assert non_white > 0.03 * len(pixels), "the screenshot is blank"
    assert colored > 5000, "no coloured plot is visible in the first screen"
    if os.environ.get("MKN_REPORT_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(shot, os.environ["MKN_REPORT_SCREENSHOT"])

    # every embedded plot decodes in the browser (a test-only copy with a probe script)
    check = tmp_path / "check.html"
    page = fake_report.read_text(encoding="utf-8")
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)
    assert policy and "default-src 'none'" in policy.group(1)  # no script, no network
    check.write_text(page.replace(policy.group(0), "").replace("</body>", PROBE + "</body>"),
                     encoding="utf-8")  # the probe needs script: this copy drops the policy
    run = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", check.as_uri())
    assert run.returncode == 0, run.stderr[-3000:]
    total = LOCATE_PLOTS + EXPERIMENT_PLOTS
    assert f'data-probe="images {total}/{total}"' in run.stdout
    assert ESCAPED in run.stdout and "alert(1)" not in run.stdout.replace(ESCAPED, "")


def test_report_draws_the_equal_size_experiments_and_audits(tmp_path):
    from mkn.experiments import audits, shared_sets, size_curves
    from tests.tiny_models import two_relation_facts

    config = LocateConfig(method="amig", steps=2, thresholds={"*": 0.1})
    with torch_threads(1):
        lm = knowing("llama")
        for name, module, options in (
                ("size-curves", size_curves, {"sizes": (1, 2, 5), "draws": 1}),
                ("shared-sets", shared_sets, {"sizes": (1, 2), "draws": 1}),
                ("audits", audits, {"draws": 1})):
            result = module.run(lm, two_relation_facts(), LANGS, config, **options)
            write_result(tmp_path, _setup(name), result, module.table(result))
        page = write_report(tmp_path).read_text(encoding="utf-8")
    for title in ("Methods at equal size", "Language-agnostic sets at equal size",
                  "Audits of the knowledge-neuron thesis", "Paraphrase invariance"):
        assert title in page
    plots = images(page)
    assert len(plots) == 3  # selectivity and specificity curves, shared sets
    for plot in plots:
        assert np.asarray(plot.convert("L")).std() > 10, "a plot is blank"
    assert "could not be drawn" not in page
    assert_self_contained(page)


SCRIPTS = {"zh": "巴黎", "ja": "東京とパリ", "ko": "서울", "hi": "नई दिल्ली", "th": "กรุงเทพ",
           "ar": "القاهرة", "he": "ירושלים"}


def test_plots_draw_every_script_without_a_missing_glyph():
    import warnings

    from mkn.report.plots import _figure, _grouped_bars, _png, _with_rc, font_families

    assert {"Noto Sans CJK JP", "Noto Sans Devanagari", "Noto Sans Thai", "Noto Sans Arabic",
            "Noto Sans Hebrew"} <= set(font_families()), "make test installs the Noto fonts"

    @_with_rc
    def draw() -> str:
        fig, axes = _figure(8, 3)
        _grouped_bars(axes[0], list(SCRIPTS.values()), {"p": [0.5] * len(SCRIPTS),
                                                        "q": [1e-5] * len(SCRIPTS)},
                      "p(gold)", " / ".join(SCRIPTS.values()), log=True)
        return _png(fig)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Gg]lyph.*missing.*")
        assert draw().startswith("data:image/png;base64,")


@pytest.mark.parametrize("lang", sorted(SCRIPTS))
def test_the_set_up_installs_a_font_for_every_script(lang):
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        pytest.skip("fontconfig is not installed")
    found = subprocess.run([fc_list, f":lang={lang}", "family"], capture_output=True, text=True)
    assert found.stdout.strip(), f"no font covers {lang}: make test installs fonts-noto-*"


def test_fact_and_neuron_pages_link_both_ways_and_escape(fake_run, fake_report):
    from mkn.report.pages import fact_href, neuron_href

    pages = list((fake_run / "report").rglob("*.html"))
    assert len(list((fake_run / "report" / "facts").glob("*.html"))) == len(FACTS)
    for page in [fake_report, *pages]:
        text = page.read_text(encoding="utf-8")
        assert EVIL not in text and "Content-Security-Policy" in text, page
    index = fake_report.read_text(encoding="utf-8")
    evil_page = fact_href(EVIL)
    assert f'href="{evil_page}"' in index and (fake_run / evil_page).exists()
    record = json.loads((fake_run / "neurons.jsonl").read_text().splitlines()[0])
    layer, index_, _ = record["neurons"][0]
    neuron_page = (fake_run / neuron_href(layer, index_)).read_text(encoding="utf-8")
    fact_page = (fake_run / fact_href(record["fact_id"])).read_text(encoding="utf-8")
    assert neuron_href(layer, index_, "../") in fact_page  # fact -> neuron
    assert fact_href(record["fact_id"], "../") in neuron_page  # neuron -> fact
    assert f"blocks.{layer}.mlp.hook_post" in neuron_page


def test_a_thousand_facts_in_ten_languages_build_fast_with_a_small_index(tmp_path):
    """Synthetic records of 1,000 facts x 10 languages: the report and its pages build in under
    a minute and the index stays under 2 MB."""
    import random
    import time

    rng = random.Random(0)
    languages = [f"l{i}" for i in range(10)]
    pool = [(rng.randrange(18), rng.randrange(2048)) for _ in range(3000)]
    run = tmp_path / "big"
    run.mkdir()
    neurons, agnostic = [], []
    for f in range(1000):
        fact = f"fact-{f:04d}"
        sets = {}
        for lang in languages:
            chosen = sorted(set(rng.sample(pool, 20)))
            sets[lang] = set(chosen)
            neurons.append({"unit": fact, "fact_id": fact, "relation": f"P{f % 40}",
                            "language": lang, "target": f"o{f}", "queries": 1,
                            "prompts": ["x [Y]"], "probs": [0.5], "correct": [True],
                            "known": True, "generic": [],
                            "neurons": [[a, b, rng.random()] for a, b in chosen]})
        shared = sorted(set.intersection(*sets.values()))
        agnostic.append({"unit": fact, "fact_id": fact, "relation": f"P{f % 40}",
                         "languages": languages, "neurons": [list(n) for n in shared],
                         "soft_neurons": [], "soft_fraction": 0.5})
    for name, rows in (("neurons", neurons), ("language_agnostic", agnostic)):
        (run / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.perf_counter()
    with torch_threads(2):
        report = write_report(run)
    seconds = time.perf_counter() - started
    assert seconds < 60, f"{seconds:.0f} s"
    assert report.stat().st_size < 2 * 2**20, report.stat().st_size
    assert len(list((run / "report" / "facts").glob("*.html"))) == 1000
    assert len(list((run / "report" / "neurons").glob("*.html"))) == len(set(pool) & {
        (n[0], n[1]) for r in neurons for n in r["neurons"]})


MULTI_SCRIPT = {"en": "Paris", "zh": "巴黎", "ja": "東京", "ko": "서울", "hi": "नई दिल्ली",
                "th": "กรุงเทพมหานคร", "ar": "القاهرة", "he": "ירושלים"}


def test_chromium_renders_every_script_and_the_tables_sort_under_the_policy(chromium, tmp_path):
    """A report whose facts are in eight scripts: the page renders (no console message: the
    one inline script is allowed by its CSP hash and runs), every table with rows gets its
    filter box, right-to-left cells are marked, and a screenshot is drawn."""
    run = tmp_path / "multi"
    run.mkdir()
    rows = []
    for number, (lang, target) in enumerate(MULTI_SCRIPT.items()):
        for fact in (f"capital-{i}" for i in range(12)):  # enough rows for a filter box
            rows.append({"unit": fact, "fact_id": fact, "relation": "P36", "language": lang,
                         "target": f"{target} {EVIL}" if lang == "ar" else target,
                         "queries": 1, "prompts": [f"{target} [Y]"], "probs": [0.4],
                         "correct": [True], "known": True, "generic": [],
                         "neurons": [[number % N_LAYERS, 7, 0.5], [1, number, 0.2]]})
    (run / "neurons.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                               for r in rows), encoding="utf-8")
    with torch_threads(1):
        report = write_report(run)
    page = report.read_text(encoding="utf-8")
    assert EVIL not in page and 'dir="auto"' in page
    shot = tmp_path / "shot.png"
    done = _run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}",
                         "--window-size=1280,2400", report.resolve().as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, f"console messages (a blocked script?): {console}"
    assert Image.open(shot).size == (1280, 2400)
    dom = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", report.resolve().as_uri())
    sortable = page.count('class="sortable')
    assert sortable and dom.stdout.count('title="sort"') >= sortable  # the script ran
    assert dom.stdout.count('class="filter"') == page.count(' filterable"') > 0
    for target in MULTI_SCRIPT.values():
        assert target in dom.stdout


def test_changes_spanning_orders_of_magnitude_get_a_symmetric_log_axis():
    from mkn.report.plots import _figure, _grouped_bars, _with_rc

    @_with_rc
    def scale(values) -> str:
        fig, axes = _figure(4, 3)
        _grouped_bars(axes[0], ["en", "zh", "fr"], {"enhance": values}, "change", "t",
                      changes=True)
        return axes[0].get_yscale()

    assert scale([140.0, 2.0, 0.5]) == "symlog"  # a 14,000% bar beside 50-200%
    assert scale([0.9, -0.5, 2.0]) == "linear"


def test_report_never_replaces_a_page_it_did_not_write(fake_run, tmp_path):
    """Issue 21: ``mkn report RUN --out DIR/index.html`` replaced a foreign index.html and
    DIR/report/neurons.html."""
    (tmp_path / "index.html").write_text("<p>my site</p>", encoding="utf-8")
    with pytest.raises(ValueError, match="index.html exists and was not written by mkn"):
        write_report(fake_run, tmp_path / "index.html")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "neurons.html").write_text("<p>mine</p>", encoding="utf-8")
    with pytest.raises(ValueError, match="neurons.html exists and was not written by mkn"):
        write_report(fake_run, tmp_path / "fresh.html")
    assert (tmp_path / "index.html").read_text(encoding="utf-8") == "<p>my site</p>"
    assert not (tmp_path / "fresh.html").exists()
    with torch_threads(1):
        ours = write_report(fake_run, tmp_path / "other" / "r.html")
        write_report(fake_run, ours)  # its own output is replaced


def test_experiment_reports_show_their_sets_controls_and_small_samples(tmp_path):
    """Issue 22 item 11: the sets an experiment intervened on were in neither its report nor
    its export; controls were only in tables; intervals on 2-3 facts had no warning; an
    experiment directory's overview said "nothing was located here"."""
    fake_experiments(tmp_path)
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "nothing was located here" not in page
    assert "An experiment run (localization-quality" in page
    assert page.count("Effect beside its controls") >= 3  # one plot per experiment with them
    assert "The neuron sets this experiment suppressed, enhanced or edited" in page
    assert "(0, 1), (1, 5), (1, 7)" in page and "3 random, 2 unrelated fact" in page
    assert "(! only 3 facts)" in page  # every interval here rests on the 3 fake facts


def test_log_axes_label_their_ticks_as_numbers():
    """Issue 22 item 11: the log formatter emitted mathtext ($\\mathdefault{10^{1}}$), shown
    raw because the reports turn mathtext off."""
    from mkn.report.plots import _figure, _grouped_bars, _with_rc

    @_with_rc
    def labels(values, **kind) -> list[str]:
        fig, axes = _figure(4, 3)
        _grouped_bars(axes[0], ["en", "zh", "fr"], {"x": values}, "y", "t", **kind)
        fig.canvas.draw()
        return [t.get_text() for t in axes[0].get_yticklabels() if t.get_text()]

    for values, kind in (([0.001, 10.0, 3.0], {"log": True}),
                         ([140.0, 2.0, 0.5], {"changes": True})):
        shown = labels(values, **kind)
        assert shown and not any("$" in text or "mathdefault" in text for text in shown), shown
        assert all(float(text.replace("\u2212", "-")) == float(text.replace("\u2212", "-"))
                   for text in shown)

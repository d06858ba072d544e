"""CLI and run configuration: validation errors, help, locate on a tiny model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mkn.cli import app
from mkn.jobs.config import load_run_config
from tests.test_experiments import tiny_facts

runner = CliRunner()


def test_every_command_has_help():
    for command in ("attribute", "locate", "experiment", "demo", "report"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--model" in result.output or command == "report"


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: some/dir\nlanguages: [en, zh]\nlimit: 5\n"
                    "locate:\n  method: matrice\n  steps: 7\n  thresholds: {en: 0.3}\n")
    cfg = load_run_config(path, steps=3, limit=None)
    assert cfg.model == "some/dir" and cfg.languages == ["en", "zh"] and cfg.limit == 5
    assert cfg.locate.method == "matrice" and cfg.locate.steps == 3  # the flag wins


@pytest.mark.parametrize("text, message", [
    ("limit: 0\n", "limit: Input should be greater than or equal to 1"),
    ("locate:\n  method: nope\n", "locate.method: unknown method 'nope'"),
    ("locate:\n  thresholds: {en: 3}\n", "threshold for 'en' must be in [0, 1]"),
    ("modle: x\n", "modle: Extra inputs are not permitted"),
    ("languages: [en, en]\n", "duplicate languages"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_config_validation_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_run_config(path)
    assert str(path) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)  # issue 21: one line (YAML errors took 4-7)


def test_a_non_utf8_or_tabbed_yaml_is_one_line_naming_the_file(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError) as error:
        load_run_config(latin)
    assert str(error.value).startswith(f"{latin}: not UTF-8 text (byte 10")
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("locate:\n\tsteps: 3\n")
    with pytest.raises(ValueError) as error:
        load_run_config(tabbed)
    assert "line 2, column 1" in str(error.value) and "\n" not in str(error.value)


def test_missing_config_file_is_clear(tmp_path):
    result = runner.invoke(app, ["locate", "--config", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_errors_with_brackets_are_printed_verbatim(tiny_dir):
    result = runner.invoke(app, ["attribute", "--model", str(tiny_dir / "model"), "--prompt",
                                 "The capital of [X] is", "--target", "Paris"])
    assert result.exit_code == 2 and "still contains [X]" in result.output


def test_locate_command_on_a_local_model_dir(tiny_dir, tmp_path):
    out = tmp_path / "run"
    args = ["locate", "--model", str(tiny_dir / "model"), "--data",
            f"jsonl:{tiny_dir / 'facts.jsonl'}", "--languages", "en,zh", "--limit", "2",
            "--steps", "2", "--out", str(out), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # issue 22: the default --generic auto on 3 other facts of 1 relation builds no list from
    # them; the run says so and keeps the generic neurons
    assert "has 3 facts of 1 relations, too few for a generic-neuron list" in result.output
    assert "generic neurons are kept in this run's sets" in result.output
    assert "probing" not in result.output
    neurons = [json.loads(line) for line in (out / "neurons.jsonl").read_text().splitlines()]
    assert [(r["fact_id"], r["language"]) for r in neurons] == [
        ("capital-france", "en"), ("capital-france", "zh"),
        ("capital-germany", "en"), ("capital-germany", "zh")]
    config = json.loads((out / "config.json").read_text())
    assert config["locate"]["steps"] == 2 and config["fact_ids"] == ["capital-france",
                                                                      "capital-germany"]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len((out / "neurons.jsonl").read_text().splitlines()) == 4
    reported = runner.invoke(app, ["report", str(out)])
    assert reported.exit_code == 0, reported.output
    assert "capital-france" in (out / "report.html").read_text()
    missing = runner.invoke(app, ["report", str(out / "nope")])
    assert missing.exit_code == 2 and "nope" in missing.output


def _experiment(name: str, tiny_dir, out, *extra: str) -> dict:
    """``mkn experiment NAME`` on the tiny model and facts; the saved ``NAME.json``."""
    result = runner.invoke(app, [
        "experiment", name, "--model", str(tiny_dir / "model"), "--data",
        f"jsonl:{tiny_dir / 'facts.jsonl'}", "--languages", "en,zh", "--limit", "2",
        "--steps", "2", "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / f"{name}.json").read_text())


def test_experiment_command_names_setup(tiny_dir, tmp_path):
    saved = _experiment("cross-lingual-editing", tiny_dir, tmp_path, "--seed", "3")
    assert saved["setup"]["seed"] == 3 and saved["setup"]["model"] == str(tiny_dir / "model")
    assert saved["setup"]["facts"] == ["capital-france", "capital-germany"]
    assert (tmp_path / "cross-lingual-editing.md").read_text().startswith("cross-lingual")
    bad = runner.invoke(app, ["experiment", "nope"])
    assert bad.exit_code == 2 and "unknown experiment 'nope'" in bad.output
    bad = runner.invoke(app, ["experiment", "injection", "--set", "lambda=8"])
    assert bad.exit_code == 2 and "unknown option 'lambda'" in bad.output
    saved = _experiment("enhancement", tiny_dir, tmp_path / "enh", "--set", "factor=3")
    assert saved["setup"]["options"] == {"factor": 3.0} and saved["result"]["factor"] == 3.0
    # the same directory with other settings: refused unless resumed with the same ones
    again = runner.invoke(app, ["experiment", "enhancement", "--model", str(tiny_dir / "model"),
                                "--data", f"jsonl:{tiny_dir / 'facts.jsonl'}", "--languages",
                                "en,zh", "--limit", "2", "--steps", "3", "--out",
                                str(tmp_path / "enh"), "--quiet", "--resume", "--set",
                                "factor=3"])
    assert again.exit_code == 2 and "other settings" in again.output
    assert "locate.steps: 2 -> 3" in " ".join(again.output.split())


def test_locate_killed_with_sigkill_then_resumed_equals_uninterrupted(tiny_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from mkn.data import write_facts
    from mkn.data.schema import Fact

    base = tiny_facts()
    facts = [Fact(id=f"fact-{i:02d}", relation="P36", languages=base[i % 5].languages)
             for i in range(24)]
    write_facts(facts, tmp_path / "facts.jsonl")

    def command(out):
        return [sys.executable, "-c", "from mkn.cli import main; main()", "locate", "--model",
                str(tiny_dir / "model"), "--data", f"jsonl:{tmp_path / 'facts.jsonl'}",
                "--languages", "en,zh", "--steps", "2", "--out", str(out), "--quiet"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = killed / "done.jsonl"
        if done.exists() and len(done.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len((killed / "done.jsonl").read_text().splitlines())
    assert 3 <= finished < 24, "the kill should land mid-run"
    subprocess.run([*command(killed), "--resume"], env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(command(clean), env=env, check=True, capture_output=True)
    for name in ("neurons", "language_agnostic", "degenerate", "done"):
        assert (killed / f"{name}.jsonl").read_text() == (clean / f"{name}.jsonl").read_text()
    assert (killed / "config.json").read_text() == (clean / "config.json").read_text()
    located = sum("england" not in f.languages["en"].subject.lower() for f in facts)
    assert len(list((killed / "scores").glob("*.safetensors"))) == located == 20


def test_progress_prints_lines_when_not_a_terminal(capsys, monkeypatch):
    """CI logs and nohup get plain progress lines (done/total, rate, ETA)."""
    from mkn import cli

    monkeypatch.setattr(cli.ProgressBars, "LOG_EVERY", 0.0)
    with cli.ProgressBars() as bars:
        tick = bars.task("locate", 2)
        tick("fact-a")
        tick("fact-b")
    out = capsys.readouterr().out
    assert "locate: 1/2 done" in out and "locate: 2/2 done" in out and "ETA" in out
    with cli.ProgressBars(quiet=True) as bars:
        bars.task("locate", 1)("fact-a")
    assert "locate" not in capsys.readouterr().out


def test_a_knowledge_filter_that_leaves_nothing_is_a_clear_error(tiny_dir, tmp_path):
    from mkn.data import write_facts

    england = [f for f in tiny_facts() if "england" in f.id]  # the model was never taught it
    write_facts(england, tmp_path / "england.jsonl")
    for command in (["locate"], ["experiment", "cross-lingual-editing"]):
        result = runner.invoke(app, [*command, "--model", str(tiny_dir / "model"), "--data",
                                     f"jsonl:{tmp_path / 'england.jsonl'}", "--languages",
                                     "en,zh", "--steps", "2", "--known", "greedy", "--out",
                                     str(tmp_path / command[-1]), "--quiet"])
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert "--known greedy" in message and "en: 0 of 1 known, zh: 0 of 1 known" in message
    assert not (tmp_path / "locate" / "neurons.jsonl").exists()


def test_probe_command_counts_what_the_model_knows(tiny_dir, tmp_path):
    result = runner.invoke(app, ["probe", "--model", str(tiny_dir / "model"), "--data",
                                 f"jsonl:{tiny_dir / 'facts.jsonl'}", "--out",
                                 str(tmp_path / "probe"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "| en | 5 | no candidates | 4 (80%) | 4 (80%) |" in result.output
    assert len((tmp_path / "probe" / "knowledge.jsonl").read_text().splitlines()) == 10
    # a probe run is read by report and export like any run (its stored records)
    exported = runner.invoke(app, ["export", str(tmp_path / "probe"), "--format", "csv"])
    assert exported.exit_code == 0, exported.output
    items = (tmp_path / "probe" / "export" / "items.csv").read_text().splitlines()
    assert len(items) == 1 + 10
    reported = runner.invoke(app, ["report", str(tmp_path / "probe")])
    assert reported.exit_code == 0, reported.output


def test_generic_command_builds_then_reuses_the_cached_list(tiny_dir, tmp_path):
    args = ["generic", "--model", str(tiny_dir / "model"), "--data",
            f"jsonl:{tiny_dir / 'facts.jsonl'}", "--languages", "en", "--steps", "2",
            "--known", "any", "--out", str(tmp_path / "list.json"), "--quiet"]
    thin = runner.invoke(app, args)  # issue 22: 5 facts of 1 relation are refused at once
    assert thin.exit_code == 2 and "has 5 facts of 1 relations, too few" in thin.output
    assert "--allow-thin builds it anyway" in thin.output and "probing" not in thin.output
    args.append("--allow-thin")
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "built:" in first.output and "rebuild with: mkn generic" in first.output
    assert "reference facts of 1 relations, fewer than the 20" in first.output, first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "cached:" in again.output
    assert json.loads((tmp_path / "list.json").read_text())["format"] == 2
    # issue 21: a cached list edited by hand (every item lists many neurons) is not trusted
    cached = Path(" ".join(again.output.split()).split("cached: ")[1].split(";")[0])
    listed = json.loads(cached.read_text())
    for item in listed["items"]:
        item["neurons"] = [[layer, index] for layer in range(2) for index in range(8)]
    cached.write_text(json.dumps(listed))
    rebuilt = runner.invoke(app, args)
    assert rebuilt.exit_code == 0 and "built:" in rebuilt.output, rebuilt.output
    assert json.loads(cached.read_text())["items"] != listed["items"]


def test_usage_errors_are_one_line_naming_the_option():
    """Issue 21: typer's usage errors printed a 3-line box; mkn prints one line with exit 2."""
    import subprocess
    import sys

    for args, option in ((["locate", "--steps", "0"], "--steps"),
                         (["reproduce", "--limit", "1"], "--limit"),
                         (["locate", "--bogus"], "--bogus")):
        done = subprocess.run([sys.executable, "-m", "mkn.cli", *args], capture_output=True,
                              text=True, timeout=300)
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (args, lines)
        assert lines[0].startswith("error: ") and option in lines[0], lines
        assert f"mkn {args[0]} --help lists the options" in lines[0]


def test_reproduce_refuses_a_foreign_results_page_before_the_study(tmp_path):
    """Issue 21: the foreign page is refused at once, before a long study, and nothing is
    written."""
    import subprocess
    import sys

    page = tmp_path / "RESULTS.md"
    page.write_text("# my own results\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mkn.cli", "reproduce", "--limit", "2",
                           "--results", str(page), "--out", str(tmp_path / "study")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "exists and was not written by mkn" in done.stdout
    assert page.read_text(encoding="utf-8") == "# my own results\n"
    assert not (tmp_path / "study").exists()


def test_version():
    from mkn import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mkn {__version__}"


def test_help_piped_into_a_reader_that_stops_early_ends_quietly():
    """`mkn reproduce --help | head -1`: the closed pipe ended in a three-part traceback
    (mkn's handler named click's Abort, which typer's vendored click does not have)."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "mkn.cli", "reproduce", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "40"})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # the reader goes away before the help is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err and "AttributeError" not in err, err


def test_every_option_shows_its_default_and_experiments_come_from_the_registry():
    """Issue 22 item 9: --method, --steps, --seed, --limit and --data showed no default (they
    default to None so that a --config file can set them; the help now says what None means,
    from the run configuration's own defaults)."""
    import re

    from mkn.experiments import EXPERIMENTS
    from mkn.localization.locate import LocateConfig

    commands = ("attribute", "trace", "locate", "experiment", "probe", "generic", "relations",
                "reproduce", "demo", "report", "export")
    for command in commands:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"},
                               terminal_width=400)
        assert result.exit_code == 0, result.output
        options = [line for line in result.output.splitlines()
                   if re.match(r"^│ +-", line) and "--help" not in line]
        assert options, command
        for line in options:
            assert "default" in line, (command, line)
    help_text = runner.invoke(app, ["locate", "--help"], env={"COLUMNS": "400"},
                              terminal_width=400).output
    assert f"[default: ({LocateConfig().method}, or --config's)]" in help_text
    assert "--rule" in help_text
    experiment_help = runner.invoke(app, ["experiment", "--help"], env={"COLUMNS": "400"},
                                    terminal_width=400).output
    for name in EXPERIMENTS:
        assert name in experiment_help, name


def test_a_heartbeat_line_at_least_every_period_when_piped(capsys):
    """Issue 22 item 6: progress ticked once per finished item, so a long item printed
    nothing for minutes when the output was not a terminal."""
    import time

    from mkn.cli import Heartbeat, ProgressBars

    with Heartbeat("loading x", every=0.2):
        time.sleep(0.75)
    beats = [line for line in capsys.readouterr().out.splitlines() if "still working" in line]
    assert len(beats) >= 2 and beats[0].startswith("loading x ... still working, elapsed")
    ProgressBars.LOG_EVERY, saved = 0.2, ProgressBars.LOG_EVERY
    try:
        with ProgressBars() as bars:
            tick = bars.task("locate", total=3)
            tick("fact-1 en")
            time.sleep(0.75)  # the second item takes long
    finally:
        ProgressBars.LOG_EVERY = saved
    out = capsys.readouterr().out
    assert "locate: 1/3 done (last: fact-1 en) ... still working" in out, out


def test_attribute_output_is_not_cut_at_80_columns_when_piped(tiny_dir):
    """Issue 22 item 6: piped output wrapped long lines at 80 columns."""
    prompt = ("The capital of France is , the old city of the French king and the first city "
              "of France , is")
    result = runner.invoke(app, ["attribute", "--model", str(tiny_dir / "model"), "--prompt",
                                 prompt, "--target", "Paris", "--steps", "2"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "->" in line)
    assert repr(prompt) in header and "'Paris'" in header and len(header) > 100
    assert "method amig" in result.output  # the default, as locate's


def test_relation_neurons_option_auto_keep_and_a_bad_file(tiny_dir, tmp_path):
    """Issue 25: --relation-neurons auto (the default) says which relations have a list and
    which have too few known reference facts; keep builds none; a missing file is one line."""
    base = ["locate", "--model", str(tiny_dir / "model"), "--data",
            f"jsonl:{tiny_dir / 'facts.jsonl'}", "--languages", "en,zh", "--limit", "2",
            "--steps", "2", "--quiet"]
    auto = runner.invoke(app, [*base, "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    said = " ".join(auto.output.split())
    assert "relation neurons (amig, share >= 0.5" in said and "overlap 0" in said
    identity = json.loads((tmp_path / "auto" / "mkn-run.json").read_text())
    assert "relation_digest" in json.dumps(identity)
    kept = runner.invoke(app, [*base, "--out", str(tmp_path / "keep"), "--relation-neurons",
                               "keep"])
    assert kept.exit_code == 0, kept.output
    assert "relation neurons (" not in kept.output
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--relation-neurons",
                              str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "relation-neuron list" in bad.output
    assert "none.json" in bad.output and not (tmp_path / "bad").exists()


def test_relations_command_builds_shows_and_writes_a_list(tiny_dir, tmp_path):
    """`mkn relations`: the list of each relation with its reference facts, the cached path,
    a copy for --relation-neurons FILE that a run then reads, held-out facts checked."""
    data = ["--model", str(tiny_dir / "model"), "--data", f"jsonl:{tiny_dir / 'facts.jsonl'}",
            "--languages", "en,zh", "--steps", "2", "--quiet"]
    copy = tmp_path / "relations.json"
    built = runner.invoke(app, ["relations", *data, "--held-out",
                                "capital-france,capital-germany", "--out", str(copy)],
                          env={"COLUMNS": "200"})
    assert built.exit_code == 0, built.output
    assert "reference facts" in built.output
    assert "built:" in built.output or "cached:" in built.output  # the suite shares a cache
    from mkn.localization.relations import RelationNeurons

    listed = RelationNeurons.load(copy)
    assert listed.source["facts"] and not {"capital-france", "capital-germany"} & set(
        listed.source["facts"])
    run = runner.invoke(app, ["locate", *data, "--limit", "2", "--out", str(tmp_path / "r"),
                              "--relation-neurons", str(copy)])
    assert run.exit_code == 0, run.output  # its facts were held out of the list
    unheld = tmp_path / "unheld.json"
    assert runner.invoke(app, ["relations", *data, "--out", str(unheld)]).exit_code == 0
    clash = runner.invoke(app, ["locate", *data, "--limit", "2", "--out", str(tmp_path / "c"),
                                "--relation-neurons", str(unheld)])
    if {"capital-france", "capital-germany"} & set(RelationNeurons.load(unheld).source["facts"]):
        assert clash.exit_code == 2 and "overlaps the evaluated facts" in clash.output
        assert not (tmp_path / "c").exists()

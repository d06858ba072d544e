"""A run directory is sacred: owned, locked, verified on resume, repaired, never foreign files
touched; every long command resumes after ``kill -9`` to the same bytes."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mkn.cli import app
from mkn.data import write_facts
from mkn.data.schema import Fact
from mkn.runs.directory import MANIFEST, RunDirectoryError, claim
from tests.test_experiments import tiny_facts

runner = CliRunner()
MKN = [sys.executable, "-c", "from mkn.cli import main; main()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SOURCE_DATE_EPOCH": "1795000000"}
RECORDS = ("knowledge", "neurons", "language_agnostic", "degenerate")


def many_facts(path: Path, n: int) -> Path:
    """``n`` facts (copies of the tiny capitals under new ids) as JSONL."""
    base = tiny_facts()
    write_facts([Fact(id=f"fact-{i:02d}", relation="P36", languages=base[i % 5].languages)
                 for i in range(n)], path)
    return path


def locate_args(tiny_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["locate", "--model", str(tiny_dir / "model"), "--data", f"jsonl:{data}",
            "--languages", "en,zh", "--steps", "2", "--out", str(out), "--quiet", *extra]


def same_records(a: Path, b: Path, names=RECORDS) -> None:
    for name in names:
        assert (a / f"{name}.jsonl").read_text() == (b / f"{name}.jsonl").read_text(), name


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line(output: str) -> str:
    return " ".join(output.split())


# --- ownership ----------------------------------------------------------------------------------

def test_claim_rules(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="not empty and is not an mkn run.*config.json"):
        claim(foreign, "locate", {})
    assert sorted(os.listdir(foreign)) == ["config.json"]  # nothing written
    with claim(tmp_path / "run", "locate", {"model": "a"}) as run:
        assert run.created and (tmp_path / "run" / MANIFEST).exists()
        with pytest.raises(RunDirectoryError, match=f"another mkn process .PID {os.getpid()}"):
            claim(tmp_path / "run", "locate", {"model": "a"}, resume=True)
    (tmp_path / "run" / "neurons.jsonl").write_text("")
    with pytest.raises(RunDirectoryError, match="an mkn locate run, not an mkn experiment run"):
        claim(tmp_path / "run", "experiment", {"model": "a"})
    with pytest.raises(RunDirectoryError, match="already holds an mkn locate run.*--resume"):
        claim(tmp_path / "run", "locate", {"model": "a"})
    with pytest.raises(RunDirectoryError, match='other settings .model: "a" -> "b"'):
        claim(tmp_path / "run", "locate", {"model": "b"}, resume=True)
    with claim(tmp_path / "run", "locate", {"model": "a"}, resume=True) as run:
        assert run.resumed
    # what is known only after the claim (a generic list's digest) is pinned into the identity
    with claim(tmp_path / "run", "locate", {"model": "a"}, resume=True) as run:
        run.pin("generic", {"amig": "d1"})
        run.pin("generic", {"amig": "d1"})  # the same value: nothing to do
    assert json.loads((tmp_path / "run" / MANIFEST).read_text())["identity"] == {
        "model": "a", "generic": {"amig": "d1"}}
    with claim(tmp_path / "run", "locate", {"model": "a"}, resume=True) as run:
        assert run.resumed  # the pinned key is not a difference of the claim's identity
        with pytest.raises(RunDirectoryError, match='its generic was {"amig": "d1"}, now'):
            run.pin("generic", {"amig": "d2"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file"):
        claim(tmp_path / "file", "locate", {})


def test_demo_on_a_directory_with_foreign_files_leaves_them_untouched(tiny_dir, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = subprocess.run([*MKN, "demo", "--out", str(out), "-m", str(tiny_dir / "model")],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not an mkn run" in one_line(done.stdout) and "Traceback" not in done.stderr
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    typo = subprocess.run([*MKN, "demo", "--out", str(tmp_path / "new"), "-m",
                           str(tmp_path / "typo")], capture_output=True, text=True, env=ENV)
    assert typo.returncode == 2 and len(typo.stdout.strip().splitlines()) == 1
    assert "unknown model" in typo.stdout and not (tmp_path / "new").exists()


def test_locate_into_a_model_folder_is_refused_and_the_folder_still_loads(tiny_dir, tmp_path):
    import mkn

    folder = tmp_path / "hf"
    shutil.copytree(tiny_dir / "model", folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = invoke(*locate_args(tiny_dir, tiny_dir / "facts.jsonl", folder))
    assert result.exit_code == 2 and "not an mkn run" in one_line(result.output)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    mkn.load_model(str(folder))


def test_two_concurrent_locates_one_fails_at_once_the_other_is_exact(tiny_dir, tmp_path):
    data = many_facts(tmp_path / "facts.jsonl", 30)
    out = tmp_path / "shared"
    first = subprocess.Popen([*MKN, *locate_args(tiny_dir, data, out)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".mkn.lock.holder").exists() and time.time() < deadline:
        time.sleep(0.02)
    started = time.time()
    second = subprocess.run([*MKN, *locate_args(tiny_dir, data, out, "--resume")], env=ENV,
                            capture_output=True, text=True)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"PID {first.pid}" in one_line(second.stdout)
    assert time.time() - started < 60  # at once: before any compute (only imports and data)
    assert first.wait() == 0, first.stderr.read()
    clean = tmp_path / "clean"
    assert invoke(*locate_args(tiny_dir, data, clean)).exit_code == 0
    same_records(out, clean)
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (out, clean))
    assert summary["facts"] == reference["facts"] <= 30


# --- resume verifies, then repairs ------------------------------------------------------------

def test_resume_repairs_deleted_truncated_and_duplicated_records(tiny_dir, tmp_path):
    data = many_facts(tmp_path / "facts.jsonl", 6)
    clean = tmp_path / "clean"
    assert invoke(*locate_args(tiny_dir, data, clean)).exit_code == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(clean, damaged)
    neurons = (damaged / "neurons.jsonl").read_text().splitlines(keepends=True)
    neurons[1] = neurons[1][: len(neurons[1]) // 2] + "\n"  # truncated
    del neurons[4]  # deleted
    (damaged / "neurons.jsonl").write_text("".join(neurons))
    agnostic = (damaged / "language_agnostic.jsonl").read_text().splitlines(keepends=True)
    (damaged / "language_agnostic.jsonl").write_text("".join(agnostic + agnostic[2:3]))
    done = (damaged / "done.jsonl").read_text()
    (damaged / "done.jsonl").write_text(done + done.splitlines(keepends=True)[0])  # duplicated
    result = invoke(*locate_args(tiny_dir, data, damaged, "--resume"))
    assert result.exit_code == 0, result.output
    same_records(damaged, clean, (*RECORDS, "done"))
    assert json.loads((damaged / "summary.json").read_text())["facts"] == json.loads(
        (clean / "summary.json").read_text())["facts"]


def test_resume_with_another_model_or_edited_data_refuses(tiny_dir, tmp_path):
    data = many_facts(tmp_path / "facts.jsonl", 3)
    out = tmp_path / "run"
    assert invoke(*locate_args(tiny_dir, data, out)).exit_code == 0
    other_model = tmp_path / "other"
    shutil.copytree(tiny_dir / "model", other_model)
    args = locate_args(tiny_dir, data, out, "--resume")
    args[args.index("--model") + 1] = str(other_model)
    result = invoke(*args)
    assert result.exit_code == 2 and "cannot resume" in result.output
    assert "model:" in one_line(result.output)
    lines = data.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[0])
    edited["languages"]["en"]["object"] = "Lyon"  # same ids, another object
    data.write_text("\n".join([json.dumps(edited, ensure_ascii=False), *lines[1:]]) + "\n",
                    encoding="utf-8")
    result = invoke(*locate_args(tiny_dir, data, out, "--resume"))
    assert result.exit_code == 2 and "data_fingerprint" in one_line(result.output)


def test_resume_against_other_weights_at_the_same_path_refuses(tiny_dir, tmp_path):
    """Issue 21: the identity named the model by its path; weights replaced there mixed two
    models in one run. Now the weights are pinned by content."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_dir / "model", tmp_path / "model")
    data = many_facts(tmp_path / "facts.jsonl", 3)
    out = tmp_path / "run"
    args = locate_args(tmp_path, data, out)  # the model at tmp_path/model
    assert invoke(*args).exit_code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(manifest["identity"]["weights"]) == 32
    assert {"generic_digest", "weights", "data_fingerprint"} <= set(manifest["pinned"])
    assert invoke(*args, "--resume").exit_code == 0  # the same weights: resumed
    weights = load_file(tmp_path / "model" / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1.0
    save_file(weights, tmp_path / "model" / "model.safetensors", metadata={"format": "pt"})
    result = invoke(*args, "--resume")
    assert result.exit_code == 2, result.output
    assert "cannot resume" in one_line(result.output) and "its weights was" in result.output


def test_resume_with_another_generic_list_file_refuses(tiny_dir, tmp_path):
    """Issue 21: --generic FILE was identified by its path; the list is pinned by content."""
    from mkn.localization.generic import GenericNeurons, ReferenceItem

    data = many_facts(tmp_path / "facts.jsonl", 3)
    listed = tmp_path / "generic.json"
    items = [ReferenceItem(f"ref-{i}", f"P{i}", "en", ((0, 1),)) for i in range(4)]
    GenericNeurons(items, 0.5).save(listed)
    out = tmp_path / "run"
    args = locate_args(tiny_dir, data, out, "--generic", str(listed))
    assert invoke(*args).exit_code == 0
    GenericNeurons([ReferenceItem(i.fact_id, i.relation, "en", ((0, 2),)) for i in items],
                   0.5).save(listed)  # the same path, another list
    result = invoke(*args, "--resume")
    assert result.exit_code == 2 and "its generic_digest was" in one_line(result.output)
    # a list whose reference facts are among the run's facts is refused
    GenericNeurons([ReferenceItem("fact-01", "P36", "en", ((0, 1),))], 0.5).save(listed)
    result = invoke(*locate_args(tiny_dir, data, tmp_path / "other", "--generic", str(listed)))
    assert result.exit_code == 2 and "overlaps the evaluated facts" in one_line(result.output)


# --- every long command resumes -----------------------------------------------------------------

def kill_when(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_experiment_killed_with_sigkill_then_resumed_equals_uninterrupted(tiny_dir, tmp_path):
    data = many_facts(tmp_path / "facts.jsonl", 8)

    def command(out: Path, *extra: str) -> list[str]:
        return [*MKN, "experiment", "cross-lingual-editing", "--model", str(tiny_dir / "model"),
                "--data", f"jsonl:{data}", "--languages", "en,zh", "--steps", "2",
                "--generic", "keep", "--out", str(out), "--quiet", *extra]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: count_lines(killed / "done.jsonl") >= 3)
    stored = count_lines(killed / "done.jsonl")
    assert stored >= 3 and not (killed / "cross-lingual-editing.json").exists()
    subprocess.run(command(killed, "--resume"), env=ENV, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(command(clean), env=ENV, check=True, capture_output=True)
    for name in ("cross-lingual-editing.json", "cross-lingual-editing.md"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name


STUDY = textwrap.dedent("""
    import sys
    from pathlib import Path
    import mkn
    from mkn.jobs.study import DataPart, StudyConfig, run_study
    model, data, out, resume = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"
    part = DataPart(name="tiny", data="jsonl:" + data, languages=["en", "zh"],
                    relations=["P36"], per_relation=6,
                    experiments=["localization-quality", "cross-lingual-editing"])
    config = StudyConfig(model=model, dtype="float32", steps=2, max_queries=1, generic="keep",
                         methods=["ig", "amig"], parts=[part])
    lm = mkn.load_model(model)
    run_study(lm, config, out, lambda title, total: (lambda item: None), "test", resume)
""")
VOLATILE = ("started", "finished", "minutes")


def _without_wall_clock(study: dict) -> dict:
    for key in VOLATILE:
        study.pop(key, None)
    for part in study["parts"]:
        part.pop("seconds")
        for stats in part["localization"].values():
            stats.pop("cost")
    return study


def test_study_killed_with_sigkill_then_resumed_equals_uninterrupted(tiny_dir, tmp_path):
    data = many_facts(tmp_path / "facts.jsonl", 6)
    script = tmp_path / "study.py"
    script.write_text(STUDY)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(sys.path)}

    def command(out: Path, resume: bool) -> list[str]:
        return [sys.executable, str(script), str(tiny_dir / "model"), str(data), str(out),
                "1" if resume else "0"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed, False), env=env, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: (killed / "study.json").exists())  # after the first experiment
    partial = json.loads((killed / "study.json").read_text())
    assert partial["complete"] is False
    render = subprocess.run([*MKN, "reproduce", "--render", str(killed / "study.json"),
                             "--results", str(tmp_path / "R.md")], capture_output=True,
                            text=True, env=ENV)
    assert render.returncode == 2 and "partial" in render.stdout and "--resume" in render.stdout
    subprocess.run(command(killed, True), env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(command(clean, False), env=env, check=True, capture_output=True)
    resumed, uninterrupted = (json.loads((d / "study.json").read_text()) for d in (killed, clean))
    assert resumed["complete"] and uninterrupted["complete"]
    assert _without_wall_clock(resumed) == _without_wall_clock(uninterrupted)


KILLS = 12  # each costs a start-up of the CLI (~3 s here, twice that on a slower CPU)


def test_locate_survives_twelve_kills_keyed_on_progress(tiny_dir, tmp_path):
    """Fault injection: ``mkn locate`` killed 12 times (resuming each time), each kill keyed on
    progress, not on a clock (start-up takes seconds on a loaded machine): right after a new
    record line appears (often between a fact's records and its done line) or right after a
    new done line; then finished: the records equal an uninterrupted run's, none lost, none
    duplicated."""
    data = many_facts(tmp_path / "facts.jsonl", 60)
    out = tmp_path / "faulty"
    rng = random.Random(20261122)

    def written() -> int:
        return sum(p.stat().st_size for p in out.glob("*.jsonl")) if out.exists() else 0

    def written_past(size: int) -> bool:
        return written() > size

    def done_past(count: int) -> bool:
        return count_lines(out / "done.jsonl") > count

    kills = 0
    while kills < KILLS:
        extra = ("--resume",) if out.exists() else ()
        done_before, size_before = count_lines(out / "done.jsonl"), written()
        on_record = rng.random() < 0.5
        proc = subprocess.Popen([*MKN, *locate_args(tiny_dir, data, out, *extra)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(proc, functools.partial(written_past, size_before) if on_record else
                  functools.partial(done_past, done_before))
        if proc.returncode == 0:
            break  # finished before this kill
        kills += 1
    stored = count_lines(out / "done.jsonl")
    assert kills == KILLS and stored < 60, (kills, stored)
    result = invoke(*locate_args(tiny_dir, data, out, "--resume"))
    assert result.exit_code == 0, result.output
    clean = tmp_path / "clean"
    assert invoke(*locate_args(tiny_dir, data, clean)).exit_code == 0
    same_records(out, clean, (*RECORDS, "done"))
    units = [json.loads(line)["unit"] for line in (out / "done.jsonl").read_text().splitlines()]
    assert len(units) == len(set(units)) == 60
    assert not list(out.rglob("*.tmp"))
    # the README's promise, file by file: config.json and every score tensor, byte for byte
    assert (out / "config.json").read_bytes() == (clean / "config.json").read_bytes()
    tensors = sorted(p.name for p in (clean / "scores").iterdir())
    assert tensors and sorted(p.name for p in (out / "scores").iterdir()) == tensors
    assert all((out / "scores" / name).read_bytes() == (clean / "scores" / name).read_bytes()
               for name in tensors)


# --- one-line errors, markup ---------------------------------------------------------------

def test_a_prompt_with_console_markup_prints_as_typed(tiny_dir):
    prompt = "The capital [/] of [bold]France[/bold] is"
    result = invoke("attribute", "--model", tiny_dir / "model", "--prompt", prompt, "--target",
                    "Paris", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert repr(prompt) in one_line(result.output)


def test_broken_checkpoints_are_one_line_errors_never_random_weights(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    import mkn
    from mkn.models.loading import ModelError

    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_dir / "model", folder)
        return folder

    missing = copy("missing")
    weights = load_file(missing / "model.safetensors")
    dropped = sorted(k for k in weights if "mlp.down_proj" in k)[0]
    del weights[dropped]
    save_file(weights, missing / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=f"lacks weights .*{dropped}"):
        mkn.load_model(str(missing))
    bad_config = copy("config")
    (bad_config / "config.json").write_text("{not json")
    truncated = copy("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    for path in (bad_config, truncated, garbage):
        with pytest.raises(ModelError, match="cannot load model"):
            mkn.load_model(str(path))
    done = subprocess.run([*MKN, "attribute", "-m", str(truncated), "--prompt", "a [Y]",
                           "--target", "b"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 2 and "cannot load model" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_experiment_options_are_range_checked_before_the_model_loads():
    for option, message in (("factor=nan", "must be a finite number"),
                            ("factor=-5", "must be greater than 0"),
                            ("q=2", "must be in (0, 1]")):
        result = invoke("experiment", "enhancement", "--model", "/no/such/model", "--set",
                        option)
        assert result.exit_code == 2 and message in one_line(result.output), result.output
    # issue 21: methods and rankings are checked too, before the model loads (all named)
    result = invoke("experiment", "size-curves", "--set", "methods=ig,foo", "--model",
                    "/no/such/model")
    assert result.exit_code == 2 and "ig, amig, grad-x-act, patching, matrice" in one_line(
        result.output)
    result = invoke("experiment", "shared-sets", "--set", "rankings=amig,bogus", "--model",
                    "/no/such/model")
    assert result.exit_code == 2 and "must be among matrice, amig" in one_line(result.output)
    for name, option in (("injection", "lambda_new=inf"), ("fact-checking", "wrong=-1")):
        result = invoke("experiment", name, "--set", option, "--model", "/no/such/model")
        assert result.exit_code == 2 and f"option {option.split('=')[0]}=" in result.output


def test_a_failed_start_leaves_the_directory_as_it_was(tiny_dir, tmp_path):
    """Issue 21: a start that failed after the claim (here: no model at that path) blocked the
    directory ("resume it" / "settings differ"); now it is left as it was."""
    data = many_facts(tmp_path / "facts.jsonl", 2)
    out = tmp_path / "new"
    args = locate_args(tiny_dir, data, out)
    bad = [*args]
    bad[bad.index("--model") + 1] = str(tmp_path / "no-such-model")
    assert invoke(*bad).exit_code == 2
    assert not out.exists()  # created by the claim, removed
    (tmp_path / "empty").mkdir()
    bad[bad.index("--out") + 1] = str(tmp_path / "empty")
    assert invoke(*bad).exit_code == 2
    assert list((tmp_path / "empty").iterdir()) == []
    result = invoke(*args)  # the fixed command simply runs
    assert result.exit_code == 0, result.output


def test_lenient_skips_a_fact_the_model_cannot_score_and_names_it(tiny_dir, tmp_path):
    base = tiny_facts()[:3]
    data = base[0].to_dict()
    data["id"] = "object-first"
    data["languages"]["en"]["queries"] = ["[Y] is the capital of [X]."]  # nothing before [Y]
    path = tmp_path / "facts.jsonl"
    write_facts([*base, Fact(**data)], path)
    strict = invoke(*locate_args(tiny_dir, path, tmp_path / "strict"))
    assert strict.exit_code == 2
    assert "fact object-first: en: prompt '[Y] is the capital of [X].'" not in strict.output
    assert "fact object-first: en:" in one_line(strict.output)
    assert "leaves nothing before the object" in one_line(strict.output)
    lenient = invoke(*locate_args(tiny_dir, path, tmp_path / "lenient", "--lenient"))
    assert lenient.exit_code == 0, lenient.output
    assert "skipped fact object-first" in one_line(lenient.output)
    located = {json.loads(line)["fact_id"] for line in
               (tmp_path / "lenient" / "knowledge.jsonl").read_text().splitlines()}
    assert located == {f.id for f in base}
    config = json.loads((tmp_path / "lenient" / "config.json").read_text())
    assert any("object-first" in s for s in config["skipped"])


def test_the_lock_holder_file_is_never_written_through_a_symlink(tmp_path):
    """Issue 21: ``claim`` wrote ``.mkn.lock.holder`` with ``write_text``, which follows a
    symlink planted in the run directory, overwriting a foreign file with the PID."""
    foreign = tmp_path / "precious.txt"
    foreign.write_text("keep me\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".mkn.lock.holder").symlink_to(foreign)
    with claim(run_dir, "locate", {"model": "a"}):
        holder = run_dir / ".mkn.lock.holder"
        assert not holder.is_symlink() and holder.read_text().strip() == str(os.getpid())
    assert foreign.read_text(encoding="utf-8") == "keep me\n"

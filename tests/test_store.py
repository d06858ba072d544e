"""RunStore: records survive kills; resumed runs equal uninterrupted ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mkn.runs.store import RunStore, read_jsonl

FILES = ("items", "pairs")


def _write_units(store: RunStore, units: range) -> None:
    for i in units:
        unit = f"fact/{i}"
        if store.is_done(unit):
            continue
        store.write(unit, {"items": [{"i": i, "j": j} for j in range(3)], "pairs": [{"i": i}]},
                    {"scores": torch.full((2, 3), float(i))})


def test_write_read_and_refuse_overwrite(tmp_path):
    store = RunStore(tmp_path, {"a": 1}, record_files=FILES)
    _write_units(store, range(3))
    assert [r["i"] for r in store.records("pairs")] == [0, 1, 2]
    assert torch.equal(store.tensors("fact/2")["scores"], torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="already stored"):
        store.write("fact/1", {})
    with pytest.raises(ValueError, match=f"written by another mkn process .PID {os.getpid()}"):
        RunStore(tmp_path, {"a": 1}, resume=True, record_files=FILES)
    store.close()
    with pytest.raises(ValueError, match="already holds an mkn locate run.*--resume"):
        RunStore(tmp_path, {"a": 1}, record_files=FILES)
    with pytest.raises(ValueError, match="cannot resume .*other settings .a: 1 -> 2"):
        RunStore(tmp_path, {"a": 2}, resume=True, record_files=FILES)


def test_resume_drops_partial_units_and_half_lines(tmp_path):
    store = RunStore(tmp_path, {}, record_files=FILES)
    _write_units(store, range(2))
    store.close()
    # a kill after some records of unit 2 and in the middle of a line
    with (tmp_path / "items.jsonl").open("a") as handle:
        handle.write(json.dumps({"unit": "fact/2", "i": 2, "j": 0}) + "\n{\"unit\": \"fa")
    resumed = RunStore(tmp_path, {}, resume=True, record_files=FILES)
    assert resumed.done == ["fact/0", "fact/1"]
    _write_units(resumed, range(4))
    fresh = RunStore(tmp_path / "fresh", {}, record_files=FILES)
    _write_units(fresh, range(4))
    for name in FILES:
        assert read_jsonl(tmp_path / f"{name}.jsonl") == fresh.records(name)


def test_a_tensor_edited_in_place_is_recomputed_and_links_are_refused(tmp_path):
    """Issue 21: tensors were checked by size only; a planted link wrote outside the run."""
    store = RunStore(tmp_path / "run", {}, record_files=FILES)
    _write_units(store, range(3))
    store.close()
    path = store._tensor_path("fact/1")
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # the last float32 value, same size
    path.write_bytes(bytes(data))
    resumed = RunStore(tmp_path / "run", {}, resume=True, record_files=FILES)
    assert resumed.done == ["fact/0", "fact/2"]  # fact/1 is computed again
    _write_units(resumed, range(3))
    assert torch.equal(resumed.tensors("fact/1")["scores"], torch.full((2, 3), 1.0))
    resumed.close()
    # a "scores" folder that is a link elsewhere: refused, nothing written there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = RunStore(tmp_path / "linked", {}, record_files=FILES)
    (tmp_path / "linked" / "scores").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="scores is not a folder of this run"):
        _write_units(linked, range(1))
    assert not list(elsewhere.iterdir())
    # a record file that is a link to a foreign file: refused, the file untouched
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("")
    (tmp_path / "linked" / "scores").unlink()
    (tmp_path / "linked" / "items.jsonl").symlink_to(foreign)
    with pytest.raises(ValueError, match="items.jsonl is a symbolic link"):
        _write_units(linked, range(1))
    assert foreign.read_text() == ""
    linked.close()


WRITER = textwrap.dedent("""
    import sys, time, torch
    from mkn.runs.store import RunStore
    store = RunStore(sys.argv[1], {"n": 40}, resume=True, record_files=("items", "pairs"))
    for i in range(40):
        unit = f"fact/{i}"
        if store.is_done(unit):
            continue
        store.write(unit, {"items": [{"i": i, "j": j} for j in range(3)], "pairs": [{"i": i}]},
                    {"scores": torch.full((2, 3), float(i))})
        print(i, flush=True)
        time.sleep(0.02)
""")


def test_resume_after_kill_9_equals_uninterrupted(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], stdout=subprocess.PIPE,
                            text=True, env=env)
    for _ in range(5):  # let it finish a few units, then kill it mid-run
        proc.stdout.readline()
    time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_jsonl(killed / "done.jsonl"))
    assert 5 <= partial < 40
    subprocess.run([sys.executable, str(script), str(killed)], check=True, env=env,
                   capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, str(script), str(clean)], check=True, env=env,
                   capture_output=True)
    for name in ("items", "pairs", "done"):
        assert (killed / f"{name}.jsonl").read_text() == (clean / f"{name}.jsonl").read_text()
    assert len(list((killed / "scores").glob("*.safetensors"))) == 40
    assert not list(Path(killed).rglob("*.tmp"))


def test_a_full_disk_names_the_file():
    from mkn.cli import describe_error
    from mkn.runs.store import _fsync_append

    with pytest.raises(OSError) as caught:
        _fsync_append(Path("/dev/full"), ["x" * 100_000])
    assert describe_error(caught.value) == "/dev/full: No space left on device"


def test_a_full_disk_while_saving_a_tensor_names_the_file(tmp_path, monkeypatch):
    """Issue 21: safetensors said "SafetensorError: ... No space left on device", no file."""
    from safetensors import SafetensorError

    from mkn.cli import describe_error
    from mkn.runs import store as store_module

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                              'StorageFull, message: "No space left on device" })')

    store = RunStore(tmp_path, {}, record_files=FILES)
    monkeypatch.setattr(store_module, "save_file", full)
    with pytest.raises(OSError) as caught:
        _write_units(store, range(1))
    assert describe_error(caught.value) == (
        f"{store._tensor_path('fact/0')}: No space left on device")
    assert not list((tmp_path / "scores").iterdir())  # no temporary file left
    store.close()


def test_unit_file_names_are_never_hidden():
    from mkn.runs.store import unit_file_name

    assert not unit_file_name(".hidden").startswith(".")
    assert not unit_file_name("..").startswith(".")
    assert unit_file_name(".a") != unit_file_name("_a")  # still collision-free
    assert unit_file_name("fact/1").startswith("fact_1-")

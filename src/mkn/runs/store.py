"""A run directory that loses nothing and can be resumed after any kill (even ``kill -9``).

Layout of ``DIR``:
- ``config.json``: the resolved configuration (a resumed run must use the same one);
- ``<name>.jsonl``: records, appended per unit of work (a fact), flushed and fsynced;
- ``scores/<unit>.safetensors``: dense score tensors, written atomically (tmp + rename);
- ``done.jsonl``: one line per finished unit, written *last*.

A unit counts as done only once its line is in ``done.jsonl``. On resume, records of units that
are not done (a kill between two appends) and a half-written last line are dropped, so the
resumed run ends with exactly the records of an uninterrupted one, without duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DONE = "done.jsonl"
CONFIG = "config.json"


def _fsync_append(path: Path, lines: Iterable[str]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Complete records of ``path``; a half-written last line (no newline) is ignored."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is empty or half-written
    records = []
    for number, line in enumerate(complete, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return records


def unit_file_name(unit: str) -> str:
    """A file-system-safe, collision-free name for a unit id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", unit)[:80]
    return f"{safe}-{hashlib.sha1(unit.encode()).hexdigest()[:8]}"


class RunStore:
    """Append-only, resumable storage of a run's records, keyed by unit (fact) id."""

    def __init__(self, directory: str | os.PathLike, config: Mapping, resume: bool = False,
                 record_files: Iterable[str] = ()):
        self.dir = Path(directory)
        self.record_files = tuple(record_files)
        self.dir.mkdir(parents=True, exist_ok=True)
        config_path = self.dir / CONFIG
        config = json.loads(json.dumps(config))  # normalized (tuples -> lists)
        has_results = (self.dir / DONE).exists() or any(
            (self.dir / f"{name}.jsonl").exists() for name in self.record_files)
        if has_results and not resume:
            raise FileExistsError(f"{self.dir} already holds results: resume them (--resume) or "
                                  "choose another output directory")
        if resume and config_path.exists():
            saved = json.loads(config_path.read_text(encoding="utf-8"))
            if saved != config:
                changed = sorted(k for k in set(saved) | set(config)
                                 if saved.get(k) != config.get(k))
                raise ValueError(f"cannot resume {self.dir}: its config differs in "
                                 f"{', '.join(changed)}")
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                               encoding="utf-8")
        self.done: list[str] = [r["unit"] for r in read_jsonl(self.dir / DONE)]
        self._done_set = set(self.done)
        self._repair()

    def _repair(self) -> None:
        """Drop records of unfinished units and half-written lines (after a kill)."""
        done = self._done_set
        for name in (*self.record_files, DONE[: -len(".jsonl")]):
            path = self.dir / f"{name}.jsonl"
            if not path.exists():
                continue
            records = read_jsonl(path)
            kept = [r for r in records if r.get("unit") in done]
            text = path.read_text(encoding="utf-8")
            if len(kept) != len(records) or (text and not text.endswith("\n")):
                tmp = path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept),
                               encoding="utf-8")
                os.replace(tmp, path)

    def is_done(self, unit: str) -> bool:
        return unit in self._done_set

    def write(self, unit: str, records: Mapping[str, list[dict]],
              tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        """Store one finished unit: tensors, then records, then the done marker."""
        if unit in self._done_set:
            raise ValueError(f"unit {unit!r} is already stored")
        unknown = set(records) - set(self.record_files)
        if unknown:
            raise ValueError(f"unknown record files {sorted(unknown)}")
        if tensors:
            folder = self.dir / "scores"
            folder.mkdir(exist_ok=True)
            path = folder / f"{unit_file_name(unit)}.safetensors"
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"unit": unit})
            os.replace(tmp, path)
        for name, rows in records.items():
            _fsync_append(self.dir / f"{name}.jsonl",
                          (json.dumps({"unit": unit, **row}, ensure_ascii=False) for row in rows))
        _fsync_append(self.dir / DONE, [json.dumps({"unit": unit}, ensure_ascii=False)])
        self.done.append(unit)
        self._done_set.add(unit)

    def records(self, name: str) -> list[dict]:
        return read_jsonl(self.dir / f"{name}.jsonl")

    def tensors(self, unit: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.dir / "scores" / f"{unit_file_name(unit)}.safetensors"))

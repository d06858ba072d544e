"""A run directory that loses nothing and can be resumed after any kill (even ``kill -9``).

Layout of ``DIR`` (claimed first, :mod:`mkn.runs.directory`: manifest and lock):
- ``config.json``: the resolved configuration;
- ``<name>.jsonl``: records, appended per unit of work (a fact), flushed and fsynced;
- ``scores/<unit>.safetensors``: dense score tensors, written atomically (tmp + rename);
- ``done.jsonl``: one line per finished unit, written *last*, with the number and digest of the
  unit's records in each file and the size and SHA-256 of its tensor file.

A unit counts as done only when its line is in ``done.jsonl`` *and* its records are present and
whole (same count, same digest) and its tensor file has the recorded size and digest (a tensor
edited in place is recomputed). Nothing is written through a symbolic link: a planted link in
place of a record file or the ``scores`` folder is refused with one line. On resume everything
else is dropped: records of unfinished units (a kill between two appends), a half-written last
line, records deleted, truncated, edited or duplicated by hand, duplicate done lines. The
dropped units are computed again, so a resumed run ends with exactly the records of an
uninterrupted one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mkn.runs.directory import (
    RunDirectory,
    RunDirectoryError,
    canonical,
    claim,
    digest,
    replace_via_temp,
    with_path,
    write_atomic,
)

DONE = "done.jsonl"
CONFIG = "config.json"


def _fsync_append(path: Path, lines: Iterable[str]) -> None:
    """Append ``lines``, flushed and fsynced; never through a symbolic link (a link planted in
    a run directory would write outside it: refused with an error naming the file)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                             0o644)
    except OSError as error:
        if path.is_symlink():
            raise RunDirectoryError(f"{path} is a symbolic link; mkn does not write through "
                                    "links in a run directory (remove it)") from None
        raise with_path(error, path) from None
    try:
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise with_path(error, path) from None


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a tensor file's, recorded in its done line)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path, skip_broken: bool = False) -> list[dict]:
    """Complete records of ``path``; a half-written last line (no newline) is ignored.

    A line that is not a JSON object is an error naming file and line, or skipped with
    ``skip_broken`` (repairing a run: its unit is then recomputed).
    """
    if not path.exists():
        return []
    text = path.read_bytes().decode("utf-8", errors="replace" if skip_broken else "strict")
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is empty or half-written
    records = []
    for number, line in enumerate(complete, 1):
        if line.strip():
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                records.append(record)
            except (ValueError, RecursionError) as error:
                if not skip_broken:
                    reason = getattr(error, "msg", None) or str(error) or type(error).__name__
                    raise ValueError(f"{path}:{number}: not valid JSON ({reason})") from None
    return records


def unit_file_name(unit: str) -> str:
    """A file-system-safe, collision-free name for a unit id, never hidden (no leading dot)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", unit)[:80]
    safe = re.sub(r"^\.", "_", safe)
    return f"{safe}-{hashlib.sha1(unit.encode()).hexdigest()[:8]}"


def _rows_digest(rows: list[dict]) -> str:
    return digest(rows)


def tensor_path(directory: Path, unit: str) -> Path:
    """Where a unit's score tensors are stored."""
    return Path(directory) / "scores" / f"{unit_file_name(unit)}.safetensors"


def _whole(directory: Path, line: dict, rows: Mapping[str, list[dict]],
           record_files: Iterable[str]) -> bool:
    """Whether a done line's unit has all its records and its tensor file, unchanged."""
    expected = line.get("records")
    if not isinstance(expected, dict):
        return False
    for name in record_files:
        count, want = expected.get(name, [0, None])
        got = rows.get(name, [])
        if len(got) != count or (want is not None and _rows_digest(got) != want):
            return False
    size = line.get("tensor_bytes")
    if size is not None:
        path = tensor_path(directory, line["unit"])
        if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
            return False
        want = line.get("tensor_sha256")  # runs written before it: checked by size
        if want is not None and file_digest(path) != want:
            return False  # edited in place, same size: recomputed
    return True


@dataclass
class VerifiedUnits:
    """What a resume keeps of a run directory (:func:`verified_units`)."""

    done_lines: list[dict]  # the done line of every unit kept, in order
    by_unit: dict[str, dict[str, list[dict]]]  # unit -> record file -> its records (no "unit")
    dropped: set[str]  # units with records that a resume drops (unfinished, edited, ...)

    def records(self, name: str) -> list[dict]:
        """The kept records of ``name`` (with their ``unit``), in done order."""
        return [{"unit": line["unit"], **row} for line in self.done_lines
                for row in self.by_unit.get(line["unit"], {}).get(name, [])]


def verified_units(directory: Path, record_files: Iterable[str]) -> VerifiedUnits:
    """The units of ``directory`` that are done and whole (module docstring), read without
    changing anything: what :class:`RunStore` keeps on resume, and what every reader (report,
    export) shows. Records of every other unit are dropped."""
    directory, record_files = Path(directory), tuple(record_files)
    by_unit: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for name in record_files:
        for record in read_jsonl(directory / f"{name}.jsonl", skip_broken=True):
            unit = record.get("unit")
            if isinstance(unit, str):
                by_unit[unit][name].append({k: v for k, v in record.items() if k != "unit"})
    done_lines, seen = [], set()
    for line in read_jsonl(directory / DONE, skip_broken=True):
        unit = line.get("unit")
        if isinstance(unit, str) and unit not in seen and _whole(
                directory, line, by_unit.get(unit, {}), record_files):
            seen.add(unit)
            done_lines.append(line)
    return VerifiedUnits(done_lines, by_unit, {u for u in by_unit if u not in seen})


class RunStore:
    """Append-only, resumable storage of a run's records, keyed by unit (fact) id.

    The directory is claimed for ``kind`` with ``config`` as the run's identity (refused when
    foreign, locked by another writer, or, on resume, run with another identity), unless the
    caller passes a directory it has already claimed (``run``).
    """

    def __init__(self, directory: str | os.PathLike, config: Mapping, resume: bool = False,
                 record_files: Iterable[str] = (), kind: str = "locate",
                 run: RunDirectory | None = None, command: str = "",
                 volatile: Iterable[str] = ()):
        self.dir = Path(directory)
        self.record_files = tuple(record_files)
        self.volatile = frozenset(volatile)  # record files checked by count only (timings)
        config = json.loads(json.dumps(config))  # normalized (tuples -> lists)
        self._owned = run is None
        self.run = run or claim(self.dir, kind, config, resume=resume, command=command)
        try:
            has_results = (self.dir / DONE).exists() or any(
                (self.dir / f"{name}.jsonl").exists() for name in self.record_files)
            if has_results and not resume:
                raise FileExistsError(f"{self.dir} already holds results: resume them "
                                      "(--resume) or choose another output directory")
            write_atomic(self.dir / CONFIG, json.dumps(config, indent=2, ensure_ascii=False)
                         + "\n")
            self.run.pin("config_digest", digest(config))  # readers can tell an edited one
            self.done: list[str] = []
            self._done_set: set[str] = set()
            self.repaired: dict[str, int] = {}
            self._repair()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory (when this store claimed it)."""
        if self._owned:
            self.run.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tensor_path(self, unit: str) -> Path:
        return tensor_path(self.dir, unit)

    def _repair(self) -> None:
        """Keep the units that are done and whole; drop every other record (module docstring)."""
        kept = verified_units(self.dir, self.record_files)
        self.done = [line["unit"] for line in kept.done_lines]
        self._done_set = set(self.done)
        scores = self.dir / "scores"
        if scores.is_dir() and not scores.is_symlink():  # tensors a kill left half-written
            for stale in scores.glob(".*.tmp"):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
        self.repaired = {"units_dropped": len(kept.dropped)}
        for name in (*self.record_files, DONE[: -len(".jsonl")]):
            path = self.dir / f"{name}.jsonl"
            if not path.exists():
                continue
            if name == DONE[: -len(".jsonl")]:
                rows = kept.done_lines
            else:
                rows = [{"unit": u, **row} for u in self.done
                        for row in kept.by_unit[u].get(name, [])]
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            if path.read_bytes() != text.encode():
                write_atomic(path, text)

    def finalize(self, order: Iterable[str]) -> None:
        """Rewrite the record files with units in ``order`` (units recomputed after a repair
        were appended at the end), so that a repaired run ends byte-identical to an
        uninterrupted one. Each file is replaced atomically; a kill in between leaves a valid
        run that the next resume finalizes."""
        rank = {unit: i for i, unit in enumerate(order)}
        for name in (*self.record_files, DONE[: -len(".jsonl")]):
            path = self.dir / f"{name}.jsonl"
            if not path.exists():
                continue
            records = read_jsonl(path)
            ordered = sorted(records, key=lambda r: rank.get(r.get("unit"), len(rank)))
            if ordered != records:
                write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                           for r in ordered))

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
        line: dict = {"unit": unit}
        if tensors:
            path = self._tensor_path(unit)
            if path.parent.is_symlink() or (path.parent.exists() and not path.parent.is_dir()):
                raise RunDirectoryError(f"{path.parent} is not a folder of this run (a symbolic "
                                        "link or a file); mkn does not write outside the run "
                                        "directory (remove it)")
            path.parent.mkdir(exist_ok=True)
            try:
                replace_via_temp(path, lambda tmp: save_file(
                    {k: v.contiguous() for k, v in tensors.items()}, tmp,
                    metadata={"unit": unit}))
            except (OSError, SafetensorError) as error:  # a full disk: name the file
                text = str(error)
                full = "No space left" in text or getattr(error, "errno", None) == errno.ENOSPC
                raise OSError(errno.ENOSPC if full else getattr(error, "errno", None) or 0,
                              "No space left on device" if full
                              else getattr(error, "strerror", None) or " ".join(text.split()),
                              str(path)) from None
            line["tensor_bytes"] = path.stat().st_size
            line["tensor_sha256"] = file_digest(path)
        normalized = {name: json.loads(json.dumps(rows)) for name, rows in records.items()}
        for name, rows in normalized.items():
            _fsync_append(self.dir / f"{name}.jsonl",
                          (json.dumps({"unit": unit, **row}, ensure_ascii=False) for row in rows))
        line["records"] = {name: [len(rows), None if name in self.volatile
                                  else _rows_digest(rows)] for name, rows in normalized.items()}
        _fsync_append(self.dir / DONE, [json.dumps(line, ensure_ascii=False)])
        self.done.append(unit)
        self._done_set.add(unit)

    def records(self, name: str) -> list[dict]:
        return read_jsonl(self.dir / f"{name}.jsonl")

    def tensors(self, unit: str) -> dict[str, torch.Tensor]:
        return load_file(str(self._tensor_path(unit)))


ATTRIBUTIONS = "attributions"
_TENSOR_FIELDS = ("scores", "baseline_prob", "completeness_gap")


class StoredAttributions(MutableMapping):
    """An attribution cache (``locate_fact``'s ``cache``) kept in a :class:`RunStore`: every
    attribution is stored the moment it is computed, so a killed experiment or study, resumed,
    computes only what is missing, and gets the very same numbers (tensors in safetensors,
    floats through JSON, both exact)."""

    def __init__(self, store: RunStore, prefix: str = ""):
        if ATTRIBUTIONS not in store.record_files:
            raise ValueError(f"the store of {store.dir} has no {ATTRIBUTIONS!r} records")
        self.store, self.prefix = store, prefix
        self._records = {r["unit"]: r for r in store.records(ATTRIBUTIONS)}
        self._memory: dict = {}

    def _unit(self, key) -> str:
        return f"{self.prefix}attribution:{canonical(list(key))}"

    def __contains__(self, key) -> bool:
        return key in self._memory or self.store.is_done(self._unit(key))

    def __getitem__(self, key):
        from mkn.attribution.api import Attribution

        if key in self._memory:
            return self._memory[key]
        unit = self._unit(key)
        if not self.store.is_done(unit):
            raise KeyError(key)
        record = {k: v for k, v in self._records[unit].items() if k != "unit"}
        value = Attribution(**record, **self.store.tensors(unit))
        self._memory[key] = value
        return value

    def __setitem__(self, key, value) -> None:
        self._memory[key] = value
        unit = self._unit(key)
        if self.store.is_done(unit):
            return
        record = {f.name: getattr(value, f.name) for f in fields(value)
                  if f.name not in _TENSOR_FIELDS}
        self.store.write(unit, {ATTRIBUTIONS: [record]},
                         {name: getattr(value, name) for name in _TENSOR_FIELDS})
        self._records[unit] = json.loads(json.dumps({"unit": unit, **record}))

    def __delitem__(self, key) -> None:
        raise TypeError("stored attributions are not deleted")

    def __iter__(self):
        return iter(self._memory)

    def __len__(self) -> int:
        return len(self._memory)

"""Run directories that mkn owns: a manifest, one writer at a time, nothing foreign touched.

Every command that writes a run directory first *claims* it (:func:`claim`):

- a new or empty directory becomes an mkn run: ``mkn-run.json`` (the manifest) records the
  kind of run, the command, the package version, the run's *identity* (model, method and
  settings, languages, sample, the data's fingerprint) and its hash;
- a non-empty directory without a manifest is not ours: refused, nothing written;
- a directory of another kind of run (a ``locate`` run given to ``experiment``) is refused;
- ``--resume`` continues only when the identity matches, else it names what differs;
- one writer at a time: an exclusive lock (``filelock``) on ``.mkn.lock``; a second writer fails
  at once, naming the holder's PID (from ``.mkn.lock.holder``).

mkn deletes nothing it did not write; within its own run it rewrites only its own record files
(:mod:`mkn.runs.store`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

MANIFEST = "mkn-run.json"
LOCK = ".mkn.lock"
HOLDER = ".mkn.lock.holder"
OWN_FILES = {MANIFEST, LOCK, HOLDER}
_UMASK = os.umask(0)
os.umask(_UMASK)


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (one line, says why and where)."""


def canonical(value) -> str:
    """Canonical JSON (sorted keys, no spaces): the bytes a hash is taken of."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def digest(value, length: int = 16) -> str:
    """Hex SHA-256 of :func:`canonical` ``value``."""
    return hashlib.sha256(canonical(value).encode()).hexdigest()[:length]


def data_fingerprint(facts: Iterable) -> str:
    """Fingerprint of the facts actually read (ids, subjects, objects, queries): edited data with
    the same fact ids gets another fingerprint."""
    return digest([fact.to_dict() for fact in facts])


def with_path(error: OSError, path) -> OSError:
    """``error`` naming ``path`` (a full disk reports ENOSPC without a file name)."""
    if error.filename is not None:
        return error
    return type(error)(error.errno, error.strerror or str(error), str(path))


def replace_via_temp(path: Path, write: Callable[[str], None]) -> Path:
    """Create ``path`` by ``write(tmp)`` on a fresh temporary file in the same directory, then
    a rename: readers see the old file or the new one, never a half-written one, and a link
    planted at any fixed temporary name is never written through. The temporary file is
    removed on any failure; an ``OSError`` names ``path``."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it (mkstemp makes it 0600)
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise with_path(error, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (UTF-8) or bytes to ``path``, fsynced, through :func:`replace_via_temp`."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            out.write(text.encode("utf-8") if isinstance(text, str) else text)
            out.flush()
            os.fsync(out.fileno())

    return replace_via_temp(path, write)


def check_ours(path: Path, marker: str, replace: str) -> None:
    """Refuse to replace ``path`` unless mkn wrote it (``marker`` in its first 64 KB): a file a
    user or another tool wrote there, a folder or a symbolic link is never overwritten (a
    one-line :class:`ValueError`; ``replace`` says how to replace one's own output)."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link: mkn does not write through or replace it; "
                         f"{replace}")
    if not path.exists():
        return
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file mkn wrote; {replace}")
    with open(path, "rb") as existing:
        head = existing.read(65536)
    if marker.encode("utf-8") not in head:
        raise ValueError(f"{path} exists and was not written by mkn; {replace}")


def write_json(path: Path, data) -> Path:
    """Save ``data`` as compact JSON, atomically; gzip-compressed when the name ends in ``.gz``
    (no timestamp in the gzip header: the same data gives the same bytes)."""
    text = (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    return write_atomic(path, gzip.compress(text, mtime=0) if str(path).endswith(".gz")
                        else text)


def read_json(path: Path):
    """The JSON document in ``path``, plain or gzip-compressed (detected by its first bytes);
    a file that is neither is a :class:`ValueError`."""
    raw = Path(path).read_bytes()
    try:
        return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as error:
        raise ValueError(str(error)) from None


def run_date() -> str:
    """Now, in UTC ISO format; ``$SOURCE_DATE_EPOCH`` (the reproducible-builds convention) fixes
    it, so that two runs can be compared byte for byte."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return moment.isoformat(timespec="seconds")


def _differences(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """``key: saved -> current`` for every (nested) key whose value differs."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            lines += _differences(old, new, f"{prefix}{key}.")
            continue
        shown = [json.dumps(v, ensure_ascii=False) for v in (old, new)]
        shown = [s if len(s) <= 60 else s[:57] + "..." for s in shown]
        lines.append(f"{prefix}{key}: {shown[0]} -> {shown[1]}")
    return lines


def check_writable(directory: Path) -> None:
    """Fail now, before any compute, when ``directory`` cannot be created or written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".mkn-write-test.", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise RunDirectoryError(f"{directory}: cannot write there ({error.strerror or error})"
                                ) from None


@dataclass
class RunDirectory:
    """A claimed run directory; holds its lock until :meth:`release` (or the ``with`` ends)."""

    path: Path
    kind: str
    identity: dict
    resumed: bool = False
    created: str = ""  # when the run was first started (kept by a resume)
    lock: FileLock | None = field(default=None, repr=False)
    made_directory: bool = False  # claim created the directory (abandon removes it)
    pinned: set[str] = field(default_factory=set)  # identity keys known after the claim

    def pin_all(self, values: Mapping) -> None:
        """:meth:`pin` every key of ``values`` (the manifest written once)."""
        for key, value in values.items():
            self.pin(key, value, write=False)
        self._write_manifest()

    def abandon(self) -> None:
        """Release the directory after a failed start, leaving it as it was: a new run that
        wrote nothing but mkn's bookkeeping removes it (and the directory, if it created it);
        a resumed run keeps everything."""
        try:
            if not self.resumed and self.path.is_dir() and not _foreign(self.path):
                (self.path / MANIFEST).unlink(missing_ok=True)
                (self.path / HOLDER).unlink(missing_ok=True)
                if self.lock is not None and self.lock.is_locked:
                    self.lock.release()
                (self.path / LOCK).unlink(missing_ok=True)
                if self.made_directory:
                    self.path.rmdir()
        finally:
            self.release()

    def _write_manifest(self) -> None:
        manifest = read_manifest(self.path) or {}
        manifest.update(identity=self.identity, identity_hash=digest(self.identity),
                        pinned=sorted({*manifest.get("pinned", []), *self.pinned}))
        write_atomic(self.path / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False)
                     + "\n")

    def pin(self, key: str, value, write: bool = True) -> None:
        """Add ``key: value`` to the run's identity once it is known, after the claim (e.g. the
        content digest of a generic-neuron list built by the run). A new run records it in its
        manifest; a resumed run must have recorded the same value (one line otherwise); a run
        written before the key existed records it now."""
        value = json.loads(json.dumps(value))
        saved = self.identity.get(key)
        if self.resumed and key in self.identity and saved != value:
            raise RunDirectoryError(f"cannot resume {self.path}: its {key} was "
                                    f"{json.dumps(saved)[:60]}, now {json.dumps(value)[:60]}; "
                                    "resume with the same inputs or choose another --out")
        self.pinned.add(key)
        if saved == value and key in self.identity:
            return
        self.identity[key] = value
        if write:
            self._write_manifest()

    def release(self) -> None:
        if self.lock is not None and self.lock.is_locked:
            (self.path / HOLDER).unlink(missing_ok=True)
            self.lock.release()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _foreign(directory: Path) -> list[str]:
    """Entries of ``directory`` that are not mkn's own bookkeeping files."""
    return sorted(p.name for p in directory.iterdir() if p.name not in OWN_FILES)


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or "kind" not in manifest:
            raise ValueError("no 'kind'")
        return manifest
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunDirectoryError(f"{path}: not a readable mkn manifest ({error})") from None


def claim(directory: str | os.PathLike, kind: str, identity: Mapping, *, resume: bool = False,
          command: str = "", reuse: bool = False) -> RunDirectory:
    """Claim ``directory`` for a run of ``kind`` with ``identity`` (see the module docstring).

    ``resume``: continue a run of the same kind and identity (refused if they differ).
    ``reuse``: a run of the same kind may be written again with any identity (the demo, which
    rewrites its own files); foreign files are still never touched.
    Raises :class:`RunDirectoryError` with one line saying what is wrong.
    """
    from mkn import __version__

    directory = Path(directory)
    identity = json.loads(json.dumps(identity))  # normalized: tuples -> lists
    if directory.exists() and not directory.is_dir():
        raise RunDirectoryError(f"{directory} is a file, not a directory; choose another --out")
    if directory.exists() and read_manifest(directory) is None and _foreign(directory):
        shown = ", ".join(_foreign(directory)[:3])
        raise RunDirectoryError(
            f"{directory} is not empty and is not an mkn run (no {MANIFEST}; it holds {shown}"
            f"{', ...' if len(_foreign(directory)) > 3 else ''}): mkn writes only into a new or "
            "empty directory or one of its own runs; choose another --out")
    made = not directory.exists()
    check_writable(directory)
    lock = FileLock(str(directory / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = directory / HOLDER
        pid = holder.read_text(encoding="utf-8").strip() if holder.exists() else "unknown"
        raise RunDirectoryError(f"{directory} is being written by another mkn process (PID "
                                f"{pid}); wait for it to end or choose another --out") from None
    write_atomic(directory / HOLDER, f"{os.getpid()}\n")  # replaces a symlink, never follows it
    run = RunDirectory(directory, kind, identity, lock=lock, made_directory=made)
    try:
        manifest = read_manifest(directory)
        if manifest is None and _foreign(directory):  # appeared while we took the lock
            raise RunDirectoryError(f"{directory} is not empty and is not an mkn run; choose "
                                    "another --out")
        if manifest is not None:
            if manifest["kind"] != kind:
                raise RunDirectoryError(f"{directory} is an mkn {manifest['kind']} run, not "
                                        f"an mkn {kind} run; choose another --out")
            saved = dict(manifest.get("identity", {}))
            # keys pinned after the claim (data, weights, generic list) are compared by pin();
            # a run written before pinning: its keys that the claim no longer names
            names = manifest.get("pinned", [k for k in saved if k not in identity])
            pinned = {k: saved.pop(k) for k in names if k in saved}
            differs = _differences(saved, identity)
            if differs and resume:
                raise RunDirectoryError(f"cannot resume {directory}: it was run with other "
                                        f"settings ({'; '.join(differs[:4])}"
                                        f"{'; ...' if len(differs) > 4 else ''})")
            if not resume and not reuse and _foreign(directory):
                raise RunDirectoryError(f"{directory} already holds an mkn {kind} run: resume "
                                        "it (--resume) or choose another --out")
            run.resumed = resume and not differs
            if run.resumed:
                run.created = str(manifest.get("created", ""))
                run.identity.update(pinned)  # compared again by pin()
                return run
        run.created = run_date()
        write_atomic(directory / MANIFEST, json.dumps({
            "kind": kind, "mkn": __version__,
            "command": command or shlex.join(["mkn", *sys.argv[1:]]),
            "created": run.created,
            "identity_hash": digest(identity), "identity": identity,
        }, indent=1, ensure_ascii=False) + "\n")
        return run
    except BaseException:
        run.release()
        raise

"""One entry point for every fact source: :func:`load_facts`.

Specs:

- ``builtin``: the fact set shipped in the package (:mod:`mkn.data.builtin`).
- ``mlama:PATH``: mLAMA layout (``<PATH>/<lang>/P*.jsonl`` ...), see :mod:`mkn.data.mlama`.
- ``bmlama:PATH``: BMLAMA TSVs (``<PATH>/<lang>.tsv``), see :mod:`mkn.data.bmlama`.
- ``jsonl:PATH``: a JSONL file in the fact schema (:mod:`mkn.data.schema`).

A relative ``PATH`` is looked up under the data root first, then relative to the current
directory. The data root is, in order: ``$MKN_DATA``; ``../shared/data`` from the current
directory; ``../shared/data`` from the repository root of this package (checkout layouts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mkn.data.bmlama import read_bmlama
from mkn.data.builtin import builtin_facts
from mkn.data.mlama import read_mlama
from mkn.data.schema import FactSet, read_facts, sample_by_relation, select

DATA_ENV = "MKN_DATA"
KINDS = ("builtin", "mlama", "bmlama", "jsonl")
# src/mkn/data/loader.py -> the repository root is three folders above the package folder
_REPO_ROOT = Path(__file__).resolve().parents[3]


def data_root_candidates() -> list[Path]:
    """Where the data root is looked for, in order."""
    out = []
    env = os.environ.get(DATA_ENV)
    if env:
        out.append(Path(env).expanduser())
    out.append(Path.cwd() / ".." / "shared" / "data")
    out.append(_REPO_ROOT / ".." / "shared" / "data")
    return out


def data_root(required: bool = True) -> Path | None:
    """The data root (see module docstring); ``$MKN_DATA``, when set, must exist."""
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${DATA_ENV}={env} is not a directory")
        return path.resolve()
    for path in data_root_candidates():
        if path.is_dir():
            return path.resolve()
    if required:
        tried = ", ".join(str(p) for p in data_root_candidates())
        raise FileNotFoundError(f"no data root found (tried {tried}); set ${DATA_ENV}")
    return None


def resolve_data_path(path: str | os.PathLike) -> Path:
    """An absolute path as is; a relative one under the data root, else from the cwd."""
    path = Path(path).expanduser()
    if path.is_absolute():
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    tried = []
    root = data_root(required=False)
    if root is not None:
        tried.append(root / path)
    tried.append(Path.cwd() / path)
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    raise FileNotFoundError(f"{path} not found (tried {', '.join(str(p) for p in tried)}; "
                            f"the data root is ${DATA_ENV} or ../shared/data)")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"mlama:PATH"`` -> ``("mlama", "PATH")``; ``"builtin"`` -> ``("builtin", None)``."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown fact source {spec!r}: use builtin, mlama:PATH, bmlama:PATH "
                         "or jsonl:PATH")
    if kind == "builtin":
        if sep and rest:
            raise ValueError(f"'builtin' takes no path: {spec!r}")
        return kind, None
    if not rest.strip():
        raise ValueError(f"{kind}: needs a path, e.g. {kind}:paraphrased-mlama-6")
    return kind, rest.strip()


def load_facts(spec: str = "builtin", languages: Sequence[str] | None = None,
               limit: int | None = None, lenient: bool = False,
               seed: int | None = None, relations: Sequence[str] | None = None,
               per_relation: int | None = None) -> FactSet:
    """Load facts aligned across ``languages``.

    Args:
        spec: ``builtin``, ``mlama:PATH``, ``bmlama:PATH`` or ``jsonl:PATH``.
        languages: language codes every returned fact must have (each fact is restricted to
            them); ``None``: all languages of the source (facts lacking one are left out).
        limit: keep the first N facts in the source's deterministic order (builtin/jsonl: file
            order; mLAMA: relation number, then ``lineid``; BMLAMA: row), or of the shuffled
            order when ``seed`` is given.
        lenient: skip bad records and list them in ``FactSet.skipped`` instead of raising
            :class:`~mkn.data.schema.DataError` (``FILE:LINE: reason``).
        seed: when not None, shuffle with ``random.Random(seed)`` before ``limit``: a
            reproducible random sample (reads the whole source).
        relations: keep only facts of these relations (e.g. ``["P36", "P37"]``); unknown ones
            are an error.
        per_relation: at most N facts per relation; with ``relations`` or ``per_relation``
            the facts are interleaved relation by relation before ``limit`` (a balanced
            sample, which fact-checking and injection need).

    Returns:
        a :class:`~mkn.data.schema.FactSet` (a list of facts with ``skipped``, ``unaligned``,
        ``languages`` and ``source``).
    """
    kind, path = parse_spec(spec)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if relations is not None or per_relation is not None:
        if kind == "mlama":  # reads only the requested relation files
            assert path is not None
            facts = read_mlama(resolve_data_path(path), languages, lenient=lenient,
                               relations=relations)
        else:
            facts = load_facts(spec, languages, None, lenient, None)
        return sample_by_relation(facts, relations, per_relation, limit, seed)
    if kind == "builtin":
        return builtin_facts(languages, limit, seed)
    assert path is not None
    where = resolve_data_path(path)
    if kind == "mlama":
        return read_mlama(where, languages, limit=limit, lenient=lenient, seed=seed)
    if kind == "bmlama":
        return read_bmlama(where, languages, limit=limit, lenient=lenient, seed=seed)
    facts = read_facts(where, lenient=lenient)
    facts.source = f"jsonl:{where}"
    return select(facts, languages, limit, seed)

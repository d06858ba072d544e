"""Reader for mLAMA-layout data (e.g. ``paraphrased-mlama-6``).

Layout (one folder per language)::

    <root>/<lang>/P17.jsonl          one fact per line: {"uuid", "lineid", "sub_uri", "sub_label",
                                     "obj_uri", "obj_label"}; labels in that language
    <root>/<lang>/paraphrases.jsonl  {"relation", "pattern"}: paraphrased templates (optional)
    <root>/<lang>/templates.jsonl    {"relation", "template"}: mLAMA's one template per relation

``paraphrases.jsonl``/``templates.jsonl`` are looked up in the language folder first, then in
``<root>`` (shared by all languages). A fact is the same in every language when its ``uuid`` is
(alignment is by ``uuid`` within a relation file).

Queries for (fact, language) = that language's paraphrases for the fact's relation, in file
order; when the relation has none, its single template. Templates are used verbatim (mLAMA's
English templates end in ``[Y] .`` with a space; causal LMs only read the text before ``[Y]``).

Fact: ``id`` = the ``uuid``; ``relation`` = the file name (``P17``); ``meta`` = ``lineid``,
``sub_uri``, ``obj_uri`` (from the first requested language).

Order: relations by property number (P17, P19, P20, ..., P1412), then facts by ``lineid`` (the
same in every language in mLAMA), then ``uuid``. ``limit`` takes the first N aligned facts in this
order and stops reading there, so small limits are fast; ``seed`` reads everything and shuffles.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mkn.data.schema import (
    DataError,
    Fact,
    FactLanguage,
    FactSet,
    Issues,
    check_languages,
    check_query,
    format_validation_error,
    jsonl_objects,
)

PARAPHRASES = "paraphrases.jsonl"
TEMPLATES = "templates.jsonl"
_NOT_RELATIONS = {PARAPHRASES, TEMPLATES}


def _relation_key(name: str) -> tuple[int, str]:
    m = re.fullmatch(r"P(\d+)", name)
    return (int(m.group(1)) if m else 10**9, name)


def mlama_languages(root: str | os.PathLike) -> list[str]:
    """Language folders under ``root`` that hold at least one ``P*.jsonl``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mLAMA folder {root} does not exist")
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and any(p.glob("P*.jsonl")))


def relation_files(lang_dir: Path) -> dict[str, Path]:
    """``relation -> file`` for the ``P*.jsonl`` fact files of one language folder."""
    return {p.stem: p for p in lang_dir.glob("P*.jsonl") if p.name not in _NOT_RELATIONS}


def _string_field(data: dict, key: str) -> str:
    if key not in data:
        raise ValueError(f'missing "{key}"')
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, got {type(value).__name__}')
    if not value.strip():
        raise ValueError(f'empty "{key}"')
    return value


def read_patterns(path: Path, key: str, issues: Issues) -> dict[str, list[str]]:
    """``relation -> [pattern, ...]`` from a paraphrases (key ``pattern``) or templates file."""
    out: dict[str, list[str]] = {}
    for lineno, data in jsonl_objects(path, issues):
        try:
            relation = _string_field(data, "relation")
            pattern = _string_field(data, key)
        except ValueError as err:
            issues.report(path, lineno, str(err))
            continue
        problem = check_query(pattern)
        if problem:
            issues.report(path, lineno, problem)
            continue
        patterns = out.setdefault(relation, [])
        if pattern not in patterns:
            patterns.append(pattern)
    return out


class _Language:
    """Lazily loaded queries of one language folder."""

    def __init__(self, root: Path, lang: str, issues: Issues):
        self.dir = root / lang
        self.lang = lang
        self.issues = issues
        self.files = relation_files(self.dir)
        self._paraphrases: dict[str, list[str]] | None = None
        self._templates: dict[str, list[str]] | None = None
        self._paraphrase_file = self._find(root, PARAPHRASES)
        self._template_file = self._find(root, TEMPLATES)

    def _find(self, root: Path, name: str) -> Path | None:
        for candidate in (self.dir / name, root / name):
            if candidate.is_file():
                return candidate
        return None

    def queries(self, relation: str) -> list[str] | None:
        if self._paraphrases is None:
            self._paraphrases = (read_patterns(self._paraphrase_file, "pattern", self.issues)
                                 if self._paraphrase_file else {})
        if relation in self._paraphrases:
            return self._paraphrases[relation]
        if self._templates is None:
            self._templates = (read_patterns(self._template_file, "template", self.issues)
                               if self._template_file else {})
        return self._templates.get(relation)

    def records(self, relation: str) -> dict[str, tuple[int, int, dict]]:
        """``uuid -> (lineid, line number, record)`` of one relation file; bad records reported."""
        path = self.files[relation]
        out: dict[str, tuple[int, int, dict]] = {}
        for lineno, data in jsonl_objects(path, self.issues):
            try:
                uuid = _string_field(data, "uuid")
                for key in ("sub_label", "obj_label"):
                    _string_field(data, key)
                lineid = data.get("lineid", lineno)
                if not isinstance(lineid, int) or isinstance(lineid, bool):
                    raise ValueError(f'"lineid" must be an integer, got {lineid!r}')
            except ValueError as err:
                self.issues.report(path, lineno, str(err))
                continue
            if uuid in out:
                self.issues.report(path, lineno, f"duplicate uuid {uuid} "
                                                 f"(first on line {out[uuid][1]})")
                continue
            out[uuid] = (lineid, lineno, data)
        return out


def read_mlama(path: str | os.PathLike, languages: Sequence[str] | None = None,
               limit: int | None = None, lenient: bool = False, seed: int | None = None,
               relations: Sequence[str] | None = None) -> FactSet:
    """Read mLAMA-layout facts aligned across ``languages`` (default: all language folders).

    Only facts present in every requested language are returned (others are counted in
    ``unaligned``). ``relations`` restricts to those relation files (e.g. ``["P36", "P37"]``).
    Bad records raise :class:`DataError` (``FILE:LINE: reason``) or, with ``lenient``, are
    skipped and listed in ``skipped``.
    """
    root = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    available = mlama_languages(root)
    if not available:
        raise DataError(root, 0, "no language folders with P*.jsonl files (mLAMA layout: "
                                 "<root>/<lang>/P*.jsonl)")
    langs = check_languages(languages, available, str(root))
    issues = Issues(lenient)
    readers = [_Language(root, lang, issues) for lang in langs]
    all_relations = set().union(*(r.files for r in readers))
    if relations is not None:
        unknown = [r for r in relations if r not in all_relations]
        if unknown:
            raise ValueError(f"relation(s) {', '.join(unknown)} not in {root} "
                             f"(available: {', '.join(sorted(all_relations, key=_relation_key))})")
        all_relations = set(relations)
    facts: list[Fact] = []
    unaligned = 0
    stop = limit if seed is None else None
    for relation in sorted(all_relations, key=_relation_key):
        if stop is not None and len(facts) >= stop:
            break
        per_lang: list[dict[str, tuple[int, int, dict]]] = []
        queries: list[list[str]] = []
        for reader in readers:
            if relation not in reader.files:
                per_lang.append({})
                queries.append([])
                continue
            qs = reader.queries(relation)
            if not qs:
                issues.report(reader.files[relation], 0,
                              f"no paraphrases or template for relation {relation} in "
                              f"{reader.lang} (looked in {PARAPHRASES} and {TEMPLATES})")
                per_lang.append({})
                queries.append([])
                continue
            per_lang.append(reader.records(relation))
            queries.append(qs)
        common = set(per_lang[0]).intersection(*per_lang[1:])
        unaligned += len(set().union(*per_lang)) - len(common)
        pivot = per_lang[0]
        for uuid in sorted(common, key=lambda u: (pivot[u][0], u)):
            if stop is not None and len(facts) >= stop:
                break
            fact = _make_fact(uuid, relation, langs, per_lang, queries, issues, readers)
            if fact is not None:  # None: reported as skipped
                facts.append(fact)
    if seed is not None:
        random.Random(seed).shuffle(facts)
        if limit is not None:
            facts = facts[:limit]
    return FactSet(facts, languages=langs, source=f"mlama:{root}", skipped=issues.skipped,
                   unaligned=unaligned)


def _make_fact(uuid: str, relation: str, langs: list[str], per_lang: list[dict],
               queries: list[list[str]], issues: Issues, readers: list[_Language]) -> Fact | None:
    views: dict[str, FactLanguage] = {}
    for lang, records, qs, reader in zip(langs, per_lang, queries, readers, strict=True):
        _, lineno, data = records[uuid]
        try:
            views[lang] = FactLanguage(subject=data["sub_label"], object=data["obj_label"],
                                       queries=qs)
        except ValidationError as err:
            reason = format_validation_error(err)
            issues.report(reader.files[relation], lineno, reason)
            return None
    lineid, _, first = per_lang[0][uuid]
    meta: dict[str, Any] = {"lineid": lineid}
    for key in ("sub_uri", "obj_uri"):
        if key in first:
            meta[key] = first[key]
    return Fact(id=uuid, relation=relation, languages=views, meta=meta)

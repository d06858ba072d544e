"""The fact schema shared by every data source, and its JSONL serialization.

A :class:`Fact` is one (subject, relation, object) triple, expressed in one or more languages:

- ``id`` (str): unique within a fact set (mLAMA: the ``uuid``; BMLAMA: ``bmlama17-<row>``;
  builtin: e.g. ``capital-france``).
- ``relation`` (str): the relation, as a Wikidata property id where known (``P36`` = capital),
  else a free name or ``"unknown"``.
- ``languages`` (dict ``lang -> FactLanguage``): the fact in each language (ISO 639-1 codes).
- ``meta`` (dict, optional): provenance that does not affect queries (e.g. mLAMA ``sub_uri``,
  ``obj_uri``, ``lineid``; BMLAMA ``row``).

A :class:`FactLanguage` holds one language's view of the fact:

- ``subject`` / ``object`` (str): surface forms *as the queries use them* (for inflecting
  languages the builtin set stores e.g. the Russian genitive ``Франции`` when every query of that
  fact reads "Столица [X] — [Y]."). Neither may contain ``[X]`` or ``[Y]``.
- ``queries`` (list of str, at least one): cloze templates. Each has exactly one ``[Y]`` (where the
  object goes; it may sit mid-sentence, as in ja/ko ``[X]の首都は[Y]です。``) and at most one
  ``[X]`` (the subject). A query without ``[X]`` is already filled in (BMLAMA prompts whose
  subject could not be located in the prompt text).
- ``candidates`` (list of str, may be empty): alternative, *wrong* objects (e.g. BMLAMA's
  candidate answers minus the gold one), for fact-checking and contrastive probes. Never contains
  the object itself.

``fact.prompts(lang)`` fills ``[X]`` with the subject and keeps ``[Y]``: the attribution engine
decides what to do with ``[Y]`` (causal LMs read the text before it, masked LMs get masks).

JSONL: one fact per line, UTF-8, keys in this order (``candidates`` and ``meta`` are omitted when
empty)::

    {"id": "capital-france", "relation": "P36",
     "languages": {"en": {"subject": "France", "object": "Paris",
                          "queries": ["The capital of [X] is the city of [Y]."],
                          "candidates": ["Lyon"]}}}

Blank lines are ignored. Reading reports problems as ``FILE:LINE: reason`` (:class:`DataError`, a
``ValueError``); with ``lenient=True`` bad records are skipped and listed in
``FactSet.skipped`` instead. Nothing is dropped silently: facts that lack a requested language
are counted in ``FactSet.unaligned``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

SUBJECT = "[X]"
OBJECT = "[Y]"


class DataError(ValueError):
    """Bad input data: the message is ``FILE:LINE: reason`` (line 0: the file as a whole)."""

    def __init__(self, file: str | os.PathLike, line: int, reason: str):
        self.file = str(file)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.file}:{line}: {reason}")


@dataclass(frozen=True)
class Skipped:
    """A record that ``lenient=True`` skipped: where it is and why (line 0: the whole file)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class Issues:
    """Collects data problems: raises :class:`DataError` (strict) or records :class:`Skipped`."""

    def __init__(self, lenient: bool):
        self.lenient = lenient
        self.skipped: list[Skipped] = []

    def report(self, file: str | os.PathLike, line: int, reason: str) -> None:
        if not self.lenient:
            raise DataError(file, line, reason)
        self.skipped.append(Skipped(str(file), line, reason))


def check_query(query: str) -> str | None:
    """Why ``query`` is not a valid cloze template, or None when it is."""
    if not isinstance(query, str) or not query.strip():
        return "empty query"
    if query.count(OBJECT) != 1:
        return f"query {query!r} must contain exactly one {OBJECT}"
    if query.count(SUBJECT) > 1:
        return f"query {query!r} contains {SUBJECT} more than once"
    return None


def _check_label(value: str, what: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"{what} is empty")
    if SUBJECT in value or OBJECT in value:
        raise ValueError(f"{what} {value!r} contains {SUBJECT} or {OBJECT}")
    return value


class FactLanguage(BaseModel):
    """One language's view of a fact: subject, object, cloze queries, wrong candidates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str
    object: str
    queries: list[str]
    candidates: list[str] = []

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return _check_label(value, "subject")

    @field_validator("object")
    @classmethod
    def _object(cls, value: str) -> str:
        return _check_label(value, "object")

    @field_validator("queries")
    @classmethod
    def _queries(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("no queries")
        for query in value:
            problem = check_query(query)
            if problem:
                raise ValueError(problem)
        if len(set(value)) != len(value):
            raise ValueError("duplicate queries")
        return value

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, value: list[str]) -> list[str]:
        if any(not c or not c.strip() for c in value):
            raise ValueError("empty candidate")
        return value

    @model_validator(mode="after")
    def _object_not_candidate(self) -> FactLanguage:
        if self.object in self.candidates:
            raise ValueError(f"the object {self.object!r} is among the candidates "
                             "(candidates are the wrong answers)")
        return self

    def prompts(self) -> list[str]:
        """The queries with ``[X]`` filled in by the subject; ``[Y]`` is kept."""
        return [q.replace(SUBJECT, self.subject) for q in self.queries]


class Fact(BaseModel):
    """A fact (subject, relation, object) in one or more languages."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    relation: str
    languages: dict[str, FactLanguage]
    meta: dict[str, Any] = {}

    @field_validator("id", "relation")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: dict[str, FactLanguage]) -> dict[str, FactLanguage]:
        if not value:
            raise ValueError("a fact needs at least one language")
        return value

    def language(self, lang: str) -> FactLanguage:
        """This fact in ``lang``; a clear KeyError when it lacks it."""
        try:
            return self.languages[lang]
        except KeyError:
            raise KeyError(f"fact {self.id!r} has no language {lang!r} "
                           f"(it has {', '.join(self.languages)})") from None

    def prompts(self, lang: str) -> list[str]:
        """The queries in ``lang`` with ``[X]`` filled in by the subject; ``[Y]`` is kept."""
        return self.language(lang).prompts()

    def has(self, languages: Iterable[str]) -> bool:
        return all(lang in self.languages for lang in languages)

    def restrict(self, languages: Sequence[str]) -> Fact:
        """The same fact with only ``languages`` (in that order); all must be present."""
        if list(self.languages) == list(languages):
            return self
        langs = {lang: self.language(lang) for lang in languages}
        return self.model_copy(update={"languages": langs})

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record (empty ``candidates``/``meta`` left out)."""
        out: dict[str, Any] = {"id": self.id, "relation": self.relation, "languages": {}}
        for lang, fl in self.languages.items():
            rec: dict[str, Any] = {"subject": fl.subject, "object": fl.object,
                                   "queries": list(fl.queries)}
            if fl.candidates:
                rec["candidates"] = list(fl.candidates)
            out["languages"][lang] = rec
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


class FactSet(list):
    """A list of :class:`Fact` plus what reading it left out.

    ``skipped``: records skipped by ``lenient=True`` (file, line, reason).
    ``unaligned``: facts read but left out because they lack a requested language.
    ``languages``: the languages every fact has (in this order); ``source``: where it came from.
    """

    def __init__(self, facts: Iterable[Fact] = (), *, languages: Sequence[str] = (),
                 source: str = "", skipped: Iterable[Skipped] = (), unaligned: int = 0):
        super().__init__(facts)
        self.languages = list(languages)
        self.source = source
        self.skipped: list[Skipped] = list(skipped)
        self.unaligned = unaligned

    def without(self, dropped: dict[str, str]) -> FactSet:
        """The set without the facts ``dropped`` (id -> reason), each listed in ``skipped``."""
        kept = [f for f in self if f.id not in dropped]
        return FactSet(kept, languages=self.languages, source=self.source,
                       skipped=[*self.skipped, *(Skipped(self.source or "?", 0, f"fact {i}: {r}")
                                                 for i, r in dropped.items())],
                       unaligned=self.unaligned)

    def summary(self) -> str:
        """One line for a run's report, e.g. ``20 facts x 6 languages from ...; 0 skipped``."""
        text = (f"{len(self)} facts x {len(self.languages)} languages "
                f"({', '.join(self.languages)}) from {self.source or '?'}; "
                f"{len(self.skipped)} bad records skipped; "
                f"{self.unaligned} facts without all languages left out")
        return text


def format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def fact_from_dict(data: Any) -> Fact:
    """Validate a JSONL record; raises ``ValueError`` with a short reason."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    for key in ("id", "relation", "languages"):
        if key not in data:
            raise ValueError(f'missing "{key}"')
    try:
        return Fact.model_validate(data)
    except ValidationError as err:
        raise ValueError(format_validation_error(err)) from None


def dumps_fact(fact: Fact) -> str:
    return json.dumps(fact.to_dict(), ensure_ascii=False)


def write_facts(facts: Iterable[Fact], path: str | os.PathLike) -> Path:
    """Write facts as JSONL (UTF-8, one fact per line); returns the path."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for fact in facts:
            f.write(dumps_fact(fact) + "\n")
    return path


def not_utf8(err: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{err.object[err.start]:02x} at column {err.start + 1})"


def jsonl_objects(path: Path, issues: Issues) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)``; lines that are not UTF-8, not JSON, nested too deeply
    or not an object are reported (file and line)."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                issues.report(path, lineno, not_utf8(err))
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                issues.report(path, lineno, f"invalid JSON: {err.msg} (column {err.colno})")
                continue
            except RecursionError:
                issues.report(path, lineno, "invalid JSON: nested too deeply")
                continue
            if not isinstance(data, dict):
                issues.report(path, lineno, f"expected a JSON object, got {type(data).__name__}")
                continue
            yield lineno, data


def read_facts(path: str | os.PathLike, lenient: bool = False) -> FactSet:
    """Read a JSONL fact file; bad lines raise ``FILE:LINE: reason`` or, lenient, are skipped."""
    path = Path(path)
    issues = Issues(lenient)
    facts: list[Fact] = []
    seen: dict[str, int] = {}
    for lineno, data in jsonl_objects(path, issues):
        try:
            fact = fact_from_dict(data)
        except ValueError as err:
            issues.report(path, lineno, str(err))
            continue
        if fact.id in seen:
            issues.report(path, lineno, f"duplicate fact id {fact.id!r} "
                                        f"(first on line {seen[fact.id]})")
            continue
        seen[fact.id] = lineno
        facts.append(fact)
    langs: list[str] = []
    for fact in facts:
        langs.extend(lang for lang in fact.languages if lang not in langs)
    return FactSet(facts, languages=langs, source=str(path), skipped=issues.skipped)


def select(facts: FactSet, languages: Sequence[str] | None = None, limit: int | None = None,
           seed: int | None = None) -> FactSet:
    """The aligned subset: facts having every language in ``languages``, restricted to them.

    ``languages=None`` means every language that occurs in ``facts``. Order: the input order, or
    with ``seed`` a ``random.Random(seed)`` shuffle of it; then ``limit`` keeps the first N.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    langs = check_languages(languages, facts.languages, facts.source or "the facts")
    kept = [f.restrict(langs) for f in facts if f.has(langs)]
    unaligned = facts.unaligned + (len(facts) - len(kept))
    if seed is not None:
        random.Random(seed).shuffle(kept)
    if limit is not None:
        kept = kept[:limit]
    return FactSet(kept, languages=langs, source=facts.source, skipped=facts.skipped,
                   unaligned=unaligned)


def in_turn(groups: Iterable[Sequence]) -> list:
    """The items of ``groups`` taken in turn (round robin): every group's first, then every
    group's second, ...; a prefix of any length covers as many groups as it can."""
    groups = list(groups)
    return [group[i] for i in range(max(map(len, groups), default=0))
            for group in groups if i < len(group)]


def sample_by_relation(facts: FactSet, relations: Sequence[str] | None = None,
                       per_relation: int | None = None, limit: int | None = None,
                       seed: int | None = None) -> FactSet:
    """Facts of ``relations`` only (all when None), at most ``per_relation`` of each relation,
    then the first ``limit``; with ``seed``, drawn from a ``random.Random(seed)`` shuffle.

    Relations keep their order of first appearance, and facts are interleaved relation by
    relation (round robin) so a small ``limit`` still covers several relations.
    """
    if per_relation is not None and per_relation < 1:
        raise ValueError(f"per_relation must be >= 1, got {per_relation}")
    present = list(dict.fromkeys(f.relation for f in facts))
    if relations is not None:
        unknown = [r for r in relations if r not in present]
        if unknown:
            source = facts.source or "the facts"
            raise ValueError(f"relation(s) {', '.join(unknown)} not in {source} "
                             f"(available: {', '.join(present) or 'none'})")
    order = list(facts)
    if seed is not None:
        random.Random(seed).shuffle(order)
    wanted = present if relations is None else list(dict.fromkeys(relations))
    groups = {r: [f for f in order if f.relation == r][:per_relation] for r in wanted}
    kept = in_turn(groups.values())
    if limit is not None:
        kept = kept[:limit]
    return FactSet(kept, languages=facts.languages, source=facts.source, skipped=facts.skipped,
                   unaligned=facts.unaligned)


def check_languages(requested: Sequence[str] | None, available: Sequence[str],
                    source: str) -> list[str]:
    """``requested`` (deduplicated, order kept) or all ``available``; unknown ones are an error."""
    if requested is None:
        return list(available)
    if isinstance(requested, str):
        requested = [requested]
    langs = list(dict.fromkeys(requested))
    if not langs:
        raise ValueError("no languages requested")
    missing = [lang for lang in langs if lang not in available]
    if missing:
        raise ValueError(f"language(s) {', '.join(missing)} not in {source} "
                         f"(available: {', '.join(available) or 'none'})")
    return langs

"""Reader for BMLAMA TSV data (e.g. ``bmlama17``: 17 languages, 6,792 facts each).

Layout: ``<root>/<lang>.tsv``, UTF-8, a header then one fact per row; row *i* is the same fact in
every language (alignment is by row). Columns: ``Prompt`` (the query with ``<mask>`` where the
object goes and the subject already written in), ``Ans`` (gold object), ``Candidate Ans``
(comma-separated candidate objects of the same relation, the gold one among them), ``Subject``.

Quirks of the real files handled here (the files are never modified):

- CRLF line endings (read with ``newline=""``; the csv module handles ``\\r\\n``).
- ``zh.tsv``'s header has a stray tab (``Candidate\\tAns``): 5 header fields for 4 data fields.
  That exact header is accepted; any other unexpected header is an error.
- Fields holding ``"`` are CSV-quoted with doubled quotes (``"נאט""ו"`` in ``he.tsv``, one row of
  ``ca.tsv``): rows are parsed as tab-separated CSV, which unquotes them.

Mapping to :class:`~mkn.data.schema.Fact`:

- ``id`` = ``f"{id_prefix}-{row}"`` (default prefix: the name of the directory read, e.g.
  ``bmlama17``, so ids say which source they come from), ``row`` = 0-based data row
  (file line ``row + 2``); ``meta = {"row": row}``.
- ``queries`` = ``[prompt]`` with ``<mask>`` -> ``[Y]`` and the first occurrence of the subject
  text -> ``[X]`` (searched before the mask, then after it), so ``prompts(lang)`` gives back the
  original prompt exactly. If the subject text does not occur in the prompt, the query is kept
  filled in (no ``[X]``) and ``prompts`` returns it unchanged.
- ``candidates`` = ``Candidate Ans`` split on ``,``, stripped, de-duplicated, gold removed. Commas
  inside an entity name cannot be told apart from separators (the format has no escaping).
- ``relation``: BMLAMA has no relation column, but its English prompts use mLAMA's 38 English
  templates; when ``en.tsv`` is present the relation is derived from the English prompt of the
  same row (:data:`EN_TEMPLATES`, e.g. ``P36``), else ``"unknown"``.

Order: by row; ``limit`` takes the first N aligned rows and stops reading there; ``seed`` reads
all rows and shuffles.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import ValidationError

from mkn.data.schema import (
    OBJECT,
    SUBJECT,
    DataError,
    Fact,
    FactLanguage,
    FactSet,
    Issues,
    check_languages,
    format_validation_error,
)

MASK = "<mask>"
COLUMNS = ("Prompt", "Ans", "Candidate Ans", "Subject")
# zh.tsv in bmlama17: "Candidate Ans" split by a stray tab.
_QUIRK_HEADERS = {("Prompt", "Ans", "Candidate", "Ans", "Subject")}
UNKNOWN_RELATION = "unknown"

# BMLAMA's English prompts are mLAMA's English templates (with ``<mask>`` for ``[Y]`` and no space
# before the final period); each maps to the Wikidata property of its mLAMA relation file.
EN_TEMPLATES: dict[str, str] = {
    "[X] was born in [Y].": "P19",
    "[X] died in [Y].": "P20",
    "[X] is a subclass of [Y].": "P279",
    "The official language of [X] is [Y].": "P37",
    "[X] plays in [Y] position.": "P413",
    "[X] was originally aired on [Y].": "P449",
    "[X] shares border with [Y].": "P47",
    "[X] is named after [Y].": "P138",
    "The original language of [X] is [Y].": "P364",
    "[X] is a member of [Y].": "P463",
    "[X] works in the field of [Y].": "P101",
    "[X] is a [Y] by profession.": "P106",
    "[X] consists of [Y].": "P527",
    "[X] maintains diplomatic relations with [Y].": "P530",
    "[X] is produced by [Y].": "P176",
    "[X] is [Y] citizen.": "P27",
    "[X] was written in [Y].": "P407",
    "[X] is located in [Y].": "P276",
    "[X] is developed by [Y].": "P178",
    "[X] is the capital of [Y].": "P1376",
    "[X] used to communicate in [Y].": "P1412",
    "[X] works for [Y].": "P108",
    "[X] plays [Y] music.": "P136",
    "[X] has the position of [Y].": "P39",
    "[X] is represented by music label [Y].": "P264",
    "[X] used to work in [Y].": "P937",
    "[X] is affiliated with the [Y] religion.": "P140",
    "[X] plays [Y].": "P1303",
    "[X] is owned by [Y].": "P127",
    "The native language of [X] is [Y].": "P103",
    "[X] and [Y] are twin cities.": "P190",
    "[X] is a legal term in [Y].": "P1001",
    "[X] is a [Y].": "P31",
    "[X] was created in [Y].": "P495",
    "The headquarter of [X] is in [Y].": "P159",
    "The capital of [X] is [Y].": "P36",
    "[X] was founded in [Y].": "P740",
    "[X] is part of [Y].": "P361",
}


def bmlama_languages(root: str | os.PathLike) -> list[str]:
    """Languages (``<lang>.tsv`` files) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BMLAMA folder {root} does not exist")
    return sorted(p.stem for p in root.glob("*.tsv"))


def to_query(prompt: str, subject: str) -> str:
    """``<mask>`` -> ``[Y]``; the first occurrence of ``subject`` -> ``[X]`` (if any)."""
    before, after = prompt.split(MASK)
    if subject in before:
        before = before.replace(subject, SUBJECT, 1)
    elif subject in after:
        after = after.replace(subject, SUBJECT, 1)
    return before + OBJECT + after


def split_candidates(text: str, gold: str) -> list[str]:
    out: list[str] = []
    for c in text.split(","):
        c = c.strip()
        if c and c != gold and c not in out:
            out.append(c)
    return out


_SURROGATE = re.compile("[\udc80-\udcff]")


class _TsvReader:
    """Rows of one BMLAMA file: ``(line, fields)``; checks the header."""

    def __init__(self, path: Path):
        self.path = path
        # undecodable bytes become surrogates, reported per row (file and line)
        self._file = path.open(encoding="utf-8", errors="surrogateescape", newline="")
        self._reader = csv.reader(self._file, delimiter="\t", quotechar='"', doublequote=True,
                                  strict=True)
        self.rows = 0
        try:
            header = next(self._reader, None)
        except csv.Error as err:
            self.close()
            raise DataError(path, 1, f"unreadable header: {err}") from None
        if header is None:
            self.close()
            raise DataError(path, 1, "empty file (expected a header: "
                                     f"{chr(9).join(COLUMNS)})")
        header = [h.strip() for h in header]
        if tuple(header) != COLUMNS and tuple(header) not in _QUIRK_HEADERS:
            self.close()
            raise DataError(path, 1, f"unexpected header {header} (expected {list(COLUMNS)})")

    def __iter__(self) -> Iterator[tuple[int, list[str] | str]]:
        """Yield ``(line, fields)`` or ``(line, error message)`` for each data row."""
        while True:
            start = self.next_line
            try:
                fields = next(self._reader)
            except StopIteration:
                return
            except csv.Error as err:
                self.rows += 1
                yield start, f"unreadable row: {err}"
                continue
            self.rows += 1
            bad = next((f for f in fields if _SURROGATE.search(f)), None)
            if bad is not None:
                column = _SURROGATE.search(bad).start() + 1
                byte = ord(bad[column - 1]) - 0xDC00
                yield start, f"not valid UTF-8 (byte 0x{byte:02x} in a field, column {column})"
                continue
            yield start, fields

    @property
    def next_line(self) -> int:
        """The file line the next row would start on."""
        return self._reader.line_num + 1

    def close(self) -> None:
        self._file.close()


def _parse(fields: list[str] | str) -> tuple[FactLanguage | None, str]:
    """A row's :class:`FactLanguage`, or ``(None, reason)``."""
    if isinstance(fields, str):
        return None, fields
    if len(fields) != len(COLUMNS):
        return None, (f"expected {len(COLUMNS)} tab-separated fields ({', '.join(COLUMNS)}), "
                      f"got {len(fields)}")
    prompt, gold, candidates, subject = fields
    gold, subject = gold.strip(), subject.strip()
    if prompt.count(MASK) != 1:
        return None, f"prompt {prompt!r} must contain {MASK} exactly once"
    if not gold:
        return None, 'empty "Ans"'
    if not subject:
        return None, 'empty "Subject"'
    try:
        view = FactLanguage(subject=subject, object=gold, queries=[to_query(prompt, subject)],
                            candidates=split_candidates(candidates, gold))
    except ValidationError as err:
        return None, format_validation_error(err)
    return view, ""


def relation_of(en_fields: list[str] | str | None) -> str:
    """The relation of a row from its English prompt (:data:`EN_TEMPLATES`), or ``unknown``."""
    if not isinstance(en_fields, list) or len(en_fields) != len(COLUMNS):
        return UNKNOWN_RELATION
    prompt, _, _, subject = en_fields
    if prompt.count(MASK) != 1 or not subject.strip():
        return UNKNOWN_RELATION
    template = to_query(prompt, subject.strip())
    return EN_TEMPLATES.get(template, UNKNOWN_RELATION)


def read_bmlama(path: str | os.PathLike, languages: Sequence[str] | None = None,
                limit: int | None = None, lenient: bool = False, seed: int | None = None,
                id_prefix: str | None = None) -> FactSet:
    """Read BMLAMA TSV facts aligned by row across ``languages`` (default: all files).

    Rows bad in some language raise :class:`DataError` (``FILE:LINE: reason``) or, with
    ``lenient``, are skipped there (listed in ``skipped``; the row is left out in every language).
    Files with different numbers of rows are an error (rows would not be aligned).
    """
    root = Path(path)
    if id_prefix is None:
        id_prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name).strip("-") or "bmlama"
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    available = bmlama_languages(root)
    if not available:
        raise DataError(root, 0, "no <lang>.tsv files (BMLAMA layout: <root>/<lang>.tsv)")
    langs = check_languages(languages, available, str(root))
    issues = Issues(lenient)
    names = list(langs) + (["en"] if "en" in available and "en" not in langs else [])
    readers: list[_TsvReader] = []
    try:
        for lang in names:
            readers.append(_TsvReader(root / f"{lang}.tsv"))
        facts = _read_rows(readers, langs, limit if seed is None else None,
                                      issues, id_prefix)
    finally:
        for reader in readers:
            reader.close()
    if seed is not None:
        random.Random(seed).shuffle(facts)
        if limit is not None:
            facts = facts[:limit]
    return FactSet(facts, languages=langs, source=f"bmlama:{root}", skipped=issues.skipped)


def _read_rows(readers: list[_TsvReader], langs: list[str], stop: int | None, issues: Issues,
               id_prefix: str) -> list[Fact]:
    facts: list[Fact] = []
    iters = [iter(r) for r in readers]
    en_index = len(langs) if len(readers) > len(langs) else (
        langs.index("en") if "en" in langs else None)
    row = 0
    while stop is None or len(facts) < stop:
        items = [next(it, None) for it in iters]
        if all(item is None for item in items):
            break
        if any(item is None for item in items):
            ended = [r for r, item in zip(readers, items, strict=True) if item is None]
            longer = [r for r, item in zip(readers, items, strict=True) if item is not None]
            for r in ended:
                issues.report(r.path, r.next_line,
                              f"ends after {r.rows} data rows but {longer[0].path.name} has more:"
                              " rows are not aligned")
            break
        views: dict[str, FactLanguage] = {}
        for lang, reader, (line, fields) in zip(langs, readers, items, strict=False):
            view, reason = _parse(fields)
            if view is None:  # lenient: reported as skipped, the row is left out
                issues.report(reader.path, line, reason)
            else:
                views[lang] = view
        if len(views) == len(langs):
            en_fields = items[en_index][1] if en_index is not None else None
            facts.append(Fact(id=f"{id_prefix}-{row}", relation=relation_of(en_fields),
                              languages=views, meta={"row": row}))
        row += 1
    return facts

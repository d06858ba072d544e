"""The report's pages per fact and per neuron: a small static site beside ``report.html``.

``RUN/report/facts/<fact>.html``: a fact's knowledge neurons per language (each a link to its
neuron page), the generic neurons left out, its language-agnostic and degenerate sets.
``RUN/report/neurons/L<layer>-N<index>.html``: what else a neuron does: the facts, relations
and languages it is a knowledge neuron of (each a link back), its scores and ranks, whether it
was left out as generic, where it sits. ``RUN/report/neurons.html`` lists every neuron by how
many facts it serves. Pages use the report's template (escaped, offline, only its table script).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mkn.models.families import hook_name
from mkn.report.blocks import Cell, Section, Table, Text
from mkn.runs.directory import write_atomic
from mkn.runs.store import unit_file_name

PAGES = "report"  # folder of the pages, next to report.html


def neuron_slug(layer: int, index: int) -> str:
    return f"L{int(layer)}-N{int(index)}"



def fact_href(fact_id: str, prefix: str = f"{PAGES}/") -> str:
    return f"{prefix}facts/{unit_file_name(fact_id)}.html"


def neuron_href(layer: int, index: int, prefix: str = f"{PAGES}/") -> str:
    return f"{prefix}neurons/{neuron_slug(layer, index)}.html"


@dataclass
class NeuronUse:
    fact_id: str
    relation: str
    language: str
    score: float
    rank: int
    generic: bool  # left out of the fact's set as generic


@dataclass
class NeuronIndex:
    """Per neuron, every (fact, language) it serves; per fact, its records."""

    uses: dict[tuple[int, int], list[NeuronUse]] = field(default_factory=lambda:
                                                         defaultdict(list))
    facts: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    agnostic: dict[str, dict] = field(default_factory=dict)
    degenerate: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, data) -> NeuronIndex:
        index = cls()
        for record in data.neurons:
            fact = str(record.get("fact_id"))
            index.facts[fact].append(record)
            for generic, key in ((False, "neurons"), (True, "generic")):
                for rank, entry in enumerate(record.get(key) or [], 1):
                    layer, neuron, score = int(entry[0]), int(entry[1]), float(entry[2])
                    index.uses[(layer, neuron)].append(NeuronUse(
                        fact, str(record.get("relation", "")), str(record.get("language", "")),
                        score, rank, generic))
        for record in data.agnostic:
            index.agnostic[str(record.get("fact_id"))] = record
        for record in data.degenerate:
            index.degenerate[str(record.get("fact_id"))].append(record)
        return index


def fact_sections(fact_id: str, index: NeuronIndex) -> list:
    """The sections of one fact's page."""
    records = index.facts[fact_id]
    relation = str(records[0].get("relation", "")) if records else ""
    rows = []
    for record in records:
        neurons = record.get("neurons") or []
        rows.append([Cell(str(record.get("language", ""))), Cell(str(record.get("target", ""))),
                     Cell("yes" if record.get("known") else "no"), Cell(str(len(neurons))),
                     Cell(", ".join(f"({int(n[0])}, {int(n[1])}) {float(n[2]):.3g}"
                                    for n in neurons[:60]), cls="mono"),
                     Cell(", ".join(f"({int(n[0])}, {int(n[1])})"
                                    for n in record.get("generic") or []), cls="mono"),
                     Cell(", ".join(f"({int(n[0])}, {int(n[1])})"
                                    for n in record.get("relation_set") or []), cls="mono")])
    section = Section("neurons", f"Knowledge neurons of {fact_id} ({relation})")
    section.blocks.append(Table(
        ["language", "object", "known", "neurons", "fact set: neurons (layer, index) score",
         "generic, left out", "relation set (relation neurons of this relation), left out"],
        rows))
    links = sorted({(int(n[0]), int(n[1])) for r in records for n in r.get("neurons") or []})
    link_rows = [[Cell(f"({a}, {b})", href=neuron_href(a, b, "../")), Cell(hook_name(a)),
                  Cell(str(len(index.uses[(a, b)])))] for a, b in links[:500]]
    section.blocks.append(Table(["neuron", "hook", "(fact, language) items it serves in the "
                                 "run"], link_rows, caption="What else each neuron does"))
    sections = [section]
    agnostic = index.agnostic.get(fact_id)
    if agnostic:
        shared = Section("agnostic", "Language-agnostic neurons")
        for key, title in (("neurons", "in every language"), ("soft_neurons", "soft")):
            entries = agnostic.get(key) or []
            shared.blocks.append(Table(["neuron", "hook"], [
                [Cell(f"({int(a)}, {int(b)})", href=neuron_href(a, b, "../")),
                 Cell(hook_name(a))] for a, b in entries], caption=f"{title}: {len(entries)}"))
        sections.append(shared)
    degenerate = index.degenerate.get(fact_id)
    if degenerate:
        sections.append(Section("degenerate", "Degenerate neuron pairs", [Table(
            ["language", "pairs"], [[Cell(str(r.get("language", ""))), Cell("; ".join(
                " + ".join(f"({int(n[0])}, {int(n[1])})" for n in pair)
                for pair in (r.get("pairs") or [])[:20]) or "-", cls="mono")]
                for r in degenerate])]))
    return sections


def neuron_sections(neuron: tuple[int, int], uses: list) -> list:
    """The sections of one neuron's page."""
    layer, index = neuron
    located = [u for u in uses if not u.generic]
    generic = [u for u in uses if u.generic]
    relations = Counter(u.relation for u in located)
    languages = Counter(u.language for u in located)
    summary = (f"{hook_name(layer)} (layer {layer}, index {index}): a knowledge neuron of "
               f"{len({u.fact_id for u in located})} facts in {len(located)} (fact, language) "
               f"items, {len(relations)} relations and {len(languages)} languages"
               + (f"; left out as generic in {len(generic)} items" if generic else "") + ".")
    rows = [[Cell(u.fact_id, href=fact_href(u.fact_id, "../")), Cell(u.relation),
             Cell(u.language), Cell(f"{u.score:.4g}"), Cell(str(u.rank)),
             Cell("generic, left out" if u.generic else "")]
            for u in sorted(uses, key=lambda u: (-u.score, u.fact_id, u.language))]
    spread = [[Cell(name), Cell(str(count))] for name, count in relations.most_common()]
    spread_lang = [[Cell(name), Cell(str(count))] for name, count in languages.most_common()]
    return [Section("neuron", f"Neuron ({layer}, {index})", [
        Text(summary),
        Table(["fact", "relation", "language", "score", "rank in its set", ""], rows,
              caption="Facts it serves"),
        Table(["relation", "items"], spread, caption="By relation"),
        Table(["language", "items"], spread_lang, caption="By language")])]


def write_pages(data, root: Path, render, home: str = "report.html") -> dict:
    """Write every fact and neuron page under ``root / PAGES``; ``render(title, sections,
    home)`` returns a page's HTML (``home``: the report's file name, linked from every page).
    Returns counts."""
    index = NeuronIndex.of(data)
    folder = root / PAGES
    (folder / "facts").mkdir(parents=True, exist_ok=True)
    (folder / "neurons").mkdir(parents=True, exist_ok=True)
    for fact_id in index.facts:
        write_atomic(root / fact_href(fact_id),  # atomic: never through a planted symlink
                     render(f"fact {fact_id}", fact_sections(fact_id, index), f"../../{home}"))
    for neuron, uses in index.uses.items():
        write_atomic(root / neuron_href(*neuron),
                     render(f"neuron {neuron_slug(*neuron)}", neuron_sections(neuron, uses),
                            f"../../{home}"))
    ranked = sorted(index.uses.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    rows = [[Cell(f"({a}, {b})", href=neuron_href(a, b, "")), Cell(hook_name(a)),
             Cell(str(len({u.fact_id for u in uses if not u.generic}))),
             Cell(str(len({u.relation for u in uses if not u.generic}))),
             Cell(str(len({u.language for u in uses if not u.generic}))),
             Cell(str(sum(u.generic for u in uses)))] for (a, b), uses in ranked]
    write_atomic(folder / "neurons.html", render("every neuron of the run", [Section(
        "neurons", "Every neuron of the run, by the number of facts it serves", [Table(
            ["neuron", "hook", "facts", "relations", "languages", "left out as generic"],
            rows)])], f"../{home}"))
    return {"facts": len(index.facts), "neurons": len(index.uses)}

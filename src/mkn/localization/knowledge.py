"""Does the model know a fact? One definition, used by every command.

Every query of a fact in a language is scored, in batched forward passes
(:mod:`mkn.attribution.scoring`), on the gold object and on each candidate answer the data has
(BMLAMA's ten candidates of the same relation):

- ``p_gold``: p(object | prompt), the product over the object's teacher-forced tokens;
- ``greedy``: greedy decoding reproduces the object (the argmax is the object's token at every
  teacher-forced step);
- ``rank``: the 1-based rank of the gold object among itself and the candidates by mean
  log-probability per token (the BMLAMA protocol of Qi et al. 2023, whose code ranks candidates
  by mean per-token negative log-likelihood); a candidate scoring the same as the gold object
  ranks above it. ``None`` where the data has no candidates.

A query is *known* under a criterion:

- ``rank``: the gold object ranks first among the candidates (queries without candidates: never);
- ``greedy``: greedy decoding gets the object;
- ``auto`` (the default): ``rank`` where the query has candidates, else ``greedy``;
- ``either``: ``rank`` or ``greedy`` (a model that decodes the object although a multi-token
  wrong candidate has a higher mean log-prob per token, e.g. fr "Afrique" p = 0.77 against
  "Amérique du Sud", is counted as knowing it);
- ``any``: every query counts as known, i.e. no filter (Dai et al. and AMIG locate every fact);
  items are still *marked* known or not by ``auto``.

A query is *copyable* when its gold object can be copied from the prompt (:func:`copyable`): the
object's text, or its token sequence, appears before the object slot ("Toyota Isis is made by
[Y]" -> Toyota). Such items test copying as much as recall; they are flagged and counted, not
dropped, so every claim can be read with and without them.

A language knows a fact when more than half of its queries are known (1 of 1, 2 of 3, 3 of 5).
Facts and languages the model does not know are skipped by ``locate``, the experiments and the
study, and counted per language (:class:`KnownItems`), never dropped silently; the items that the
rank criterion drops while greedy decoding gets the object are counted and named apart
(:meth:`KnownItems.rank_drops_greedy`).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mkn.attribution.queries import EncodedQuery, encode, spaceless, split_prompt
from mkn.attribution.scoring import Prediction, score_encoded
from mkn.models.loading import LanguageModel

CRITERIA = ("auto", "rank", "greedy", "either", "any")
DEFAULT_CRITERION = "auto"
# what "known" means in words, for tables and error messages
CRITERION_TEXT = {
    "auto": "gold ranked first among the candidates where the data has them, else greedy "
            "decoding gets it",
    "rank": "gold ranked first among the candidates",
    "greedy": "greedy decoding gets the gold object",
    "either": "gold ranked first among the candidates, or greedy decoding gets it",
    "any": "no filter",
}


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown knowledge criterion {criterion!r}; choose one of "
                         f"{', '.join(CRITERIA)}")
    return criterion


def copyable(query: EncodedQuery) -> bool:
    """Whether the gold object of ``query`` appears in its prompt before the object slot: its
    text as a whole word (case-folded; "German" is not in "Germany"; scripts written without
    spaces match anywhere), or its target token ids as a contiguous run among the query's own
    tokens before the prediction position."""
    before, _ = split_prompt(query.prompt, query.target)
    text = query.target.strip().casefold()
    if text:
        whole = "" if spaceless(text[0]) else r"(?<!\w)"
        end = "" if spaceless(text[-1]) else r"(?!\w)"
        if re.search(whole + re.escape(text) + end, before.casefold()):
            return True
    step = query.steps[0]
    tokens = [step.input_ids[p] for p in step.query_positions if p < step.position]
    target = list(query.target_ids)
    return any(tokens[i:i + len(target)] == target for i in range(len(tokens) - len(target) + 1))


def rank_of_gold(gold: float, candidates: Sequence[float]) -> int:
    """1 + the number of candidates scoring at least as high as the gold object."""
    return 1 + sum(score >= gold for score in candidates)


def majority(flags: Sequence[bool]) -> bool:
    """More than half of ``flags`` are true (False for none)."""
    return sum(flags) * 2 > len(flags)


@dataclass(frozen=True)
class QueryKnowledge:
    """How the model does on one query of a fact."""

    prompt: str
    p_gold: float
    greedy: bool
    rank: int | None  # None: no candidates to rank against
    candidates: int  # wrong candidates ranked against
    copyable: bool = False  # the gold object appears in the prompt before its slot

    def known(self, criterion: str = DEFAULT_CRITERION) -> bool:
        check_criterion(criterion)
        if criterion == "any":
            return True
        if criterion == "either":
            return self.greedy or self.rank == 1
        if criterion == "greedy" or (criterion == "auto" and self.rank is None):
            return self.greedy
        return self.rank == 1

    def to_record(self) -> dict:
        return {"prompt": self.prompt, "p_gold": round(self.p_gold, 10), "greedy": self.greedy,
                "rank": self.rank, "candidates": self.candidates, "copyable": self.copyable}


@dataclass(frozen=True)
class Knowledge:
    """How the model does on one fact in one language (all its queries)."""

    fact_id: str
    relation: str
    language: str
    object: str
    queries: tuple[QueryKnowledge, ...]

    @property
    def has_candidates(self) -> bool:
        return any(q.rank is not None for q in self.queries)

    def known(self, criterion: str = DEFAULT_CRITERION) -> bool:
        """Known under ``criterion`` by more than half of the queries (``any``: always)."""
        check_criterion(criterion)
        return criterion == "any" or majority([q.known(criterion) for q in self.queries])

    def marked(self, criterion: str) -> bool:
        """The known flag a record carries: ``any`` filters nothing but marks by ``auto``."""
        return self.known(DEFAULT_CRITERION if criterion == "any" else criterion)

    @property
    def known_greedy(self) -> bool:
        return self.known("greedy")

    @property
    def known_rank(self) -> bool | None:
        return self.known("rank") if self.has_candidates else None

    @property
    def copyable(self) -> bool:
        """Any of its queries shows the gold object before the slot (:func:`copyable`)."""
        return any(q.copyable for q in self.queries)

    @property
    def median_p_gold(self) -> float:
        return statistics.median(q.p_gold for q in self.queries)

    @classmethod
    def from_record(cls, record: dict) -> Knowledge:
        """The item of a :meth:`to_record` record (p(gold) as recorded, to 10 digits)."""
        return cls(record["fact_id"], record["relation"], record["language"], record["object"],
                   tuple(QueryKnowledge(q["prompt"], float(q["p_gold"]), bool(q["greedy"]),
                                        q["rank"], int(q["candidates"]),
                                        bool(q.get("copyable", False)))
                         for q in record["queries"]))

    def to_record(self, criterion: str = DEFAULT_CRITERION) -> dict:
        return {"fact_id": self.fact_id, "relation": self.relation, "language": self.language,
                "object": self.object, "known": self.marked(criterion), "criterion": criterion,
                "known_greedy": self.known_greedy, "known_rank": self.known_rank,
                "copyable": self.copyable, "queries": [q.to_record() for q in self.queries]}


def _query_knowledge(prompt: str, gold: Prediction, candidates: Sequence[Prediction] | None,
                     can_copy: bool = False) -> QueryKnowledge:
    rank = None
    if candidates:
        rank = rank_of_gold(gold.mean_log_prob, [c.mean_log_prob for c in candidates])
    return QueryKnowledge(prompt=prompt, p_gold=gold.prob, greedy=gold.correct, rank=rank,
                          candidates=len(candidates or ()), copyable=can_copy)


def probe(lm: LanguageModel, facts: Iterable, languages: Sequence[str], batch_size: int = 16,
          progress: Callable[[str], None] | None = None,
          chunk: int = 8) -> dict[tuple[str, str], Knowledge]:
    """:class:`Knowledge` of every fact in every language, keyed ``(fact_id, language)``.

    Facts are scored ``chunk`` at a time (``progress`` is called per fact). A candidate object
    that cannot be encoded after the prompt (it tokenizes to nothing) is left out of the ranking;
    a gold object that cannot be encoded is an error naming the fact.
    """
    facts = list(facts)
    out: dict[tuple[str, str], Knowledge] = {}
    for start in range(0, len(facts), chunk):
        group = facts[start:start + chunk]
        encoded, slots = [], []  # slots: (fact, lang, prompt, n candidates, copyable)
        for fact in group:
            for lang in languages:
                view = fact.language(lang)
                for prompt in view.prompts():
                    try:
                        gold = encode(lm, prompt, view.object)
                    except ValueError as error:
                        raise ValueError(f"fact {fact.id!r} ({lang}): {error}") from None
                    encoded.append(gold)
                    candidates = []
                    for candidate in view.candidates:
                        try:
                            candidates.append(encode(lm, prompt, candidate))
                        except ValueError:
                            continue
                    encoded += candidates
                    slots.append((fact, lang, prompt, len(candidates), copyable(gold)))
        scored = iter(score_encoded(lm, encoded, batch_size))
        per_item: dict[tuple[str, str], list[QueryKnowledge]] = {}
        for fact, lang, prompt, n, can_copy in slots:
            gold = next(scored)
            candidates = [next(scored) for _ in range(n)]
            has = bool(fact.language(lang).candidates)
            per_item.setdefault((fact.id, lang), []).append(
                _query_knowledge(prompt, gold, candidates if has else None, can_copy))
        for fact in group:
            for lang in languages:
                out[(fact.id, lang)] = Knowledge(fact.id, fact.relation, lang,
                                                 fact.language(lang).object,
                                                 tuple(per_item[(fact.id, lang)]))
            if progress:
                progress(fact.id)
    return out


@dataclass
class KnownItems:
    """Which (fact, language) items a run keeps under a knowledge criterion, and the counts."""

    criterion: str
    languages: list[str]
    knowledge: dict[tuple[str, str], Knowledge] = field(default_factory=dict)

    def known(self, fact_id: str, language: str) -> bool:
        """Kept under the criterion (``any``: every item)."""
        return self.knowledge[(fact_id, language)].known(self.criterion)

    def languages_of(self, fact_id: str) -> list[str]:
        """The languages in which ``fact_id`` is kept, in the run's order."""
        return [lang for lang in self.languages if self.known(fact_id, lang)]

    def facts(self) -> list[str]:
        return list(dict.fromkeys(fact_id for fact_id, _ in self.knowledge))

    def subset(self, fact_ids: Iterable[str]) -> KnownItems:
        """The items of ``fact_ids`` only (e.g. what a worker locating one fact needs)."""
        wanted = set(fact_ids)
        return KnownItems(self.criterion, self.languages,
                          {k: v for k, v in self.knowledge.items() if k[0] in wanted})

    def counts(self) -> dict[str, dict[str, int]]:
        """Per language: ``items`` probed, ``known`` (kept) and ``skipped``."""
        out = {}
        for lang in self.languages:
            items = [k for (_, item_lang), k in self.knowledge.items() if item_lang == lang]
            known = sum(k.known(self.criterion) for k in items)
            out[lang] = {"items": len(items), "known": known, "skipped": len(items) - known}
        return out

    def copyable_counts(self) -> dict[str, dict[str, int]]:
        """Per language: ``items`` whose gold object is in the prompt, and how many of them are
        ``known`` (kept)."""
        out = {}
        for lang in self.languages:
            items = [k for (_, item_lang), k in self.knowledge.items()
                     if item_lang == lang and k.copyable]
            out[lang] = {"items": len(items),
                         "known": sum(k.known(self.criterion) for k in items)}
        return out

    def rank_drops_greedy(self) -> list[tuple[str, str]]:
        """The ``(fact, language)`` items this criterion skips although greedy decoding gets
        the gold object (by the same majority of queries): the rank criterion's drops that a
        reader may want to see, and that ``either`` keeps."""
        return [key for key, k in self.knowledge.items()
                if not k.known(self.criterion) and k.known("greedy")]

    def describe(self, named: int = 5) -> str:
        """One line: the criterion, per-language counts, and the items skipped although greedy
        decoding gets them (the first ``named`` named)."""
        counts = ", ".join(f"{lang} {c['known']}/{c['items']}" for lang, c in self.counts().items())
        line = (f"known by {self.criterion} ({CRITERION_TEXT[self.criterion]}): {counts}"
                + ("" if self.criterion == "any" else "; the rest is skipped"))
        drops = self.rank_drops_greedy()
        if drops:
            shown = ", ".join(f"{fact_id}/{lang}" for fact_id, lang in drops[:named])
            line += (f"; {len(drops)} skipped although greedy decoding gets the object ("
                     f"{shown}{', ...' if len(drops) > named else ''}; --known either keeps "
                     "them)")
        return line

    def require_some(self, what: str = "items", advice: str | None = None) -> None:
        """A clear error when the criterion leaves nothing to work on (``advice``: what to do
        instead of the default "draw known facts or pass --known any")."""
        if any(c["known"] for c in self.counts().values()):
            return
        counts = ", ".join(f"{lang}: 0 of {c['items']} known" for lang, c in self.counts().items())
        raise ValueError(f"the knowledge filter --known {self.criterion} "
                         f"({CRITERION_TEXT[self.criterion]}) left no {what} ({counts}); "
                         + (advice or "draw facts the model knows (mkn probe shows which) or "
                            "pass --known any to keep every item"))

    def to_summary(self) -> dict:
        return {"criterion": self.criterion, "definition": CRITERION_TEXT[self.criterion],
                "per_language": self.counts(), "copyable": self.copyable_counts(),
                "copyable_items": sorted([fact_id, lang] for (fact_id, lang), k
                                         in self.knowledge.items() if k.copyable),
                "skipped_greedy_right": sorted([fact_id, lang] for fact_id, lang
                                               in self.rank_drops_greedy())}


def known_items(lm: LanguageModel, facts: Sequence, languages: Sequence[str],
                criterion: str = DEFAULT_CRITERION,
                progress: Callable[[str], None] | None = None) -> KnownItems:
    """Probe ``facts`` and return the items kept under ``criterion``."""
    check_criterion(criterion)
    return KnownItems(criterion, list(languages), probe(lm, facts, languages, progress=progress))

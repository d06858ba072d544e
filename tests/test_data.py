"""Tests of mkn.data: schema, mLAMA/BMLAMA readers (real data + quirks), loader, builtin set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from mkn.data import (
    DataError,
    Fact,
    FactLanguage,
    builtin_facts,
    data_root,
    load_facts,
    read_bmlama,
    read_facts,
    read_mlama,
    write_facts,
)
from mkn.data.loader import resolve_data_path
from mkn.data.schema import dumps_fact

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MLAMA = SHARED / "paraphrased-mlama-6"
BMLAMA = SHARED / "bmlama17"
needs_mlama = pytest.mark.skipif(not MLAMA.is_dir(), reason=f"real data not found at {MLAMA}")
needs_bmlama = pytest.mark.skipif(not BMLAMA.is_dir(), reason=f"real data not found at {BMLAMA}")


def _fact(**over) -> Fact:
    data = {"id": "capital-france", "relation": "P36", "languages": {
        "en": {"subject": "France", "object": "Paris",
               "queries": ["The capital of [X] is [Y].", "[X]'s capital is [Y]."],
               "candidates": ["Lyon", "Marseille"]},
        "ja": {"subject": "フランス", "object": "パリ", "queries": ["[X]の首都は[Y]です。"]}},
        "meta": {"note": "test"}}
    data.update(over)
    return Fact.model_validate(data)


# --- schema ------------------------------------------------------------------------------------

def test_schema_roundtrip(tmp_path):
    fact = _fact()
    path = write_facts([fact, _fact(id="other")], tmp_path / "facts.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert "フランス" in lines[0]  # UTF-8, not \u escapes
    assert "candidates" not in json.loads(lines[0])["languages"]["ja"]  # empty ones left out
    back = read_facts(path)
    assert list(back) == [fact, _fact(id="other")]
    assert back.languages == ["en", "ja"] and back.skipped == []
    assert fact.prompts("en") == ["The capital of France is [Y].", "France's capital is [Y]."]
    assert fact.prompts("ja") == ["フランスの首都は[Y]です。"]
    assert fact.restrict(["ja"]).languages.keys() == {"ja"}
    with pytest.raises(KeyError, match="no language 'de'"):
        fact.prompts("de")


@pytest.mark.parametrize("view, message", [
    ({"queries": ["The capital of [X] is Paris."]}, r"exactly one \[Y\]"),
    ({"queries": ["[Y] [Y] [X]"]}, r"exactly one \[Y\]"),
    ({"queries": ["[X] [X] [Y]"]}, r"\[X\] more than once"),
    ({"queries": []}, "no queries"),
    ({"subject": ""}, "subject is empty"),
    ({"object": "[Y]"}, "contains"),
    ({"candidates": ["Paris"]}, "among the candidates"),
])
def test_schema_validation(view, message):
    base = {"subject": "France", "object": "Paris", "queries": ["The capital of [X] is [Y]."]}
    with pytest.raises(ValidationError, match=message):
        FactLanguage(**{**base, **view})


def test_prompts_without_subject_slot():
    view = FactLanguage(subject="France", object="Paris", queries=["France's capital: [Y]."])
    assert view.prompts() == ["France's capital: [Y]."]


def test_read_facts_bad_lines(tmp_path):
    good = json.dumps(_fact().to_dict(), ensure_ascii=False)
    missing = json.dumps({"id": "x", "languages": {}})
    path = tmp_path / "facts.jsonl"
    path.write_text(f"{good}\n\n{{not json\n{missing}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: invalid JSON"):
        read_facts(path)
    facts = read_facts(path, lenient=True)
    assert len(facts) == 1
    assert [(s.file, s.line) for s in facts.skipped] == [(str(path), 3), (str(path), 4),
                                                         (str(path), 5)]
    assert 'missing "relation"' in facts.skipped[1].reason
    assert "duplicate fact id" in facts.skipped[2].reason
    assert str(facts.skipped[0]).startswith(f"{path}:3: ")


# --- mLAMA -------------------------------------------------------------------------------------

def _jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
                            + "\n" for r in records), encoding="utf-8")


def _rec(uuid, sub, obj, lineid):
    return {"uuid": uuid, "lineid": lineid, "sub_uri": "Q1", "sub_label": sub,
            "obj_uri": "Q2", "obj_label": obj}


@pytest.fixture
def tiny_mlama(tmp_path):
    root = tmp_path / "mlama"
    _jsonl(root / "en" / "P36.jsonl", [_rec("u1", "France", "Paris", 0),
                                       _rec("u2", "Japan", "Tokyo", 1),
                                       _rec("u3", "Peru", "Lima", 2)])
    _jsonl(root / "fr" / "P36.jsonl", [_rec("u2", "Japon", "Tokyo", 1),
                                       _rec("u1", "France", "Paris", 0)])
    _jsonl(root / "en" / "P2.jsonl", [_rec("u9", "A", "B", 0)])
    _jsonl(root / "fr" / "P2.jsonl", [_rec("u9", "A", "B", 0)])
    def pattern(rel, text, key="pattern"):
        return {"relation": rel, key: text}

    _jsonl(root / "en" / "paraphrases.jsonl", [pattern("P36", "[X]'s capital is [Y]."),
                                               pattern("P36", "The capital of [X] is [Y].")])
    _jsonl(root / "en" / "templates.jsonl", [pattern("P36", "Capital of [X]: [Y] .", "template"),
                                             pattern("P2", "[X] two [Y] .", "template")])
    _jsonl(root / "fr" / "templates.jsonl", [pattern("P36", "Capitale de [X] : [Y].", "template"),
                                             pattern("P2", "[X] deux [Y].", "template")])
    return root


def test_mlama_tiny(tiny_mlama):
    facts = read_mlama(tiny_mlama)
    # relations by number (P2 before P36), then lineid; u3 lacks fr
    assert [f.id for f in facts] == ["u9", "u1", "u2"]
    assert facts.unaligned == 1 and facts.skipped == []
    u1 = facts[1]
    assert u1.relation == "P36" and u1.meta == {"lineid": 0, "sub_uri": "Q1", "obj_uri": "Q2"}
    assert u1.prompts("en") == ["France's capital is [Y].", "The capital of France is [Y]."]
    assert u1.prompts("fr") == ["Capitale de France : [Y]."]  # no paraphrases: template
    assert len(read_mlama(tiny_mlama, ["en"])) == 4
    assert [f.id for f in read_mlama(tiny_mlama, limit=2)] == ["u9", "u1"]
    assert [f.id for f in read_mlama(tiny_mlama, relations=["P36"])] == ["u1", "u2"]
    with pytest.raises(ValueError, match="language.*de.*not in"):
        read_mlama(tiny_mlama, ["en", "de"])


def test_mlama_bad_records(tiny_mlama):
    path = tiny_mlama / "fr" / "P36.jsonl"
    bad = {"uuid": "u2", "lineid": 1, "sub_label": "Japon"}
    _jsonl(path, [_rec("u1", "France", "Paris", 0), "{broken", bad])
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        read_mlama(tiny_mlama)
    _jsonl(path, [_rec("u1", "France", "Paris", 0), bad])
    with pytest.raises(ValueError, match=rf"^{path}:2: missing \"obj_label\"$"):
        read_mlama(tiny_mlama)
    _jsonl(path, [_rec("u1", "France", "Paris", 0), "{broken", bad, _rec("u1", "F", "P", 0)])
    facts = read_mlama(tiny_mlama, lenient=True)
    assert [f.id for f in facts] == ["u9", "u1"]
    assert [(Path(s.file).name, s.line) for s in facts.skipped] == [
        ("P36.jsonl", 2), ("P36.jsonl", 3), ("P36.jsonl", 4)]
    assert "duplicate uuid u1" in facts.skipped[2].reason
    assert facts.unaligned == 2  # u2 and u3 are not in fr any more


def test_mlama_bad_pattern_and_missing_queries(tiny_mlama):
    par = tiny_mlama / "en" / "paraphrases.jsonl"
    _jsonl(par, [{"relation": "P36", "pattern": "no slot"}])
    with pytest.raises(DataError, match=rf"^{par}:1: .*exactly one \[Y\]"):
        read_mlama(tiny_mlama)
    _jsonl(par, [])
    _jsonl(tiny_mlama / "fr" / "templates.jsonl", [{"relation": "P2", "template": "[X] deux [Y]."}])
    with pytest.raises(DataError, match=r"fr/P36.jsonl:0: no paraphrases or template"):
        read_mlama(tiny_mlama)
    facts = read_mlama(tiny_mlama, lenient=True)
    assert [f.id for f in facts] == ["u9"]
    assert len(facts.skipped) == 1 and facts.skipped[0].line == 0


@needs_mlama
def test_mlama_real_limit_fast_and_aligned():
    start = time.perf_counter()
    facts = load_facts("mlama:paraphrased-mlama-6", limit=20)
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"reading 20 facts took {elapsed:.1f}s"
    assert len(facts) == 20
    assert facts.languages == ["en", "fi", "fr", "hu", "ja", "ko"]
    assert facts.skipped == []
    paraphrases = {}
    for lang in facts.languages:
        for line in (MLAMA / lang / "paraphrases.jsonl").open(encoding="utf-8"):
            rec = json.loads(line)
            paraphrases.setdefault((lang, rec["relation"]), []).append(rec["pattern"])
    files = {}
    for fact in facts:
        assert fact.relation == "P17"
        for lang, view in fact.languages.items():
            assert view.queries == paraphrases[(lang, "P17")]  # per-language paraphrases
            if (lang, fact.relation) not in files:
                files[lang, fact.relation] = {
                    json.loads(x)["uuid"]: json.loads(x)
                    for x in (MLAMA / lang / f"{fact.relation}.jsonl").open(encoding="utf-8")}
            rec = files[lang, fact.relation][fact.id]  # aligned by uuid
            assert (view.subject, view.object) == (rec["sub_label"], rec["obj_label"])
    lineids = [f.meta["lineid"] for f in facts]
    assert lineids == sorted(lineids)
    ja = facts[0].prompts("ja")
    assert all("[Y]" in p and not p.endswith("[Y]") for p in ja)  # [Y] mid-sentence in ja


@needs_mlama
def test_mlama_real_template_fallback_and_subsets():
    # P1001 has no paraphrases: its single template is the query
    facts = read_mlama(MLAMA, ["en", "ja"], limit=3, relations=["P1001"])
    template = next(json.loads(x)["template"] for x in (MLAMA / "en" / "templates.jsonl").open()
                    if json.loads(x)["relation"] == "P1001")
    assert facts[0].languages["en"].queries == [template]
    two = load_facts("mlama:paraphrased-mlama-6", ["en", "fr"], limit=50)
    six = load_facts("mlama:paraphrased-mlama-6", limit=50)
    assert two.unaligned < six.unaligned  # fewer languages, larger aligned subset
    s1 = load_facts("mlama:paraphrased-mlama-6", ["en", "ja"], limit=5, seed=3)
    s2 = load_facts("mlama:paraphrased-mlama-6", ["en", "ja"], limit=5, seed=3)
    assert [f.id for f in s1] == [f.id for f in s2]


# --- BMLAMA ------------------------------------------------------------------------------------

HEADER = "Prompt\tAns\tCandidate Ans\tSubject"
ZH_HEADER = "Prompt\tAns\tCandidate\tAns\tSubject"  # the real zh.tsv quirk


def _tsv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode("utf-8"))


@pytest.fixture
def tiny_bmlama(tmp_path):
    root = tmp_path / "bmlama"
    _tsv(root / "en.tsv", HEADER, [
        "The capital of France is <mask>.\tParis\tLyon, Paris, Nice\tFrance",
        "Tokyo is the capital of <mask>.\tJapan\tJapan, Peru\tTokyo",
        "Foo bar <mask>.\tBaz\tBaz, Qux\tNot in prompt"])
    _tsv(root / "zh.tsv", ZH_HEADER, [
        "法国的首都是<mask>。\t巴黎\t里昂, 巴黎\t法国",
        "东京是<mask>的首都。\t日本\t日本, 秘鲁\t东京",
        "富<mask>。\t巴\t巴, 丘\t富"])
    return root


def test_bmlama_crlf_and_zh_header(tiny_bmlama):
    raw = (tiny_bmlama / "zh.tsv").read_bytes()
    assert b"\r\n" in raw and raw.splitlines()[0].count(b"\t") == 4
    facts = read_bmlama(tiny_bmlama)
    # ids name the source actually read (the directory), not a fixed "bmlama17"
    assert [f.id for f in facts] == ["bmlama-0", "bmlama-1", "bmlama-2"]
    copy = tiny_bmlama.rename(tiny_bmlama.parent / "bmlama53")
    assert [f.id for f in read_bmlama(copy)][:1] == ["bmlama53-0"]
    tiny_bmlama = copy.rename(tiny_bmlama)
    first = facts[0]
    assert first.relation == "P36"  # derived from the English template
    assert facts[1].relation == "P1376" and facts[2].relation == "unknown"
    assert first.languages["zh"].queries == ["[X]的首都是[Y]。"]
    assert first.prompts("zh") == ["法国的首都是[Y]。"]
    assert first.prompts("en") == ["The capital of France is [Y]."]
    assert not any("\r" in q for f in facts for v in f.languages.values() for q in v.queries)
    assert first.languages["en"].candidates == ["Lyon", "Nice"]  # gold removed
    assert facts[2].languages["en"].queries == ["Foo bar [Y]."]  # subject not in the prompt
    assert facts[2].prompts("en") == ["Foo bar [Y]."]
    assert first.meta == {"row": 0}
    # relation still derived when en is not requested
    assert read_bmlama(tiny_bmlama, ["zh"])[0].relation == "P36"


def test_bmlama_bad_rows(tiny_bmlama):
    zh = tiny_bmlama / "zh.tsv"
    _tsv(zh, ZH_HEADER, ["法国的首都是<mask>。\t巴黎\t里昂, 巴黎\t法国",
                         "东京是<mask>的首都。\t日本\t日本, 秘鲁",
                         "富。\t巴\t巴, 丘\t富"])
    with pytest.raises(DataError, match=rf"^{zh}:3: expected 4 tab-separated fields .* got 3$"):
        read_bmlama(tiny_bmlama)
    facts = read_bmlama(tiny_bmlama, lenient=True)
    assert [f.id for f in facts] == ["bmlama-0"]
    assert [(s.file, s.line) for s in facts.skipped] == [(str(zh), 3), (str(zh), 4)]
    assert "<mask> exactly once" in facts.skipped[1].reason
    # with one language only, the en rows are all fine
    assert len(read_bmlama(tiny_bmlama, ["en"], lenient=True)) == 3


def test_bmlama_header_and_row_count(tiny_bmlama):
    en = tiny_bmlama / "en.tsv"
    _tsv(en, "Prompt\tAnswer\tSubject", [])
    with pytest.raises(DataError, match=rf"^{en}:1: unexpected header"):
        read_bmlama(tiny_bmlama)
    _tsv(en, HEADER, ["The capital of France is <mask>.\tParis\tLyon, Paris\tFrance"])
    with pytest.raises(DataError, match=r"en.tsv:3: ends after 1 data rows.*not aligned"):
        read_bmlama(tiny_bmlama)
    facts = read_bmlama(tiny_bmlama, lenient=True)
    assert len(facts) == 1 and "not aligned" in facts.skipped[0].reason


@needs_bmlama
def test_bmlama_real():
    facts = load_facts("bmlama:bmlama17", ["en", "zh", "he", "ja"], limit=30)
    assert len(facts) == 30 and facts.skipped == []
    assert [f.id for f in facts[:2]] == ["bmlama17-0", "bmlama17-1"]
    zh_rows = (BMLAMA / "zh.tsv").read_bytes().decode("utf-8").split("\r\n")
    prompt = zh_rows[1].split("\t")[0]
    assert facts[0].prompts("zh") == [prompt.replace("<mask>", "[Y]")]
    assert facts[0].relation == "P19"  # "[X] was born in [Y]."
    for fact in facts:
        for view in fact.languages.values():
            assert view.object not in view.candidates
            assert all(q.count("[Y]") == 1 for q in view.queries)
    # the CSV-quoted Hebrew rows (e.g. NATO/UEFA acronyms with a quote mark) are unquoted
    he = read_bmlama(BMLAMA, ["he"])
    assert len(he) == 6792 and he.skipped == []
    quoted = [f for f in he if '"' in f.languages["he"].subject]
    assert quoted and all(not f.languages["he"].subject.startswith('"') for f in quoted)
    assert all("[X]" in f.languages["he"].queries[0] for f in quoted)


# --- loader ------------------------------------------------------------------------------------

def test_loader_specs_and_data_root(tmp_path, monkeypatch, tiny_mlama):
    monkeypatch.setenv("MKN_DATA", str(tiny_mlama.parent))
    assert data_root() == tiny_mlama.parent.resolve()
    assert resolve_data_path("mlama") == tiny_mlama.resolve()
    assert [f.id for f in load_facts("mlama:mlama", limit=1)] == ["u9"]
    assert load_facts(f"mlama:{tiny_mlama}").source == f"mlama:{tiny_mlama}"
    path = write_facts([_fact()], tmp_path / "mine.jsonl")
    assert load_facts(f"jsonl:{path}", ["ja"])[0].languages.keys() == {"ja"}
    for bad in ("nope:x", "mlama:", "builtin:x"):
        with pytest.raises(ValueError):
            load_facts(bad)
    with pytest.raises(FileNotFoundError):
        load_facts("mlama:does-not-exist")
    monkeypatch.setenv("MKN_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="MKN_DATA"):
        data_root()


# --- builtin -----------------------------------------------------------------------------------

def test_builtin_set():
    facts = load_facts("builtin")
    assert len(facts) >= 40
    required = {"en", "zh", "fr", "de", "es", "ja", "ko", "ru"}
    assert required <= set(facts.languages) and len(facts.languages) >= 8
    assert len({f.id for f in facts}) == len(facts)
    mid = 0
    for fact in facts:
        assert set(fact.languages) >= required
        for lang, view in fact.languages.items():
            assert len(view.queries) >= 2, (fact.id, lang)
            for query in view.queries:
                assert query.count("[X]") == 1 and query.count("[Y]") == 1, (fact.id, query)
            for prompt in view.prompts():
                assert view.subject in prompt and "[X]" not in prompt
            if lang in ("ja", "ko"):
                mid += sum(not q.rstrip().endswith("[Y]") for q in view.queries)
    assert mid > 0  # ja/ko put [Y] mid-sentence
    sub = builtin_facts(["ja", "en"], limit=5)
    assert len(sub) == 5 and list(sub[0].languages) == ["ja", "en"]
    assert [f.id for f in load_facts("builtin", limit=5, seed=1)] == \
           [f.id for f in load_facts("builtin", limit=5, seed=1)]


def test_in_turn_takes_every_group_round_robin():
    """The one interleaving of the study's samples, subsamples and reference samples."""
    from mkn.data import in_turn

    assert in_turn([[1, 2, 3], [4], [5, 6]]) == [1, 4, 5, 2, 6, 3]
    assert in_turn(iter([[], ["a"]])) == ["a"] and in_turn([]) == []


def test_sample_by_relation_balanced_and_seeded():
    facts = load_facts("builtin")
    counts: dict[str, int] = {}
    for fact in facts:
        counts[fact.relation] = counts.get(fact.relation, 0) + 1
    rich = [r for r, c in counts.items() if c >= 3][:2]
    assert len(rich) == 2
    two = load_facts("builtin", relations=rich, per_relation=2)
    # interleaved: relation A, relation B, A, B; at most 2 of each, file order without a seed
    assert [f.relation for f in two] == [rich[0], rich[1], rich[0], rich[1]]
    assert [f.id for f in two if f.relation == rich[0]] == \
           [f.id for f in facts if f.relation == rich[0]][:2]
    seeded = load_facts("builtin", relations=rich, per_relation=2, seed=4)
    assert seeded.languages == facts.languages
    assert [f.id for f in seeded] == [f.id for f in load_facts("builtin", relations=rich,
                                                               per_relation=2, seed=4)]
    assert len(load_facts("builtin", per_relation=1)) == len(counts)
    assert len(load_facts("builtin", per_relation=1, limit=3)) == 3
    with pytest.raises(ValueError, match="relation.*P9999.*not in builtin.*available"):
        load_facts("builtin", relations=["P9999"])
    with pytest.raises(ValueError, match="per_relation must be >= 1"):
        load_facts("builtin", per_relation=0)


def test_mlama_real_relations_filter():
    facts = load_facts("mlama:paraphrased-mlama-6", ["en", "fr"], relations=["P36", "P37"],
                       per_relation=3, seed=0)
    assert sorted(f.relation for f in facts) == ["P36"] * 3 + ["P37"] * 3


def test_undecodable_bytes_and_deep_nesting_name_file_and_line(tmp_path, tiny_bmlama):
    good = dumps_fact(Fact(id="a", relation="P36", languages={
        "en": FactLanguage(subject="France", object="Paris", queries=["[X] capital [Y]."])}))
    path = tmp_path / "facts.jsonl"
    path.write_bytes(good.encode() + b"\n" + b'{"id": "b\xff"}\n' + b"[" * 100_000 + b"\n")
    with pytest.raises(DataError, match=r"facts.jsonl:2: not valid UTF-8 \(byte 0xff"):
        read_facts(path)
    facts = read_facts(path, lenient=True)
    assert [f.id for f in facts] == ["a"]
    assert [(s.line, s.reason.split(" (")[0]) for s in facts.skipped] == [
        (2, "not valid UTF-8"), (3, "invalid JSON: nested too deeply")]
    en = tiny_bmlama / "en.tsv"
    en.write_bytes(en.read_bytes().replace(b"Tokyo is", b"Tokyo\xfe is"))
    with pytest.raises(DataError, match=r"en.tsv:3: not valid UTF-8 \(byte 0xfe"):
        read_bmlama(tiny_bmlama)
    assert [f.id for f in read_bmlama(tiny_bmlama, lenient=True)] == ["bmlama-0", "bmlama-2"]

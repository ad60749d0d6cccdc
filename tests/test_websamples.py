"""Web samples: cleaning real web text, sentence-boundary cuts, deterministic picks, BM25 retrieval."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from textbookgen.taxonomy import keyed_bits
from textbookgen.websamples import (
    Extract,
    KeyedExtracts,
    WebSampleError,
    WebSamples,
    clean_text,
    cut_at_sentence,
    make_extract,
)


def _texts(path: Path, field: str) -> list[str]:
    return [json.loads(line)[field] for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


@pytest.fixture(scope="module")
def c4(shared_data) -> WebSamples:
    return WebSamples.load(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz")


def test_c4_extracts_are_clean_and_cut_at_sentences(c4, shared_data):
    assert c4.stats["documents"] == 1000
    assert 800 < len(c4) <= 1000
    for ex in c4.extracts:
        assert 200 <= len(ex.text) <= 1000
        assert ex.text[-1] in ".!?\"')]\u201d\u2019\u2026" or len(ex.text) < 1000
    # long documents are cut at a sentence end, keeping most of the window
    long_docs = [
        t for t in _texts(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "text") if len(t) > 3000
    ]
    cuts = [make_extract(t) for t in long_docs]
    cuts = [c for c in cuts if c is not None]
    assert sum(c.text[-1] in ".!?\"')" for c in cuts) / len(cuts) > 0.9
    assert sum(len(c.text) for c in cuts) / len(cuts) > 800
    assert len({e.id for e in c4.extracts}) == len(c4)


def test_wikipedia_text_field_is_found_and_mojibake_fixed(shared_data):
    path = shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz"
    ws = WebSamples.load(path)  # the only string field is `eng_Latn`
    assert len(ws) > 900
    text = next(t for t in _texts(path, "eng_Latn") if "é" in t and len(t) > 400)
    broken = text.encode("utf-8").decode("latin-1")  # classic UTF-8-read-as-Latin-1 mojibake
    assert "Ã©" in broken
    fixed = clean_text(broken)
    assert "Ã©" not in fixed and "é" in fixed


def test_boilerplate_lines_are_dropped():
    page = "\n".join(
        [
            "Home | About Us | Contact",
            "Skip to main content",
            "The water cycle moves water between the oceans, the air and the land, driven by the sun.",
            "Share this on Facebook",
            "Clouds form when rising vapour cools and condenses into droplets around tiny particles.",
            "We use cookies to improve your experience. Accept",
            "Copyright © 2021 Example Inc. All rights reserved.",
            "Posted by admin in Science",
            "12 comments",
        ]
    )
    cleaned = clean_text(page)
    assert cleaned.splitlines() == [
        "The water cycle moves water between the oceans, the air and the land, driven by the sun.",
        "Clouds form when rising vapour cools and condenses into droplets around tiny particles.",
    ]


def test_length_bounds_and_cut():
    assert make_extract("Too short.") is None
    assert make_extract("word " * 5000, max_chars=10_000) is None
    assert make_extract("Lorem ipsum dolor sit amet. " * 40) is None
    text = "First sentence is here. " * 30 + "A final sentence without end"
    cut = cut_at_sentence(text, 100)
    assert cut.endswith("here.") and len(cut) <= 100
    no_stops = "word " * 400
    assert len(cut_at_sentence(no_stops, 1000)) <= 1000 and not cut_at_sentence(no_stops, 1000).endswith(" ")


@pytest.mark.parametrize("tail", ["Pi is about 3.14159 here. More.", "See example.com/boiling now. More."])
def test_a_dot_at_the_window_edge_inside_a_word_is_no_sentence_end(tail):
    whole = "Water boils at one hundred degrees at sea level. " * 14
    text = whole + tail
    cut = cut_at_sentence(text, text.index(".", len(whole)) + 1)  # the window ends after "3." / "example."
    assert cut == whole.strip()
    assert cut_at_sentence(text, len(whole)) == whole.strip()  # a dot followed by a space still ends one


def test_bm25_retrieval_finds_extracts_about_the_topic(c4):
    hits = c4.search("barbecue grilling meat smoker", k=5)
    assert hits and all(s > 0 for _, s in hits)
    top = c4.extracts[hits[0][0]].text.lower()
    assert any(w in top for w in ("bbq", "barbecue", "grill", "smok", "meat"))
    assert c4.search("zzqxv qqqzz", k=5) == []


def test_bm25_retrieval_matches_inflected_forms(shared_data):
    """Corpus and query are stemmed alike: a plural topic finds extracts that use the singular."""
    path = shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    wiki = WebSamples.load(path)
    for query, word in (("footballs", "football"), ("rivers", "river"), ("elections", "election")):
        hits = wiki.search(query, k=3)
        assert hits and all(word in wiki.extracts[i].text.lower() for i, _ in hits), query


def test_formats_parquet_jsonl_text_and_folder(tmp_path):
    docs = [
        f"Paragraph {i} explains how plants use sunlight, water and air to make their own food. " * 4
        for i in range(6)
    ]
    pl.DataFrame({"body": docs, "n": list(range(6))}).write_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    assert len(WebSamples.load(tmp_path / "a.parquet")) == 6  # the one string column
    assert len(WebSamples.load(tmp_path / "b.jsonl")) == 6
    assert len(WebSamples.load(tmp_path / "c.txt")) == 6
    folder = WebSamples.load(tmp_path)
    assert folder.stats["documents"] == 18 and len(folder) == 6  # same texts: deduplicated
    assert len(WebSamples.load(tmp_path / "b.jsonl", limit=2)) == 2


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(WebSampleError, match="not found"):
        WebSamples.load(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(WebSampleError, match=r"bad\.jsonl:2: invalid JSON"):
        WebSamples.load(bad)
    two = tmp_path / "two.parquet"
    pl.DataFrame({"a": ["x"], "b": ["y"]}).write_parquet(two)
    with pytest.raises(WebSampleError, match="set text_field"):
        WebSamples.load(two)
    with pytest.raises(WebSampleError, match="no column 'body'"):
        WebSamples.load(two, text_field="body")
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(WebSampleError, match="no extract survived cleaning"):
        WebSamples.load(short)


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("web.jsonl.gz", b"hello, not gzip", "not a readable gzip file"),
        ("web.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 50, mtime=0)[:-12], "not a readable gzip file"),
        ("web.parquet", b"PAR1 but no parquet at all", "not a readable parquet file"),
    ],
)
def test_corrupt_files_are_web_sample_errors_naming_the_file(tmp_path, name, data, problem):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(WebSampleError, match=rf"^{path}: {problem}"):
        WebSamples.load(path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / name).write_bytes(data)
    with pytest.raises(WebSampleError, match=rf"folder/{name}: {problem}"):
        WebSamples.load(tmp_path / "folder")


def test_json_rows_may_be_strings_or_objects(tmp_path):
    docs = [f"Section {i} shows how a lever trades a long push for a short, strong lift of the load. " * 4
            for i in range(4)]
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (tmp_path / "a.json").write_text(json.dumps({"rows": docs[:2] + [{"text": d} for d in docs[2:]]}))
    assert len(WebSamples.load(tmp_path / "s.jsonl")) == len(WebSamples.load(tmp_path / "a.json")) == 4
    (tmp_path / "n.jsonl").write_text(json.dumps({"text": docs[0]}) + "\n[1, 2]\n")
    with pytest.raises(WebSampleError, match=r"n\.jsonl:2: expected a JSON object or string, got list"):
        WebSamples.load(tmp_path / "n.jsonl")
    (tmp_path / "l.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n{"text": "caf\xe9"}\n'))
    with pytest.raises(WebSampleError, match=r"l\.jsonl\.gz:2: not valid UTF-8"):
        WebSamples.load(tmp_path / "l.jsonl.gz")


def test_hub_source_streams_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = {}
    rows = [
        {
            "text": f"Document {i} describes how rivers carve valleys over thousands of years of slow erosion. "
            * 3
        }
        for i in range(50)
    ]

    def fake_load_dataset(repo, config, split, streaming):
        calls.update(repo=repo, config=config, split=split, streaming=streaming)
        return iter(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("textbookgen.websamples.hub_reachable", lambda: True)
    ws = WebSamples.load("hf:HuggingFaceFW/fineweb-edu", config="sample-10BT", limit=10)
    assert calls == {
        "repo": "HuggingFaceFW/fineweb-edu",
        "config": "sample-10BT",
        "split": "train",
        "streaming": True,
    }
    assert len(ws) == 10
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WebSampleError, match="not reachable"):
        WebSamples.load("hf:org/name")


def test_content_lines_that_mention_furniture_words_are_kept():
    """Real C4 and Wikipedia lines that the old pattern dropped mid-extract (it matched the words anywhere)."""
    content = [
        "Old Church Bakery brought their speciality breads and some Christmas cookies to the fair this year.",
        "The set includes a loaf pan, a cookie sheet, a square pan and eight silicone ramekin cups.",
        "In November 2021, Triller was sued for infringing a design patent and registered copyright.",
        "On 2 July 2020, Nathan Law posted on his social media page that he had left Hong Kong.",
        "Children who read more books at home tend to build a larger vocabulary by the age of ten.",
        "She found the old atlas listed in the catalog in the reading room of the town library.",
        "Magazines depend on their subscribers, who pay for the issues long before they are printed.",
        "He wrote 3 comments in the margin of the manuscript before he sent it back to the editor.",
    ]
    assert clean_text("\n".join(content)).splitlines() == content
    furniture = ["Read more", "Log in to view documents.", "Subscribe now for weekly updates!",
                 "Copyright 2019 Example School.", "We use cookies to improve your experience."]
    assert clean_text("\n".join(furniture)) == ""


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("web.txt", b"A first paragraph that is fine.\n\nA second \xff one.\n", r"web\.txt:3: not valid UTF-8"),
        ("web.json", b'[\n"fine",\n"bad \xff"\n]', r"web\.json:3: not valid UTF-8"),
        ("web.json", b'[\n  "fine",\n  {broken\n]', r"web\.json:3: invalid JSON"),
        ("web.json", b"5", r"web\.json: expected a JSON array of documents"),
        ("web.json", b'{"count": 1}', r"web\.json: expected a JSON array of documents"),
        ("web.jsonl", b"", r"web\.jsonl: no extract survived cleaning: it holds no documents"),
        ("web.txt", b"\n\n  \n", r"web\.txt: no extract survived cleaning: it holds no documents"),
        ("web.jsonl", b'{"text": "tiny"}\n', r"web\.jsonl: no extract survived cleaning of 1 documents read "
                                           r"\(too short or too long \(min_chars 200 after cleaning: lower min_chars"),
    ],
)
def test_bad_seed_files_are_one_line_errors_naming_file_and_line(tmp_path, name, data, problem):
    """Non-UTF-8 text was named by byte offset only, bad or scalar JSON raised raw JSONDecodeError or
    TypeError, and an empty file claimed that 'no extract survived cleaning'."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(WebSampleError, match=rf"^{tmp_path}/{problem}"):
        WebSamples.load(path)


def _pool(n: int) -> WebSamples:
    return WebSamples(extracts=[Extract(id=f"{i:016x}", text=f"Extract {i}.") for i in range(n)])


def test_keyed_extracts_use_every_extract_before_any_twice():
    """1,250 prompts on 500 extracts: the first 500 are all different (independent keyed draws repeated 184
    of the first 500 and left 47 extracts unused in all); after that, independent draws again."""
    keyed = KeyedExtracts(_pool(500), seed=3, share=1.0)
    ids = [keyed.choose(("topic", "cell"), k, None).id for k in range(1_250)]  # type: ignore[union-attr]
    assert len(set(ids[:500])) == 500 and keyed.level >= 1
    independent = [f"{keyed_bits(3, 'pick', 'topic', 'cell', k) % 500:016x}" for k in range(500, 1_250)]
    assert ids[500:] == independent


def test_keyed_extracts_use_the_whole_pool_at_any_size():
    """Past its keyed candidates a prompt takes the next unused extract in pool order, so the last ones of the
    first round are found too (independent draws, 64 prompts on 64 extracts: 21 never used)."""
    for n in (1, 7, 64):
        keyed = KeyedExtracts(_pool(n), seed=0, share=1.0)
        ids = [keyed.choose((f"topic {k % 5}", "cell"), k, None).id for k in range(n)]  # type: ignore[union-attr]
        assert len(set(ids)) == n


def test_a_pick_counts_only_once_taken():
    """`render_prompts` picks for every try at a prompt and takes only the one it keeps: a skipped duplicate
    leaves its extract free for the next prompt."""
    keyed = KeyedExtracts(_pool(10), seed=1, share=1.0)
    first = keyed.pick(("a", "x"), 0, None)
    assert keyed.pick(("a", "x"), 0, None) == first  # not taken: the same pick again
    keyed.take()
    assert keyed.pick(("a", "x"), 0, None) != first
    assert keyed.uses.sum() == 1


def test_topics_that_share_hits_take_the_ones_no_prompt_used_yet():
    """Two topics whose BM25 hits are the same 10 extracts, 5 prompts each: 10 different extracts (each
    topic's turns alone gave the second topic 4 of the first one's; the bench's 2,000 prompts on 1,789
    extracts used one 15 times, now 2)."""
    water = [Extract(id=f"water{i}", text=f"Fact {i}: rain fills rivers with water.") for i in range(10)]
    web = WebSamples(extracts=water + _pool(20).extracts)
    keyed = KeyedExtracts(web, seed=2, share=1.0, retrieval_share=1.0, top_k=10)
    ids = [keyed.choose((topic, "cell"), k, topic).id for topic in ("rain", "rivers") for k in range(5)]  # type: ignore[union-attr]
    assert all(i.startswith("water") for i in ids)
    assert len(set(ids)) == 10

"""trainer.data: parquet -> token shards (EOS-separated, indexed, atomic), deterministic sampling and mixing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trainer_testlib import hub_dataset, small_tokenizer, textbook_texts, wiki_texts, write_hub_folder

from trainer.data import (
    BatchPlan,
    DataError,
    Loader,
    MixtureSampler,
    TokenStream,
    get_batch,
    mix_quotas,
    prepare,
    resolve_source,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("corpus")
    wiki = write_hub_folder(root / "wiki", wiki_texts(shared_data, 120))
    books = write_hub_folder(root / "books", textbook_texts(shared_data), files=1)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(small_tokenizer(root / "tokenizer.json", [wiki, books])))
    return {"root": root, "wiki": wiki, "books": books, "tok": tok}


@pytest.fixture(scope="module")
def prepared(corpus):
    root, tok = corpus["root"], corpus["tok"]
    wiki = prepare(str(corpus["wiki"]), root / "tok-wiki", tok, num_workers=1, shard_tokens=5000, progress=False)
    books = prepare(str(corpus["books"]), root / "tok-books", tok, num_workers=1, progress=False)
    return {"wiki": (root / "tok-wiki", wiki), "books": (root / "tok-books", books)}


def test_prepare_tokenizes_every_document_followed_by_eos(corpus, prepared):
    folder, index = prepared["wiki"]
    files = sorted((corpus["wiki"] / "data").glob("*.parquet"))
    texts = [t for f in files for t in pq.read_table(f)["text"].to_pylist()]
    eos = corpus["tok"].token_to_id("<|endoftext|>")
    expected = [i for t in texts for i in corpus["tok"].encode(t, add_special_tokens=False).ids + [eos]]
    stream = TokenStream(folder)
    assert stream.read(0, len(stream)).tolist() == expected
    assert index["documents"] == len(texts) and index["eos_id"] == eos
    assert index["total_tokens"] == len(expected) == sum(s["tokens"] for s in index["shards"])
    assert len(index["shards"]) == -(-len(expected) // 5000)  # 5000-token shards, the last partial
    assert index["dtype"] == "uint16"
    assert [s["sha256"] for s in index["sources"]] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    per_file = [pq.read_table(f)["text"].to_pylist() for f in files]
    assert [s["documents"] for s in index["sources"]] == [len(t) for t in per_file]
    assert [s["tokens"] for s in index["sources"]] == [
        sum(len(corpus["tok"].encode(t, add_special_tokens=False).ids) + 1 for t in ts) for ts in per_file]
    assert json.loads((folder / "index.json").read_text()) == index
    assert not list(folder.parent.glob("*.tmp"))


def test_reads_cross_shard_boundaries(prepared):
    stream = TokenStream(prepared["wiki"][0])
    whole = stream.read(0, len(stream))
    for start in (0, 4990, 5000, 9999, len(stream) - 40):
        assert np.array_equal(stream.read(start, 40), whole[start:start + 40])
    with pytest.raises(IndexError):
        stream.read(len(stream) - 10, 40)


def test_prepare_reuses_an_up_to_date_index_and_force_rebuilds(corpus, prepared):
    folder, index = prepared["books"]
    shard = folder / index["shards"][0]["file"]
    mtime = shard.stat().st_mtime_ns
    again = prepare(str(corpus["books"]), folder, corpus["tok"], num_workers=1, progress=False)
    assert again == index and shard.stat().st_mtime_ns == mtime
    rebuilt = prepare(str(corpus["books"]), folder, corpus["tok"], num_workers=1, force=True, progress=False)
    assert rebuilt["key"] == index["key"] and rebuilt["total_tokens"] == index["total_tokens"]
    assert shard.stat().st_mtime_ns != mtime  # written again, not reused


def test_parallel_workers_give_the_same_tokens(corpus, prepared, tmp_path):
    index = prepare(str(corpus["wiki"]), tmp_path / "par", corpus["tok"], num_workers=2, batch_docs=16,
                    shard_tokens=5000, progress=False)
    assert index["total_tokens"] == prepared["wiki"][1]["total_tokens"]
    a, b = TokenStream(tmp_path / "par"), TokenStream(prepared["wiki"][0])
    assert np.array_equal(a.read(0, len(a)), b.read(0, len(b)))


def test_hub_layout_split_selection(tmp_path):
    for name in ("train-00000-of-00001.parquet", "test-00000-of-00001.parquet"):
        (tmp_path / "data").mkdir(exist_ok=True)
        pq.write_table(pa.table({"text": [name]}), tmp_path / "data" / name)
    assert [p.name for p in resolve_source(str(tmp_path))] == ["train-00000-of-00001.parquet"]
    assert [p.name for p in resolve_source(str(tmp_path), split="test")] == ["test-00000-of-00001.parquet"]
    with pytest.raises(DataError, match=r"no parquet files for split 'validation'.*splits found: \['test', 'train'\]"):
        resolve_source(str(tmp_path), split="validation")


def test_clear_errors_for_bad_sources(corpus, tmp_path):
    tok = corpus["tok"]
    with pytest.raises(DataError, match="dataset not found: .*nope"):
        prepare(str(tmp_path / "nope"), tmp_path / "o", tok, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet files under"):
        prepare(str(tmp_path / "empty"), tmp_path / "o", tok, progress=False)
    bad = tmp_path / "bad" / "data"
    bad.mkdir(parents=True)
    pq.write_table(pa.table({"content": ["x"]}), bad / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet: no column 'text' \(columns: \['content'\]\)"):
        prepare(str(tmp_path / "bad"), tmp_path / "o", tok, progress=False)
    with pytest.raises(DataError, match="column 'content' holds int64, expected strings"):
        pq.write_table(pa.table({"content": [1]}), bad / "train-00000-of-00001.parquet")
        prepare(str(tmp_path / "bad"), tmp_path / "o", tok, column="content", progress=False)
    (bad / "train-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        prepare(str(tmp_path / "bad"), tmp_path / "o", tok, progress=False)
    pq.write_table(pa.table({"text": ["", None]}), bad / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match="no non-empty documents"):
        prepare(str(tmp_path / "bad"), tmp_path / "o", tok, progress=False)
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl: not a parquet file.*textbookgen publish .*corpus.jsonl -o"):
        prepare(str(jsonl), tmp_path / "o", tok, progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tmp").exists()


def test_missing_or_truncated_token_data_is_reported(prepared, tmp_path):
    with pytest.raises(DataError, match="index.json missing .*trainer prepare"):
        TokenStream(tmp_path)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared["books"][0], copy)
    shard = copy / prepared["books"][1]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated shard"):
        TokenStream(copy)


def test_samples_are_a_pure_function_of_seed_and_index(prepared):
    stream = TokenStream(prepared["wiki"][0])
    a = MixtureSampler([stream], [1.0], seq_len=32, seed=7)
    order = [a.sample(g) for g in range(300)]
    b = MixtureSampler([TokenStream(prepared["wiki"][0])], [1.0], seq_len=32, seed=7)  # a "restart"
    for g in (299, 0, 150, 17):  # any order, fresh caches
        assert np.array_equal(b.sample(g), order[g])
    c = MixtureSampler([stream], [1.0], seq_len=32, seed=8)
    assert not all(np.array_equal(c.sample(g), order[g]) for g in range(10))
    whole = stream.read(0, len(stream))
    for g in range(0, 300, 37):  # each sample is a contiguous window of the stream
        _, start = a.locate(g)
        assert np.array_equal(order[g], whole[start:start + 33])


def test_one_epoch_visits_every_row_once(prepared):
    s = MixtureSampler([TokenStream(prepared["books"][0])], [1.0], seq_len=32, seed=0)
    rows = s.rows[0]
    starts = [s.locate(g)[1] for g in range(rows)]
    offset = starts[0] % 32
    assert sorted((x - offset) // 32 for x in starts) == list(range(rows))
    assert len({s.locate(g)[1] % 32 for g in range(rows, rows + 5)}) == 1  # the next epoch has its own cut


def test_mixture_follows_the_weights_exactly_per_block(prepared):
    streams = [TokenStream(prepared["books"][0]), TokenStream(prepared["wiki"][0])]
    s = MixtureSampler(streams, [0.8, 0.2], seq_len=32, seed=3, block=1000)
    picks = np.array([s.locate(g)[0] for g in range(3000)])
    for b in range(3):
        assert np.bincount(picks[b * 1000:(b + 1) * 1000]).tolist() == [800, 200]
    assert 0.05 < picks[:100].mean() < 0.5  # shuffled within the block, not 800 then 200
    assert mix_quotas([2, 1, 1], 10).tolist() == [5, 3, 2]
    with pytest.raises(DataError, match="too small for weights"):
        mix_quotas([1000, 1], 10)


def test_batches_split_a_step_between_ranks_and_micro_steps(prepared):
    s = MixtureSampler([TokenStream(prepared["wiki"][0])], [1.0], seq_len=16, seed=1)
    single = BatchPlan(global_batch=8, micro_batch=4)
    ranks = [BatchPlan(global_batch=8, micro_batch=2, world_size=2, rank=r) for r in range(2)]
    for step in (0, 5):
        whole = np.concatenate([get_batch(s, single, step, m) for m in range(single.accum_steps)])
        split = np.concatenate([get_batch(s, p, step, m) for p in ranks for m in range(p.accum_steps)])
        assert np.array_equal(whole, split)
    assert ranks[1].samples(3, 1) == range(30, 32)
    with pytest.raises(DataError, match="multiple of micro_batch 3 x world_size 2"):
        BatchPlan(global_batch=8, micro_batch=3, world_size=2)


def test_a_plan_counts_on_from_the_samples_drawn_before_its_start():
    """Resumed at step 4 after 32 samples (4 steps of 8) under a batch of 16: every rank reads on from 32."""
    ranks = [BatchPlan(16, 4, world_size=2, rank=r, start_step=4, start_samples=32) for r in range(2)]
    step4 = [g for p in ranks for m in range(p.accum_steps) for g in p.samples(4, m)]
    assert step4 == list(range(32, 48)) and ranks[1].samples(5, 1) == range(60, 64)
    assert ranks[0].samples_before(6) == 64 and BatchPlan(8, 4, start_step=4).samples(4, 0) == range(32, 36)


def test_loader_resumes_at_any_step(prepared):
    s = MixtureSampler([TokenStream(prepared["wiki"][0])], [1.0], seq_len=16, seed=1)
    plan = BatchPlan(global_batch=4, micro_batch=2)
    loader = Loader(s, plan, start_step=0)
    first = [next(loader) for _ in range(8)]
    loader.close()
    resumed = Loader(s, plan, start_step=2)
    again = [next(resumed) for _ in range(4)]
    resumed.close()
    for (st, mi, x, y), (st2, mi2, x2, y2) in zip(first[4:], again, strict=True):
        assert (st, mi) == (st2, mi2) and x.equal(x2) and y.equal(y2)
    step, micro, x, y = first[0]
    assert x.shape == (2, 16) and y.shape == (2, 16) and x[:, 1:].equal(y[:, :-1])
    assert x.equal(__import__("torch").from_numpy(get_batch(s, plan, 0, 0))[:, :-1])


def test_too_small_dataset_is_reported(prepared):
    with pytest.raises(DataError, match="too few for seq_len"):
        MixtureSampler([TokenStream(prepared["books"][0])], [1.0], seq_len=10**6, seed=0)


def test_prepare_from_a_hub_repo(corpus, tmp_path, monkeypatch):
    with hub_dataset(corpus["wiki"], "tester/wiki", tmp_path / "hf-cache", monkeypatch) as endpoint:
        index = prepare("tester/wiki", tmp_path / "tok", corpus["tok"], endpoint=endpoint, num_workers=1,
                        progress=False)
        with pytest.raises(DataError, match="tester/missing"):
            prepare("tester/missing", tmp_path / "tok2", corpus["tok"], endpoint=endpoint, progress=False)
    local = prepare(str(corpus["wiki"]), tmp_path / "local", corpus["tok"], num_workers=1, progress=False)
    assert index["key"] == local["key"] and index["total_tokens"] == local["total_tokens"]
    assert Path(index["sources"][0]["file"]).name == "train-00000-of-00002.parquet"


def test_prepare_with_the_codegen_tokenizer(corpus, shared_data, tmp_path):
    """The real phi-1.5 tokenizer: EOS 50256 after each document, whitespace-run ids, uint16 shards."""
    from trainer.tokenizer import load_tokenizer

    src = write_hub_folder(tmp_path / "src", ["def f(x):\n    return x", "Hello world."], files=1)
    index = prepare(str(src), tmp_path / "tok", str(shared_data / "tokenizer_gpt2"), num_workers=1, progress=False)
    tokens = TokenStream(tmp_path / "tok").read(0, index["total_tokens"]).tolist()
    tok = load_tokenizer(shared_data / "tokenizer_gpt2")
    assert tokens == tok.encode("def f(x):\n    return x").ids + [50256] + tok.encode("Hello world.").ids + [50256]
    assert 50284 in tokens  # four spaces are one CodeGen whitespace token
    assert index["eos_id"] == 50256 and index["dtype"] == "uint16" and index["vocab_size"] == 50295


def test_a_literal_eos_in_a_document_is_ordinary_text(shared_data, tmp_path):
    """A document that writes `<|endoftext|>` (code, docs about GPT-2) must not split itself into two: only the
    EOS appended after each document is 50256 (nanoGPT's encode_ordinary). Data prepared when the literal
    became 50256 counts as stale, and prepare makes it again."""
    from trainer.data import index_is_current
    from trainer.tokenizer import load_tokenizer

    spec = str(shared_data / "tokenizer_gpt2")
    text = "GPT-2 ends a file with <|endoftext|> and then\n    goes on."
    src = write_hub_folder(tmp_path / "src", [text, "Second doc."], files=1)
    index = prepare(str(src), tmp_path / "tok", spec, num_workers=1, progress=False)
    tokens = TokenStream(tmp_path / "tok").read(0, index["total_tokens"]).tolist()
    tok = load_tokenizer(spec)
    tok.encode_special_tokens = True
    first = tok.encode(text).ids
    assert tokens == first + [50256] + tok.encode("Second doc.").ids + [50256]
    assert 50256 not in first and "<|endoftext|>" in tok.decode(first)
    assert 50284 in tokens  # the whitespace tokens are still matched
    old = json.loads((tmp_path / "tok" / "index.json").read_text())
    del old["key"]["specials_in_text"]
    (tmp_path / "tok" / "index.json").write_text(json.dumps(old))
    assert not index_is_current(tmp_path / "tok", str(src), spec) and not index_is_current(tmp_path / "tok", str(src),
                                                                                         None)
    again = prepare(str(src), tmp_path / "tok", spec, num_workers=1, progress=False)
    assert again["key"] == index["key"] and index_is_current(tmp_path / "tok", str(src), spec)


def _doc_ranges(texts: list[str], tok) -> list[tuple[int, int]]:
    """(start, length) of each document, with its EOS, in a prepared stream of `texts`."""
    lengths = [len(tok.encode(t, add_special_tokens=False).ids) + 1 for t in texts]
    starts = np.cumsum([0] + lengths[:-1])
    return [(int(s), n) for s, n in zip(starts, lengths, strict=True)]


def _held_texts(folder: Path, texts: list[str], tok) -> list[str]:
    """The documents whose tokens a prepared folder's holdout.npy holds out (whole documents, or it fails)."""
    held = np.load(folder / "holdout.npy")
    docs = dict(zip(_doc_ranges(texts, tok), texts, strict=True))
    bounds = {s for s, _ in docs} | {s + n for s, n in docs}
    assert all(s in bounds and s + n in bounds for s, n in held.tolist())  # no cut inside a document
    return [t for (s, n), t in docs.items() if any(a <= s and s + n <= a + m for a, m in held.tolist())]


def test_a_holdout_takes_whole_documents_by_text_hash(corpus, tmp_path):
    """The held-out documents are those whose text hash is lowest: the same set whatever the file order or
    number of tokenizer workers, all of each document, and nothing else; training reads all the others."""
    from trainer.data import Holdout, doc_hash

    files = sorted((corpus["wiki"] / "data").glob("*.parquet"))
    texts = [t for f in files for t in pq.read_table(f)["text"].to_pylist()]
    tok = corpus["tok"]
    docs = {t: tok.encode(t, add_special_tokens=False).ids + [tok.token_to_id("<|endoftext|>")] for t in texts}
    for fraction in (0.15, 0.6):  # 0.6: neighbours held out together are one range in holdout.npy
        index = prepare(str(corpus["wiki"]), tmp_path / "a", tok, num_workers=1, shard_tokens=5000, progress=False,
                        holdout=Holdout(fraction=fraction))
        held = _held_texts(tmp_path / "a", texts, tok)
        assert held == [t for t in texts if doc_hash(t) < fraction * 2**64] and 0.5 < len(held) / len(texts) / fraction < 1.5
        assert index["holdout"]["documents"] == len(held) and index["documents"] == len(texts)
        whole = TokenStream(tmp_path / "a", held_out=True)
        train = TokenStream(tmp_path / "a")
        assert whole.read(0, len(whole)).tolist() == [i for t in held for i in docs[t]]
        assert train.read(0, len(train)).tolist() == [i for t in texts if t not in held for i in docs[t]]
        assert len(whole) == index["holdout"]["tokens"] and len(whole) + len(train) == index["total_tokens"]
    assert index["holdout"]["ranges"] < len(held) - 10

    backwards = write_hub_folder(tmp_path / "backwards", texts[::-1], files=3)
    prepare(str(backwards), tmp_path / "b", tok, num_workers=2, batch_docs=7, progress=False,
            holdout=Holdout(fraction=0.15))
    assert sorted(_held_texts(tmp_path / "b", texts[::-1], tok)) == sorted(t for t in texts
                                                                        if doc_hash(t) < 0.15 * 2**64)

    by_count = prepare(str(corpus["wiki"]), tmp_path / "c", tok, num_workers=1, progress=False,
                       holdout=Holdout(tokens=6000))
    held = _held_texts(tmp_path / "c", texts, tok)
    lowest = sorted(texts, key=doc_hash)[:len(held)]
    assert sorted(held) == sorted(lowest)  # the lowest hashes ...
    sizes = [len(docs[t]) for t in sorted(held, key=doc_hash)]
    assert sum(sizes) == by_count["holdout"]["tokens"] >= 6000 > sum(sizes[:-1])  # ... just enough of them


def test_the_holdout_is_part_of_the_index_key(corpus, tmp_path):
    """Another holdout is other training data: the index is stale and prepare makes it again; the same one
    is reused. A damaged holdout.npy is an error, not a silently other split."""
    from trainer.data import Holdout, index_is_current

    src, tok = str(corpus["books"]), corpus["tok"]
    first = prepare(src, tmp_path / "t", tok, num_workers=1, progress=False, holdout=Holdout(fraction=0.2))
    assert index_is_current(tmp_path / "t", src, tok, holdout=Holdout(fraction=0.2))
    for other in (Holdout(), Holdout(fraction=0.3), Holdout(tokens=1000)):
        assert not index_is_current(tmp_path / "t", src, tok, holdout=other)
        assert not index_is_current(tmp_path / "t", src, None, holdout=other)
    shard = tmp_path / "t" / first["shards"][0]["file"]
    mtime = shard.stat().st_mtime_ns
    assert prepare(src, tmp_path / "t", tok, num_workers=1, progress=False, holdout=Holdout(fraction=0.2)) == first
    assert shard.stat().st_mtime_ns == mtime
    again = prepare(src, tmp_path / "t", tok, num_workers=1, progress=False, holdout=Holdout(fraction=0.3))
    assert again["key"] != first["key"] and again["holdout"]["tokens"] > first["holdout"]["tokens"]
    plain = prepare(src, tmp_path / "t", tok, num_workers=1, progress=False)
    assert "holdout" not in plain and "holdout" not in plain["key"] and not (tmp_path / "t" / "holdout.npy").exists()
    with pytest.raises(DataError, match="holds out no documents"):
        TokenStream(tmp_path / "t", held_out=True)
    prepare(src, tmp_path / "t", tok, num_workers=1, progress=False, holdout=Holdout(fraction=0.2))
    np.save(tmp_path / "t" / "holdout.npy", np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(DataError, match=r"holdout.npy: does not match index.json .*prepare again"):
        TokenStream(tmp_path / "t")

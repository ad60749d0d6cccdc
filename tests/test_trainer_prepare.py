"""trainer.data.prepare when things go wrong around it: an interrupted prepare goes on from the next source
file, two prepares of one folder take turns, a mistyped local path is named as such; and the epochs a run draws."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from trainer_testlib import small_tokenizer, textbook_texts, wiki_texts, write_hub_folder

from trainer import data
from trainer.data import DataError, Holdout, MixtureSampler, TokenStream, prepare, resolve_source


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("prep")
    wiki = write_hub_folder(root / "wiki", wiki_texts(shared_data, 90), files=3)
    books = write_hub_folder(root / "books", textbook_texts(shared_data, n_books=1), files=1)
    from tokenizers import Tokenizer

    return {"root": root, "wiki": wiki, "books": books,
            "tok": Tokenizer.from_file(str(small_tokenizer(root / "tok.json", [wiki, books])))}


def _interrupt_at(monkeypatch, file_no: int, batch: int) -> list[int]:
    """Make `_encode` raise KeyboardInterrupt (as Ctrl-C does) at the `batch`-th batch of file `file_no`; returns
    the file numbers it encodes documents of."""
    encode, seen = data._encode, []

    def encoding(job):
        if job[1]:
            seen.append(job[0])
            if seen.count(file_no) == batch:
                raise KeyboardInterrupt
        return encode(job)

    monkeypatch.setattr(data, "_encode", encoding)
    return seen


def _published(folder: Path) -> dict:
    """The prepared folder's files, its index without the time it took."""
    index = json.loads((folder / "index.json").read_text())
    index.pop("seconds")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "index.json"}
    return {"index": index, **files}


@pytest.mark.parametrize("holdout", [Holdout(), Holdout(fraction=0.2), Holdout(tokens=3000)], ids=str)
def test_an_interrupted_prepare_goes_on_from_the_next_source_file(corpus, tmp_path, monkeypatch, holdout):
    """Ctrl-C in file 2 of 3 (mid-file, mid-shard): a rerun tokenizes file 2 only and publishes exactly what an
    uninterrupted prepare does (tokens, shard cut, per-file counts, holdout)."""
    kw = {"num_workers": 1, "batch_docs": 8, "shard_tokens": 7000, "progress": False, "holdout": holdout}
    prepare(str(corpus["wiki"]), tmp_path / "whole", corpus["tok"], **kw)
    _interrupt_at(monkeypatch, file_no=2, batch=2)
    with pytest.raises(KeyboardInterrupt, match=r"stopped after 2 of 3 source files \(kept in .*out\.tmp\); run it "
                                                r"again to go on"):
        prepare(str(corpus["wiki"]), tmp_path / "out", corpus["tok"], **kw)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    seen = _interrupt_at(monkeypatch, file_no=-1, batch=1)
    index = prepare(str(corpus["wiki"]), tmp_path / "out", corpus["tok"], **kw)
    assert set(seen) == {2}
    assert len(index["shards"]) > 1 and not (tmp_path / "out.tmp").exists()
    assert _published(tmp_path / "out") == _published(tmp_path / "whole")


def test_progress_of_other_data_or_force_starts_over(corpus, tmp_path, monkeypatch):
    kw = {"num_workers": 1, "batch_docs": 8, "progress": False}
    _interrupt_at(monkeypatch, file_no=1, batch=1)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(corpus["wiki"]), tmp_path / "out", corpus["tok"], **kw)
    monkeypatch.undo()
    seen = _interrupt_at(monkeypatch, file_no=-1, batch=1)
    prepare(str(corpus["wiki"]), tmp_path / "out", corpus["tok"], holdout=Holdout(fraction=0.1), **kw)
    assert set(seen) == {0, 1, 2}  # another holdout: the kept file is of other data
    monkeypatch.undo()
    _interrupt_at(monkeypatch, file_no=1, batch=1)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(corpus["wiki"]), tmp_path / "out", corpus["tok"], force=True, **kw)
    monkeypatch.undo()
    seen = _interrupt_at(monkeypatch, file_no=-1, batch=1)
    prepare(str(corpus["wiki"]), tmp_path / "out", corpus["tok"], force=True, **kw)
    assert set(seen) == {0, 1, 2}


def test_two_prepares_of_one_folder_take_turns(corpus, tmp_path, monkeypatch, capsys):
    """An lr sweep starting N runs of one config at once: the second prepare waits for the first, saying so,
    then reuses its data instead of both writing (and deleting) one scratch folder."""
    encode, first_batch, go_on = data._encode, threading.Event(), threading.Event()

    def slow(job):
        if not first_batch.is_set():
            first_batch.set()
            go_on.wait(30)
        return encode(job)

    monkeypatch.setattr(data, "_encode", slow)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = prepare(str(corpus["books"]), tmp_path / "out", corpus["tok"], num_workers=1,
                                    progress=False)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[name] = e

    threads = [threading.Thread(target=run, args=("first",))]
    threads[0].start()
    assert first_batch.wait(30)
    threads.append(threading.Thread(target=run, args=("second",)))
    threads[1].start()
    said = ""
    for _ in range(300):
        said += capsys.readouterr().err
        if "waiting" in said:
            break
        time.sleep(0.05)
    go_on.set()
    for t in threads:
        t.join(60)
    assert f"waiting for another prepare of {tmp_path / 'out'} to finish" in said
    assert isinstance(results["first"], dict) and results["second"] == results["first"], results
    assert TokenStream(tmp_path / "out").index["total_tokens"] == results["first"]["total_tokens"]


def test_a_mistyped_local_path_is_named_not_only_the_hub(tmp_path, monkeypatch):
    """`ds/nope` beside a folder `ds` reads as a Hub id; offline the message also says there is no such folder."""
    from huggingface_hub import constants

    from trainer.pretrained import InitError, load_initial

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "ds").mkdir()
    note = f"there is no local file or folder 'ds/nope' (relative to {tmp_path})"
    with pytest.raises(DataError) as err:
        resolve_source("ds/nope")
    assert note in str(err.value) and "HF_HUB_OFFLINE is set" in str(err.value)
    with pytest.raises(InitError) as err:
        load_initial("ds/nope")
    assert note in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError) as err:  # no folder `someone` here: a Hub id, said as before
        resolve_source("someone/ds")
    assert "local file or folder" not in str(err.value)


def test_the_epochs_a_run_draws_of_each_dataset(corpus, tmp_path):
    """The start-up lines: each dataset's samples among the run's, counted without drawing them, as tokens and
    epochs, with a note where the run repeats a dataset."""
    folders = []
    for name in ("wiki", "books"):
        prepare(str(corpus[name]), tmp_path / name, corpus["tok"], num_workers=1, progress=False)
        folders.append(TokenStream(tmp_path / name))
    sampler = MixtureSampler(folders, [0.3, 0.7], seq_len=32, seed=5, block=10, names=["wiki", "books"])
    for samples in (0, 7, 10, 1234):
        picks = np.bincount([sampler.locate(g)[0] for g in range(samples)], minlength=2).tolist()
        assert sampler.drawn(samples) == picks
    samples = 3 * sampler.rows[1]  # books: 0.7 x 3 = 2.1 epochs
    wiki, books = sampler.epoch_lines(samples)
    n_wiki, n_books = sampler.drawn(samples)
    assert wiki == (f"data wiki: 30.0% of the samples, draws {n_wiki * 32:,} of its {len(folders[0]):,} tokens, "
                    f"{n_wiki / sampler.rows[0]:.2f} epochs")
    assert books.startswith(f"data books: 70.0% of the samples, draws {n_books * 32:,} of its {len(folders[1]):,} "
                            f"tokens, 2.10 epochs; the run sees each token about {n_books * 32 / len(folders[1]):.1f} times")
    # tokens drawn over tokens held, not epochs: an epoch's windows (at a random offset) leave a remainder unread
    assert len(folders[1]) > sampler.rows[1] * 32


def test_a_prepare_interrupted_in_its_first_source_file_says_nothing_was_kept(corpus, tmp_path, monkeypatch):
    _interrupt_at(monkeypatch, file_no=0, batch=1)
    with pytest.raises(KeyboardInterrupt, match=r"^prepare of .*wiki stopped before its first source file was done$"):
        prepare(str(corpus["wiki"]), tmp_path / "out", corpus["tok"], num_workers=1, batch_docs=8, progress=False)
    assert not (tmp_path / "out").exists()

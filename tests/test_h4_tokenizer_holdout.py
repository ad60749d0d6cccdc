"""`train-tokenizer -c CONFIG` reads what training reads: not the documents prepare holds out for validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from trainer_testlib import tiny_overrides, wiki_corpus

from trainer.cli import main
from trainer.config import _set_dotted, load_config
from trainer.tokenizer import load_tokenizer, train_tokenizer
from trainer.train import dataset_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_corpus(tmp_path_factory.mktemp("h4tok"), shared_data)


def _config(corpus, folder: Path, holdout: dict) -> Path:
    tree: dict = {}
    for k, v in tiny_overrides(folder / "run", folder / "cache", corpus["tok"], [(corpus["wiki"], 1.0)]).items():
        _set_dotted(tree, k, v, "test")
    tree["data"]["datasets"][0].update(holdout)
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _held_out_texts(cfg_path: Path) -> list[str]:
    """The documents `prepare -c` held out, read back from its shards (split at EOS and decoded)."""
    from trainer.data import TokenStream

    folder = dataset_dir(load_config(str(cfg_path)), 0)
    stream = TokenStream(folder, held_out=True)
    tok = load_tokenizer(stream.index["tokenizer"])
    ids = stream.read(0, len(stream))
    ends = np.flatnonzero(ids == stream.index["eos_id"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(ids[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("holdout", [{"holdout_fraction": 0.1}, {"holdout_tokens": 3000}])
def test_train_tokenizer_leaves_out_the_validation_documents(corpus, tmp_path, capsys, holdout):
    """The BPE trained from a config equals one trained on the training split less the documents prepare holds
    out (by fraction: their hash; by tokens: the lowest hashes that make the count under data.tokenizer)."""
    cfg = _config(corpus, tmp_path, holdout)
    assert main(["prepare", "-c", str(cfg)]) == 0
    held = _held_out_texts(cfg)
    files = sorted((corpus["wiki"] / "data").glob("*.parquet"))
    texts = [t for f in files for t in pq.read_table(f)["text"].to_pylist()]
    assert 0 < len(held) < len(texts) and set(held) <= set(texts)
    capsys.readouterr()

    out = tmp_path / "tok.json"
    assert main(["train-tokenizer", "-c", str(cfg), "--vocab-size", "300", "--out", str(out)]) == 0
    said = capsys.readouterr().out

    kept = tmp_path / "kept.parquet"
    pq.write_table(pa.table({"text": [t for t in texts if t not in set(held)]}), kept)
    expected = train_tokenizer([kept], 300)
    everything = train_tokenizer(files, 300)
    assert expected.get_vocab() != everything.get_vocab()  # the held-out documents change the BPE
    assert load_tokenizer(out).get_vocab() == expected.get_vocab()
    assert f"from 2 file(s) ({len(held):,} documents held out for validation left out)" in said


def test_train_tokenizer_names_data_tokenizer_when_holdout_tokens_cannot_count(corpus, tmp_path, capsys):
    """holdout_tokens picks documents by their token counts under data.tokenizer: one that cannot be loaded is an
    error naming the setting train-tokenizer takes it from (it has no --tokenizer)."""
    cfg = _config(corpus, tmp_path, {"holdout_tokens": 3000})
    args = ["train-tokenizer", "-c", str(cfg), "--set", f"data.tokenizer={tmp_path / 'missing.json'}",
            "--vocab-size", "300", "--out", str(tmp_path / "tok.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "--set data.tokenizer=PATH" in err and "give --tokenizer" not in err, err


def test_holdout_tokens_counted_with_the_tokenizer_being_written_is_refused(corpus, tmp_path, capsys):
    """The config a new BPE is trained for names it as data.tokenizer before it exists: holdout_tokens' documents
    cannot be counted under it yet, which is said plainly (not "tokenizer not found: ... give a folder holding
    GPT-2's BPE files"); holdout_fraction, which the text alone decides, trains."""
    out = tmp_path / "new" / "tokenizer.json"
    cfg = _config(corpus, tmp_path, {"holdout_tokens": 3000})
    args = ["train-tokenizer", "-c", str(cfg), "--set", f"data.tokenizer={out}", "--vocab-size", "300", "--out"]
    assert main([*args, str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: data.datasets.0.holdout_tokens holds out the documents that make 3,000 tokens under " \
           f"data.tokenizer, which is {out}, not written yet" in err, err
    assert not out.exists()
    fraction = ["--set", "data.datasets.0.holdout_tokens=0", "--set", "data.datasets.0.holdout_fraction=0.1"]
    assert main([*args, str(out), *fraction]) == 0 and out.is_file()

"""The seam between the SDK and the trainer: every layout textbookgen.dataset writes (and the Hub holds) is
read as `datasets.load_dataset` reads it, from a local folder and from a Hub repo pushed by textbookgen.hub."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents
from trainer_testlib import small_tokenizer

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import check_rows, write_dataset
from trainer.data import DataError, index_is_current, prepare, resolve_source

SPLITS = {"train": 60, "train.clean": 12, "exercises": 9, "test": 7}


def sdk_build(folder: Path, seed: int = 0, train_rows: int = 60) -> Path:
    """A published folder as the SDK writes it: train in 3 shards, three more splits, the card."""
    for i, (split, n) in enumerate({**SPLITS, "train": train_rows}.items()):
        docs = sample_documents(n, seed=seed + 10 * i).with_columns(pl.col("text").alias("summary"))
        shards = 3 if split == "train" else 1
        write_dataset(docs, folder, split=split, max_shard_bytes=check_rows(docs.lazy())[1] // shards + 1,
                      keep_extra=True)
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    return folder


def _rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def test_every_split_the_sdk_writes_is_its_own(tmp_path):
    """`train.clean` shards are not `train`'s, and split names outside train/test/validation are found."""
    folder = sdk_build(tmp_path / "ds")
    for split, n in SPLITS.items():
        files = resolve_source(str(folder), split)
        assert _rows(files) == n and {f.name.split("-")[0] for f in files} == {split}
    assert len(resolve_source(str(folder), "train")) == 3
    (folder / "README.md").unlink()  # the same from the file names alone (datasets' sharded pattern)
    for split, n in SPLITS.items():
        assert _rows(resolve_source(str(folder), split)) == n
    with pytest.raises(DataError, match=r"no parquet files for split 'dev' .*splits found: \['exercises', 'test'"):
        resolve_source(str(folder), "dev")


def _table(folder: Path, rel: str, texts: list[str]) -> None:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), folder / rel)


def test_the_card_configs_choose_the_files(tmp_path):
    """The README's `configs:` decide, as for load_dataset: other file names, several configs, globs."""
    folder = tmp_path / "ds"
    _table(folder, "corpus/a-part1.parquet", ["a1"])
    _table(folder, "corpus/a-part2.parquet", ["a2", "a3"])
    _table(folder, "corpus/held.parquet", ["h"])
    _table(folder, "code/x.parquet", ["c"])
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: corpus/a-*\n"
        "  - split: validation\n    path: [corpus/held.parquet]\n- config_name: code\n  data_files: code/*.parquet\n"
        "---\n# card\n")
    assert [p.name for p in resolve_source(str(folder))] == ["a-part1.parquet", "a-part2.parquet"]
    assert [p.name for p in resolve_source(str(folder), "validation", named=True)] == ["held.parquet"]
    assert [p.name for p in resolve_source(str(folder), subset="code")] == ["x.parquet"]
    with pytest.raises(DataError, match=r"no config 'prose' in README.md's `configs:` \(configs: \['default', 'code'\]"):
        resolve_source(str(folder), subset="prose")
    with pytest.raises(DataError, match=r"config 'code' has no split 'test' \(splits: \['train'\]\)"):
        resolve_source(str(folder), "test", subset="code")


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    pytest.importorskip("aiohttp")
    import huggingface_hub.constants as hc

    from textbookgen.testing.fakehub import FakeHub

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with FakeHub() as h:
        yield h


def test_a_pushed_dataset_trains_by_split_and_a_new_push_is_seen(hub, tmp_path):
    """Through textbookgen.hub.push and the fake Hub: each split is its own, another text column reads, a
    second push makes prepare tokenize again, and a subset the index was not made from is stale."""
    from textbookgen.hub import push

    tok = small_tokenizer(tmp_path / "tok.json", [sdk_build(tmp_path / "b0")])
    push(sdk_build(tmp_path / "b1"), "tester/books", endpoint=hub.endpoint, token=hub.token)
    kw = {"endpoint": hub.endpoint, "num_workers": 1, "progress": False}
    first = prepare("tester/books", tmp_path / "t", str(tok), **kw)
    assert first["documents"] == SPLITS["train"]
    extra = prepare("tester/books", tmp_path / "x", str(tok), split="exercises", column="summary", **kw)
    assert extra["documents"] == SPLITS["exercises"]
    assert index_is_current(tmp_path / "t", "tester/books", str(tok))
    assert not index_is_current(tmp_path / "t", "tester/books", str(tok), subset="default")

    push(sdk_build(tmp_path / "b2", seed=5, train_rows=45), "tester/books", endpoint=hub.endpoint, token=hub.token)
    second = prepare("tester/books", tmp_path / "t", str(tok), **kw)
    assert second["documents"] == 45 and second["key"]["sources"] != first["key"]["sources"]


def test_a_config_mixes_two_subsets_of_one_repo(tmp_path):
    """data.datasets.N.subset reaches prepare and the staleness check: two configs of one card, by weight."""
    from trainer.config import load_config
    from trainer.train import dataset_dir, prepare_all, stale_datasets

    folder = tmp_path / "ds"
    _table(folder, "prose/p.parquet", [f"prose number {i} " * 30 for i in range(40)])
    _table(folder, "code/c.parquet", [f"def f{i}(x):\n    return x + {i}\n" * 20 for i in range(40)])
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: prose\n  default: true\n  data_files: prose/*\n"
                                      "- config_name: code\n  data_files: code/*\n---\n")
    from trainer.tokenizer import train_tokenizer

    tok = tmp_path / "tok.json"
    train_tokenizer(sorted(folder.rglob("*.parquet")), vocab_size=300).save(str(tok))
    cfg = load_config(None, {"data.tokenizer": str(tok), "data.cache_dir": str(tmp_path / "cache"),
                             "data.prepare_workers": 1, "train.max_steps": 1, "data.datasets": [
                                 {"source": str(folder), "weight": 3}, {"source": str(folder), "subset": "code"}]})
    assert [dataset_dir(cfg, i).name for i in range(2)] == ["ds-train", "ds-code-train"]
    prose, code = prepare_all(cfg, progress=False)
    assert Path(prose["sources"][0]["file"]).name == "p.parquet" and prose["subset"] is None
    assert Path(code["sources"][0]["file"]).name == "c.parquet" and code["subset"] == "code"
    assert stale_datasets(cfg) == []
    cfg.data.datasets[0].name = "ds-train"
    cfg.data.datasets[0].subset = "code"  # the folder holds the default (prose) subset's tokens
    assert stale_datasets(cfg) == [0]

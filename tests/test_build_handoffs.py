"""Hand-offs between a build's output folder and the next stage: a user who names the build folder (or its
uncurated documents.parquet) where the dataset/ folder inside it is meant gets one clear line, and never
trains on or publishes the generation and curation files beside the dataset; a pull into a folder an earlier
pull filled leaves exactly the pulled revision's files there for the trainer to read."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import disable_progress_bars
from test_dataset import sample_documents
from test_hub import build
from trainer_testlib import small_tokenizer, write_hub_folder

from textbookgen.dataset import write_dataset
from textbookgen.hub import pull, push
from textbookgen.testing.fakehub import FakeHub
from trainer.data import DataError, resolve_source

disable_progress_bars()


def build_folder(root: Path, with_dataset: bool = True) -> Path:
    """The layout `textbookgen build` leaves: manifest, .build/ state, documents.parquet, dataset/."""
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"recipe": "t"}))
    (root / ".build" / "curation").mkdir(parents=True)
    docs = sample_documents(12)
    docs.write_parquet(root / "documents.parquet")
    docs.head(3).write_parquet(root / ".build" / "curation" / "dropped.parquet")
    if with_dataset:
        write_dataset(docs.head(9), root / "dataset")
    return root


def test_prepare_of_a_build_folder_reads_its_dataset(tmp_path, capsys):
    root = build_folder(tmp_path / "build")
    assert resolve_source(str(root)) == sorted((root / "dataset" / "data").glob("train-*.parquet"))
    assert f"reading its dataset, {root / 'dataset'}" in capsys.readouterr().err


def test_prepare_of_a_build_folder_without_dataset_refuses_the_uncurated_files(tmp_path):
    root = build_folder(tmp_path / "build", with_dataset=False)
    with pytest.raises(DataError, match="build folder with no dataset/ yet"):
        resolve_source(str(root))


def test_prepare_of_a_builds_documents_parquet_warns_it_is_uncurated(tmp_path, capsys):
    root = build_folder(tmp_path / "build")
    assert resolve_source(str(root / "documents.parquet")) == [root / "documents.parquet"]
    err = capsys.readouterr().err
    assert "before curation" in err and str(root / "dataset") in err


def test_push_of_a_build_folder_names_its_dataset_folder(tmp_path):
    root = build_folder(tmp_path / "build")
    with pytest.raises(ValueError, match=f"push its dataset folder, {root / 'dataset'}"):
        push(root, "tester/x", token="unused", endpoint="http://127.0.0.1:9")


def test_pull_over_an_earlier_pull_leaves_no_stale_shard(tmp_path, caplog):
    with FakeHub() as hub:
        auth = {"token": hub.token, "endpoint": hub.endpoint}
        push(build(tmp_path / "v1", shards=3), "tester/ds", **auth)
        out = pull("tester/ds", tmp_path / "copy", **auth)
        (out / "data" / "notes.parquet").write_bytes(b"mine")  # the user's own file: not the pull's to remove
        assert len(list((out / "data").glob("train-*"))) == 3
        push(build(tmp_path / "v2", n=20, seed=7), "tester/ds", **auth)
        pull("tester/ds", out, **auth)
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "notes.parquet", "test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    assert resolve_source(str(out)) == [out / "data" / "train-00000-of-00001.parquet"]
    assert "removed 3 file(s) an earlier pull left" in caplog.text


def test_push_of_an_incomplete_build_says_so(tmp_path, caplog):
    folder = build(tmp_path / "ds")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["incomplete"] = {"requests": 140, "missing": 12, "failed": 12, "not_sent": 0, "why": "12 failed"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with FakeHub() as hub:
        push(folder, "tester/ds", token=hub.token, endpoint=hub.endpoint)
    assert "pushing an incomplete dataset to tester/ds: 12 of 140 requests gave no document" in caplog.text


def test_published_recipe_says_how_it_differs_from_the_built_file(tmp_path):
    text = (build(tmp_path / "ds") / "recipe.yaml").read_text()
    assert text.startswith("# The recipe this dataset was built from") and "recipe_hash" in text.split("\n")[1]
    assert "file name only" in text and yaml.safe_load(text)["seed"] == 1234  # local paths made portable


def test_quality_histogram_draws_the_cut_it_only_shows_the_far_side_of(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from textbookgen.card import plot_all

    labels: list[str] = []
    real = Axes.axvline
    monkeypatch.setattr(Axes, "axvline", lambda ax, x, **kw: labels.append(kw.get("label")) or real(ax, x, **kw))
    docs = sample_documents(20).with_columns(words=pl.lit(100))
    cut = {"threshold": 0.5137, "keep_top_percent": 80.0, "dropped": {"low_quality": 12}}
    plot_all(docs, tmp_path / "assets", cut)
    assert "quality cut 0.514 (12 documents below it dropped)" in labels


def test_prepare_from_the_hub_records_and_prints_the_commit_it_read(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hc

    from trainer.cli import main

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    texts = [f"Document {i} about tides, rivers and the moon." for i in range(40)]
    src = write_hub_folder(tmp_path / "src", texts, files=1)
    tok = small_tokenizer(tmp_path / "tok.json", [src])
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("tester/ds", repo_type="dataset")
        head = api.upload_folder(folder_path=str(src), repo_id="tester/ds", repo_type="dataset").oid
        assert main(["prepare", "tester/ds", "--out", str(tmp_path / "t"), "--tokenizer", str(tok),
                     "--endpoint", hub.endpoint, "--workers", "1"]) == 0
    assert json.loads((tmp_path / "t" / "index.json").read_text())["commit"] == head
    assert f"from tester/ds@{head[:12]}" in capsys.readouterr().out


def test_push_to_another_repo_than_the_card_names_says_so_so_a_typo_shows(tmp_path, caplog):
    folder = build(tmp_path / "ds")  # its card is rendered for tester/quickstart
    with FakeHub() as hub:
        push(folder, "tester/quickstart", token=hub.token, endpoint=hub.endpoint)
        assert "card names" not in caplog.text
        push(folder, "tester/quickstrat", token=hub.token, endpoint=hub.endpoint)
    assert (f"{folder}'s card names tester/quickstart (the recipe's hub.repo_id), not tester/quickstrat, which "
            "did not exist: created it") in caplog.text


def test_build_prints_the_commit_url_whole_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    from test_build import QUICKSTART, prose_responder

    from textbookgen.build import build
    from textbookgen.recipe import load_recipe
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.delenv("COLUMNS", raising=False)
    with FakeHub() as hub, Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        over = {"output": str(tmp_path / "qs"), "samples": 6, "provider.base_url": emu.openai_base_url,
                "curation.filters.enabled": False, "hub.repo_id": f"{hub.user}/textbooks-quickstart"}
        res = build(load_recipe(QUICKSTART, over), push=True, progress=False)
    url = res.manifest["hub"]["commit_url"]
    assert len(url) > 80 and f"pushed: {url}\n" in capsys.readouterr().err


def test_quality_cut_leaves_a_record_of_what_it_dropped(tmp_path):
    from textbookgen.curation.classifier import QualityCut
    from textbookgen.curation.config import ClassifierConfig

    cfg = ClassifierConfig(enabled=True, model_path=str(tmp_path / "q.bin"), keep_top_percent=60)
    docs = pl.DataFrame({"id": list("abcde"), "text": ["x"] * 5, "quality_score": [0.9, 0.1, 0.5, 0.3, 0.7]})
    kept, stats = QualityCut(cfg, "id")(docs, tmp_path / "cut")
    assert kept["id"].to_list() == ["a", "c", "e"] and stats.dropped == {"low_quality": 2}
    dropped = pl.read_parquet(tmp_path / "cut" / "dropped.parquet")
    assert dropped.to_dicts() == [{"id": "b", "row": 1, "quality_score": 0.1}, {"id": "d", "row": 3, "quality_score": 0.3}]

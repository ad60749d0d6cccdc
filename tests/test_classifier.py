"""fastText quality classifier: train (grid on a validation split) -> save with hash -> load -> evaluate
-> score in batches -> cut by threshold or percentile, on real textbook vs web text."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from textbookgen.curation import CurationConfig, curate
from textbookgen.curation import classifier as clf
from textbookgen.curation.classifier import (
    QualityModel,
    TrainSettings,
    balance_copies,
    binary_metrics,
    group_auc,
    percentile_cut,
    pick,
    roc_auc,
    top_percent_mask,
    train_classifier,
    validation_split,
)


@pytest.fixture(scope="module")
def labelled(shared_data: Path) -> tuple[list[str], list[bool]]:
    books = [json.loads(x)["text"] for x in gzip.open(
        shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "rt")]
    sections = [s for b in books for s in re.split(r"\n(?=#{1,3} )", b) if 80 <= len(s.split()) <= 1500]
    web = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    web = [w for w in web if len(w.split()) >= 80]
    rng = np.random.default_rng(0)
    pos = [sections[i] for i in rng.choice(len(sections), 300, replace=False)]
    neg = web[:300]
    return pos + neg, [True] * len(pos) + [False] * len(neg)


SMALL = TrainSettings(lrs=(0.1, 1.0), epochs=(5,), dim=32, bucket=20_000)


@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory):
    texts, labels = labelled
    held = np.arange(len(texts)) % 5 == 0
    train_t = [t for t, h in zip(texts, held, strict=True) if not h]
    train_y = [y for y, h in zip(labels, held, strict=True) if not h]
    out = tmp_path_factory.mktemp("model") / "quality"
    model, meta = train_classifier(train_t, train_y, out, SMALL, source="test")
    test_t = [t for t, h in zip(texts, held, strict=True) if h]
    test_y = [y for y, h in zip(labels, held, strict=True) if h]
    return out.with_suffix(".bin"), model, meta, test_t, test_y


def test_train_save_load_evaluate(trained):
    path, model, meta, test_t, test_y = trained
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["settings"]["word_ngrams"] == 2 and saved["settings"]["thread"] >= 10
    assert saved["deterministic"] is False and saved["thread"] == saved["settings"]["thread"]  # Hogwild training
    assert {(g["lr"], g["epoch"]) for g in saved["grid"]} == {(0.1, 5), (1.0, 5)}
    assert (saved["chosen"]["lr"], saved["chosen"]["epoch"]) in {(0.1, 5), (1.0, 5)}
    loaded = QualityModel.load(path)
    met = loaded.evaluate(test_t, test_y)
    assert met.roc_auc >= 0.95 and met.f1 >= 0.85
    c = met.confusion
    assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == len(test_t)
    s1, s2 = model.scores(test_t, batch_size=7), loaded.scores(test_t, batch_size=1000)
    assert np.allclose(s1, s2) and ((s1 >= 0) & (s1 <= 1)).all()


def test_metrics_match_definitions():
    y = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    s = np.array([0.9, 0.4, 0.35, 0.1, 0.8, 0.8])
    assert roc_auc(y, s) == pytest.approx(7.5 / 9)  # pairs ranked right, ties half
    m = binary_metrics(y, s, 0.5)
    assert m.confusion == {"tp": 2, "fp": 1, "tn": 2, "fn": 1} and m.precision == pytest.approx(2 / 3, abs=1e-4)
    assert percentile_cut(np.arange(100.0), 10) == pytest.approx(89.1)
    tied = np.array([1.0, 1.0, 1.0, 0.2, 1.0, 0.1])
    assert top_percent_mask(tied, 50).tolist() == [True, True, True, False, False, False]


def test_curate_scores_keeps_best_member_and_cuts_percentile(trained, labelled, tmp_path):
    path, _, _, test_t, test_y = trained
    texts = test_t[::3]  # textbook sections and web pages
    # a near-copy of a textbook section with web junk glued on scores lower than the original
    tb = next(t for t, y in zip(test_t, test_y, strict=True) if y)
    df = pl.DataFrame({"id": [f"d{i:02d}" for i in range(len(texts))] + ["a-junk"],
                       "text": texts + [tb + "\nClick here to buy cheap deals now!!"]})
    cfg = CurationConfig.model_validate({
        "filters": {"enabled": False},
        "classifier": {"enabled": True, "model_path": str(path), "keep_top_percent": 50}})
    out, stats = curate(df, cfg, tmp_path)
    assert stats["quality_score"]["model_sha256"] == json.loads(path.with_suffix(".json").read_text())["sha256"]
    assert stats["quality_filter"]["dropped"]["low_quality"] == stats["quality_filter"]["in"] - out.height
    assert out.height == round(stats["quality_filter"]["in"] / 2)
    assert "quality_score" in out.columns and out["quality_score"].min() >= stats["quality_filter"]["threshold"]
    clusters = pl.read_parquet(tmp_path / "minhash_dedup" / "clusters.parquet")
    pair = clusters.filter(pl.col("cluster") == clusters.filter(pl.col("id") == "a-junk")["cluster"][0])
    assert pair.height == 2  # the textbook section and its junk-suffixed copy; the better-scored one is kept
    assert pair.filter(pl.col("kept"))["quality_score"][0] == pair["quality_score"].max()


def test_a_dotted_model_name_keeps_its_dot_and_only_bin_is_taken_off(labelled, tmp_path):
    texts, labels = labelled
    tiny = TrainSettings(lrs=(1.0,), epochs=(5,), dim=8, bucket=1_000)
    for name in ("quality.v1", "quality.v2", "plain.bin"):
        train_classifier(texts[::10], labels[::10], tmp_path / name, tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "plain.bin", "plain.json", "quality.v1.bin", "quality.v1.json", "quality.v2.bin", "quality.v2.json"]
    assert QualityModel.load(tmp_path / "quality.v1.bin").meta["n_train"] == len(texts[::10])


def test_groups_weigh_the_same_and_rank_only_within_themselves():
    assert balance_copies(np.array(["human"] * 3 + ["tw"] * 15)).tolist() == [5] * 3 + [1] * 15
    assert balance_copies(np.array(["all"] * 4)).tolist() == [1] * 4
    # textbook-vs-web perfectly separated, the human group ranked backwards: the pooled AUC hides it
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    s = np.array([0.2, 0.3, 0.25, 0.35, 0.9, 0.8, 0.1, 0.05])
    g = np.array(["human"] * 4 + ["tw"] * 4)
    assert group_auc(y, s, g) == {"human": 0.0, "tw": 1.0} and roc_auc(y, s) == 0.75
    # every (group, class) stratum, even a tiny one, reaches the validation split
    y2, g2 = np.array([1, 1, 0] + [1, 0] * 20, dtype=bool), np.array(["human"] * 3 + ["tw"] * 40)
    valid = validation_split(y2, 0.2, np.random.default_rng(0), g2)
    assert {(str(a), bool(b)) for a, b in zip(g2[valid], y2[valid], strict=True)} == {
        ("human", True), ("human", False), ("tw", True), ("tw", False)}


def test_the_grid_picks_by_the_mean_group_auc_not_the_pooled_one():
    grid = [{"lr": 1.0, "epoch": 10, "roc_auc": 0.95, "select_auc": 0.86, "f1": 0.91},
            {"lr": 0.5, "epoch": 5, "roc_auc": 0.94, "select_auc": 0.88, "f1": 0.90},
            {"lr": 2.0, "epoch": 5, "error": "Encountered NaN."}]
    assert (pick(grid)["lr"], pick(grid)["epoch"]) == (0.5, 5)
    with pytest.raises(RuntimeError, match="every lr/epoch"):
        pick(grid[2:])


def test_train_with_groups_repeats_the_small_group_and_reports_each(labelled, shared_data, tmp_path, monkeypatch):
    texts, labels = labelled
    rows = [json.loads(x) for x in gzip.open(
        shared_data / "dclm_human_quality_labels" / "majority_data.jsonl.gz", "rt")]
    human = [r for r in rows if r["label"]][:20] + [r for r in rows if not r["label"]][:20]
    texts, labels = texts + [r["text"] for r in human], labels + [bool(r["label"]) for r in human]
    groups = ["tw"] * 600 + ["human"] * 40
    lines: list[int] = []
    real_train = clf._train

    def counting_train(path, settings, lr, epoch):
        lines.append(len(Path(path).read_text(encoding="utf-8").splitlines()))
        return real_train(path, settings, lr, epoch)

    monkeypatch.setattr(clf, "_train", counting_train)
    tiny = TrainSettings(lrs=(0.5, 1.0), epochs=(5,), dim=16, bucket=10_000, folds=1)  # the one-split path
    _, meta = train_classifier(texts, labels, tmp_path / "m", tiny, groups=groups)
    assert meta["groups"] == {"human": {"n": 40, "copies": 15}, "tw": {"n": 600, "copies": 1}}
    assert lines[-1] == 600 + 40 * 15  # the final model sees every example, the human ones 15 times
    # the grid trains without the validation split: 8 human, and a fifth of the tw texts with their copies
    # (the sample holds 9 SciPhi sections twice; a copy is never on both sides)
    n_tw_valid = meta["validation"]["n"] - 8
    assert lines[0] == 600 - n_tw_valid + 32 * 15 and 120 <= n_tw_valid <= 125
    for r in meta["grid"]:
        assert set(r["group_auc"]) == {"human", "tw"}
        assert r["select_auc"] == pytest.approx(np.mean(list(r["group_auc"].values())), abs=1e-4)
    assert meta["chosen"] == {k: pick(meta["grid"])[k] for k in ("lr", "epoch")}
    assert meta["n_duplicate_texts"] == 9


def test_bad_groups_are_one_clear_error(labelled, tmp_path):
    texts, labels = labelled
    with pytest.raises(ValueError, match="groups has 3 entries for 600 texts"):
        train_classifier(texts, labels, tmp_path / "m", SMALL, groups=["a", "b", "c"])
    with pytest.raises(ValueError, match="group 'tb' needs both positive and negative"):
        train_classifier(texts, labels, tmp_path / "m", SMALL, groups=["tb"] * 300 + ["web"] * 300)


def test_size_note_gives_the_model_size_and_what_fewer_buckets_make_it(labelled, tmp_path):
    """The default 2M buckets make an ~800 MB model whatever the data: the note says so, and its estimate
    for --bucket 200000 is the size such a model has."""
    texts, labels = labelled
    sizes = {}
    for bucket in (300_000, 200_000):
        tiny = TrainSettings(lrs=(1.0,), epochs=(1,), dim=8, bucket=bucket)
        train_classifier(texts[::10], labels[::10], tmp_path / f"b{bucket}", tiny)
        path = tmp_path / f"b{bucket}.bin"
        sizes[bucket] = path.stat().st_size, clf.size_note(path, tiny)
    (big, note), (small, plain) = sizes[300_000], sizes[200_000]
    assert big - small == 100_000 * 8 * 4  # a row of dim float32s per bucket
    assert note == (f"{tmp_path / 'b300000.bin'}: {big / 1e6:.1f} MB; --bucket 200000 makes it ~{small / 1e6:.1f} MB "
                    f"({big / small:.0f}x smaller) at a small accuracy cost (check with `classifier eval`)")
    assert plain == f"{tmp_path / 'b200000.bin'}: {small / 1e6:.1f} MB"  # no hint at 200000 buckets or fewer



def _train_cli(tmp_path: Path, labels: list, *options: str):
    """`classifier train --labelled` on one small file of `labels`, with small settings."""
    from typer.testing import CliRunner

    from textbookgen.cli import app

    texts = [f"lesson {i}: the theorem explains the concept with an example" if i % 2 else
             f"offer {i}: buy now, free shipping, click here" for i in range(len(labels))]
    path = tmp_path / "labels.parquet"
    pl.DataFrame({"text": texts, "label": labels}).write_parquet(path)
    return CliRunner().invoke(app, ["classifier", "train", "-o", str(tmp_path / "m"), "--labelled", str(path),
                                    "--lr", "0.5", "--epochs", "2", "--dim", "8", "--bucket", "1000", *options])


JUDGE_SCORES = [0] * 2 + [1] * 5 + [2] * 18 + [3] * 25 + [4] * 16 + [5] * 10  # as `classifier label` gives them


def test_train_reads_judge_scores_on_their_0_to_5_scale_and_warns_of_a_lopsided_split(tmp_path):
    """FineWeb-Edu kept int_score >= 3; the old default (1) made 97 % of judge labels positive, silently."""
    res = _train_cli(tmp_path, JUDGE_SCORES)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_positive"] == sum(y >= 3 for y in JUDGE_SCORES) and "warning" not in res.stderr
    res = _train_cli(tmp_path, JUDGE_SCORES, "--min-positive", "1")
    assert res.exit_code == 0 and json.loads(res.stdout)["n_positive"] == 74, res.output
    assert ("warning: 97% of the 76 labelled examples are positive: --min-positive 1 makes numeric labels >= 1 "
            "positive") in res.stderr


def test_binary_labels_keep_1_as_positive_and_another_scale_needs_min_positive(tmp_path):
    res = _train_cli(tmp_path, [0, 1] * 30)  # e.g. DCLM's human labels
    assert res.exit_code == 0 and json.loads(res.stdout)["n_positive"] == 30, res.output
    res = _train_cli(tmp_path, ["0", "1.0", "true", "no"] * 15)  # numbers written as text count too
    assert res.exit_code == 0 and json.loads(res.stdout)["n_positive"] == 30, res.output
    res = _train_cli(tmp_path, list(range(11)) * 6)
    assert res.exit_code == 1 and "labels.parquet: labels go up to 10" in res.output and "--min-positive" in res.output
    assert _train_cli(tmp_path, list(range(11)) * 6, "--min-positive", "7").exit_code == 0


def test_no_one_default_fits_0_1_labels_beside_judge_scores(tmp_path):
    pl.DataFrame({"text": ["a", "b"], "label": [0, 1]}).write_parquet(tmp_path / "human.parquet")
    pl.DataFrame({"text": ["a", "b"], "label": [2, 5]}).write_ndjson(tmp_path / "judged.jsonl")
    assert clf.default_min_positive([str(tmp_path / "judged.jsonl")]) == 3
    with pytest.raises(ValueError, match=r"human.parquet has 0/1 labels and .*judged.jsonl 0-5 judge scores"):
        clf.default_min_positive([str(tmp_path / "human.parquet"), str(tmp_path / "judged.jsonl")])


def test_load_names_the_file_that_is_not_a_model(tmp_path, trained):
    """fastText's own message ("x has wrong file format!") does not say which argument was wrong."""
    not_model = tmp_path / "docs.jsonl"
    not_model.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl: not a fastText model"):
        QualityModel.load(not_model)
    with pytest.raises(ValueError, match=r"is a folder, not a fastText model"):
        QualityModel.load(tmp_path)
    bad_meta = tmp_path / "m.bin"
    bad_meta.write_bytes(trained[0].read_bytes())
    bad_meta.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match=r"m.json: the model's metadata is not valid JSON"):
        QualityModel.load(bad_meta)

"""Small labelled sets are validated by stratified k-fold cross-validation: one held-out split of 218 texts
(43 texts) moved its AUC by about 0.08 from seed to seed, and the report gave that one figure, no spread."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import xxhash

from textbookgen.curation import classifier as clf
from textbookgen.curation.classifier import TrainSettings, cv_folds, roc_auc, text_ids, train_classifier

TINY = TrainSettings(lrs=(0.5,), epochs=(5,), dim=8, bucket=1_000)


def fake_score(text: str) -> float:
    """A fixed, overlapping score: 'good' texts higher on average, each text's own offset from its hash."""
    return (0.65 if "good" in text else 0.35) + (xxhash.xxh64_intdigest(text.encode()) % 1000) / 1000 * 0.6 - 0.3


class FakeFastText:
    """Stands in for a trained fastText model: scores by `fake_score`, remembers what it was trained on."""

    def __init__(self, path: str, log: list[tuple[set[str], set[str]]]) -> None:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        self.trained = {line.split(" ", 1)[1] for line in lines}
        self.predicted: set[str] = set()
        log.append((self.trained, self.predicted))

    def predict(self, batch: list[str], k: int = -1):
        self.predicted.update(batch)
        return ([["__label__hq", "__label__cc"]] * len(batch),
                [[fake_score(t), 1 - fake_score(t)] for t in batch])

    def get_labels(self) -> list[str]:
        return ["__label__hq", "__label__cc"]

    def save_model(self, path: str) -> None:
        Path(path).write_bytes(b"fake")


@pytest.fixture
def fake(monkeypatch) -> list[tuple[set[str], set[str]]]:
    """fastText replaced by `FakeFastText`: deterministic scores, so fold figures can be checked by hand."""
    log: list[tuple[set[str], set[str]]] = []
    monkeypatch.setattr(clf, "_train", lambda path, settings, lr, epoch: FakeFastText(str(path), log))
    return log


def synthetic(n_pos: int, n_neg: int) -> tuple[list[str], list[bool]]:
    return ([f"lesson {i} good example" for i in range(n_pos)] + [f"page {i} spam offer" for i in range(n_neg)],
            [True] * n_pos + [False] * n_neg)


def test_folds_are_stratified_by_class_and_group_and_keep_copies_together():
    y = np.array([True] * 37 + [False] * 23 + [True, False] * 6)
    groups = np.array(["web"] * 60 + ["human"] * 12)
    keys = np.array([f"t{i}" for i in range(60)] + [f"h{i % 4}" for i in range(12)])  # 4 human texts, 3 copies each
    for seed in range(4):
        fold = cv_folds(y, 5, np.random.default_rng(seed), groups, keys)
        assert set(fold) == set(range(5))
        for key in np.unique(keys):
            assert len(set(fold[keys == key])) == 1  # a text and its copies in one fold
        _, first = np.unique(keys, return_index=True)
        for g in ("web", "human"):
            for cls_ in (True, False):
                counts = np.bincount(fold[first][(groups[first] == g) & (y[first] == cls_)], minlength=5)
                assert counts.max() - counts.min() <= 1  # each stratum's distinct texts spread evenly
        sizes = np.bincount(fold[first], minlength=5)
        assert sizes.max() - sizes.min() <= 1  # the folds differ by one distinct text at most
    assert (cv_folds(y, 5, np.random.default_rng(1), groups, keys) ==
            cv_folds(y, 5, np.random.default_rng(1), groups, keys)).all()


def test_cross_validation_reports_each_fold_their_mean_and_spread(fake, tmp_path):
    texts, labels = synthetic(60, 50)
    _, meta = train_classifier(texts, labels, tmp_path / "m", TINY)
    v = meta["validation"]
    assert v["method"] == "5-fold cross-validation" and v["n"] == 110 and meta["warnings"] == []
    # by hand: the folds the seed gives, each scored on its own
    y, s = np.array(labels), np.array([fake_score(t) for t in texts])
    fold = cv_folds(y, 5, np.random.default_rng(0), np.full(110, "all"), text_ids(texts))
    aucs = [roc_auc(y[fold == f], s[fold == f]) for f in range(5)]
    assert [f["roc_auc"] for f in v["folds"]] == [round(a, 4) for a in aucs]
    assert [f["n"] for f in v["folds"]] == [int((fold == f).sum()) for f in range(5)]
    assert v["roc_auc"] == pytest.approx(np.mean(aucs), abs=1e-4)
    assert v["spread"]["roc_auc"]["std"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-4) and np.std(aucs) > 0
    assert (v["spread"]["roc_auc"]["min"], v["spread"]["roc_auc"]["max"]) == (round(min(aucs), 4), round(max(aucs), 4))
    f1s = [f["f1"] for f in v["folds"]]
    assert v["f1"] == pytest.approx(np.mean(f1s), abs=1e-4) and v["spread"]["f1"]["std"] > 0
    assert sum(v["confusion"].values()) == 110
    assert v["summary"].startswith(f"validation (5-fold, 110 texts; ± the folds' std): AUC {np.mean(aucs):.3f} ± "
                                   f"{np.std(aucs, ddof=1):.3f}, F1 ")
    # every figure comes from a model that never saw the texts it scored; the final model saw them all
    *folds, (final_trained, final_predicted) = fake
    assert len(folds) == 5 and all(predicted and not predicted & trained for trained, predicted in folds)
    assert len(final_trained) == 110 and not final_predicted


def test_the_same_seed_gives_the_same_figures_and_another_seed_other_folds(fake, tmp_path):
    texts, labels = synthetic(40, 45)
    runs = [train_classifier(texts, labels, tmp_path / f"m{seed}", replace(TINY, seed=seed))[1]
            for seed in (3, 3, 4)]
    assert runs[0]["validation"] == runs[1]["validation"]
    assert runs[0]["validation"]["folds"] != runs[2]["validation"]["folds"]


def test_a_class_too_small_for_five_folds_gets_fewer_and_says_why(fake, tmp_path):
    texts, labels = synthetic(3, 30)
    texts, labels = texts + texts[:3], labels + labels[:3]  # copies count once
    _, meta = train_classifier(texts, labels, tmp_path / "m", TINY)
    assert meta["warnings"] == ["3-fold cross-validation, not 5: the positive class has only 3 distinct texts"]
    assert len(meta["validation"]["folds"]) == 3 and meta["validation"]["method"] == "3-fold cross-validation"


def test_a_group_class_of_one_text_falls_back_to_one_split_naming_it(fake, tmp_path):
    texts, labels = synthetic(30, 30)
    texts, labels = texts + ["human good 1", "human page a", "human page b"], labels + [True, False, False]
    _, meta = train_classifier(texts, labels, tmp_path / "m", TINY, groups=["tw"] * 60 + ["human"] * 3)
    assert meta["warnings"] == ["one validation split, not 5-fold cross-validation: the positive class of group "
                                "'human' has only 1 distinct text; its figures move a lot with the split"]
    assert meta["validation"]["method"] == "validation split" and "spread" not in meta["validation"]


def test_many_texts_keep_one_split_unless_folds_are_asked_for(fake, tmp_path, monkeypatch):
    texts, labels = synthetic(30, 30)
    monkeypatch.setattr(clf, "CV_MAX_TEXTS", 60)
    _, meta = train_classifier(texts, labels, tmp_path / "m", TINY)
    assert meta["validation"]["method"] == "validation split" and meta["validation"]["n"] == 12
    assert meta["validation"]["summary"] == (f"validation (validation split, 12 texts): AUC "
                                             f"{meta['validation']['roc_auc']:.3f}, F1 {meta['validation']['f1']:.3f}")
    _, meta = train_classifier(texts, labels, tmp_path / "m", replace(TINY, folds=4))
    assert meta["validation"]["method"] == "4-fold cross-validation" and meta["settings"]["folds"] == 4
    with pytest.raises(ValueError, match="folds must be >= 1"):
        train_classifier(texts, labels, tmp_path / "m", replace(TINY, folds=0))


@pytest.fixture(scope="module")
def dclm(shared_data: Path) -> dict[str, list[dict]]:
    folder = shared_data / "dclm_human_quality_labels"
    return {name: [json.loads(x) for x in gzip.open(folder / f"{name}_data.jsonl.gz", "rt")]
            for name in ("majority", "agreement")}


def test_human_labels_cross_validate_with_a_spread_and_copies_in_one_fold(dclm, tmp_path, monkeypatch):
    """DCLM's 200 first majority-vote labels plus its agreement file (a subset: 113 of them again)."""
    rows = dclm["majority"][:200]
    ids = {r["text"] for r in rows}
    again = [r for r in dclm["agreement"] if r["text"] in ids]
    texts = [r["text"] for r in rows + again]
    labels = [bool(r["label"]) for r in rows + again]
    sides: list[tuple[set[str], set[str]]] = []
    real = clf.grid_search

    def spy(train_file: Path, valid_texts, *args, **kw):
        sides.append(({line.split(" ", 1)[1] for line in train_file.read_text().splitlines()},
                      {clf.fasttext_line(t) for t in valid_texts}))
        return real(train_file, valid_texts, *args, **kw)

    monkeypatch.setattr(clf, "grid_search", spy)
    _, meta = train_classifier(texts, labels, tmp_path / "m", TrainSettings(lrs=(1.0,), epochs=(10,), dim=16,
                                                                            bucket=10_000))
    v = meta["validation"]
    assert len(again) > 50 and meta["n_duplicate_texts"] == len(again)
    assert len(sides) == 5 and all(valid and not valid & train for train, valid in sides)
    assert set().union(*(valid for _, valid in sides)) == {clf.fasttext_line(t) for t in texts}
    assert v["n"] == len(texts) and [len(valid) for _, valid in sides] == [40] * 5  # 200 distinct texts, 40 a fold
    aucs = [f["roc_auc"] for f in v["folds"]]
    assert v["roc_auc"] == pytest.approx(np.mean(aucs), abs=1e-4) and v["spread"]["roc_auc"]["std"] > 0
    assert 0.6 < v["roc_auc"] < 1.0


def test_train_command_prints_the_spread_and_takes_folds_and_seed(tmp_path):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    texts = [f"lesson {i}: the theorem explains the concept with an example" if i % 2 else
             f"offer {i}: buy now, free shipping, click here" for i in range(40)]
    pl.DataFrame({"text": texts, "label": [i % 2 for i in range(40)]}).write_parquet(tmp_path / "labels.parquet")
    base = ["classifier", "train", "-o", str(tmp_path / "m"), "--labelled", str(tmp_path / "labels.parquet"),
            "--lr", "0.5", "--epochs", "2", "--dim", "8", "--bucket", "1000"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)["validation"]
    assert v["summary"].startswith(f"validation (5-fold, 40 texts; ± the folds' std): AUC {v['roc_auc']:.3f} ± "
                                   f"{v['spread']['roc_auc']['std']:.3f}, F1 {v['f1']:.3f} ± ")
    res = CliRunner().invoke(app, [*base, "--folds", "1", "--seed", "2"])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.stdout)
    assert meta["validation"]["summary"].startswith("validation (validation split, 8 texts)")
    assert (meta["settings"]["folds"], meta["settings"]["seed"]) == (1, 2)
    res = CliRunner().invoke(app, [*base, "--folds", "0"])
    assert res.exit_code == 1 and "--folds: must be >= 1, got 0" in res.output

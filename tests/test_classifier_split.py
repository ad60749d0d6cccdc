"""The validation split that picks lr x epochs and reports the model's metrics holds no text that training
also sees: a text given twice (two labelled files that overlap, a copy re-labelled) goes to one side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from textbookgen.curation import classifier as clf
from textbookgen.curation.classifier import TrainSettings, train_classifier, validation_split

TINY = TrainSettings(lrs=(0.5,), epochs=(1,), dim=8, bucket=1_000)


def test_copies_of_a_text_are_all_on_one_side_of_the_split():
    y = np.array([True, False] * 20)
    keys = np.array([f"doc{i // 2 % 20}" for i in range(40)])  # every text twice, under both labels or one
    for seed in range(5):
        valid = validation_split(y, 0.3, np.random.default_rng(seed), keys=keys)
        assert not set(keys[valid]) & set(keys[~valid])
        assert valid.any() and (~valid).any()


def test_training_never_sees_a_validation_text_given_twice(tmp_path, monkeypatch):
    """DCLM's agreement labels are a subset of its majority ones: both files as --labelled put 281 texts
    in training and validation alike, and validation AUC read 0.95 for a model at 0.73 on unseen text."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = [" ".join(np.random.default_rng(i).choice(words, 30)) + f" doc{i}" for i in range(60)]
    labels = [i % 2 == 0 for i in range(60)]
    texts, labels = texts + texts[:40], labels + labels[:40]  # a second file repeating 40 of them
    texts[-1] = texts[-1].upper().replace(" ", "  ")  # whitespace and case are no new text
    seen: dict[str, object] = {}
    real = clf.grid_search

    def spy(train_file: Path, valid_texts, *args, **kw):
        seen["train"] = {line.split(" ", 1)[1].casefold() for line in train_file.read_text().splitlines()}
        seen["valid"] = {" ".join(t.split()).casefold() for t in valid_texts}
        return real(train_file, valid_texts, *args, **kw)

    monkeypatch.setattr(clf, "grid_search", spy)
    _, meta = train_classifier(texts, labels, tmp_path / "m", TINY)
    assert seen["valid"] and not seen["valid"] & seen["train"]
    assert meta["n_duplicate_texts"] == 40


def test_eval_counts_the_texts_the_model_was_trained_on(tmp_path):
    """Evaluating on training text (DCLM's agreement file after training on its majority file, a superset)
    printed AUC 1.0 for a model at 0.84 on unseen text, with nothing to say why."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = [" ".join(np.random.default_rng(i).choice(words, 30)) + f" doc{i}" for i in range(40)]
    labels = [i % 2 == 0 for i in range(40)]
    model, meta = train_classifier(texts[:30], labels[:30], tmp_path / "m", TINY)
    assert "trained_on" not in meta  # what `classifier train` prints stays short
    held = [t.upper() for t in texts[25:]]  # 5 seen (case is no new text), 10 not
    assert model.evaluate(held, labels[25:]).seen_in_training == 5
    loaded = clf.QualityModel.load(tmp_path / "m.bin")
    assert loaded.evaluate(held, labels[25:]).as_dict()["seen_in_training"] == 5
    (tmp_path / "m.json").unlink()  # a bare .bin: unknown, not "none seen"
    assert clf.QualityModel.load(tmp_path / "m.bin").evaluate(held, labels[25:]).seen_in_training is None


def test_a_model_whose_scores_barely_move_says_so(tmp_path):
    """218 DCLM-labelled pages with the default grid: every validation score fell in 0.500-0.501, so a
    `--threshold 0.5` cut kept all or nothing, while the .json gave AUC 0.73 and no hint."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = [" ".join(np.random.default_rng(i).choice(words, 300)) for i in range(40)]
    labels = [i % 2 == 0 for i in range(40)]
    _, meta = train_classifier(texts, labels, tmp_path / "flat", TrainSettings(lrs=(0.01,), epochs=(1,), dim=8,
                                                                                 bucket=1_000))
    low, high = meta["validation"]["score_range"]
    assert high - low < 0.01 and "keep_top_percent" in " ".join(meta["warnings"])
    texts = [f"{t[:20]} " + ("good lesson " if y else "bad spam ") * 5 for t, y in zip(texts, labels, strict=True)]
    _, meta = train_classifier(texts, labels, tmp_path / "ok", TrainSettings(lrs=(1.0,), epochs=(50,), dim=8,
                                                                               bucket=1_000))
    assert meta["warnings"] == []


def test_a_class_of_one_distinct_text_is_refused_in_words(tmp_path):
    """Eight copies of one text per class: both went to validation and fastText said only "Empty vocabulary"."""
    texts = ["the cell divides by mitosis"] * 8 + ["buy cheap pills now"] * 8
    with pytest.raises(ValueError, match=r"positive examples hold 1 distinct text \(copies count once\), all held out for validation"):
        train_classifier(texts, [True] * 8 + [False] * 8, tmp_path / "m")

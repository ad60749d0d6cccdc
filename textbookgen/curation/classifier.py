"""fastText quality classifier: train (lr/epochs picked by cross-validation or on a validation split), evaluate,
score, cut.

Fewer than `CV_MAX_TEXTS` distinct labelled texts are validated by stratified k-fold cross-validation
(`TrainSettings.folds`, 5 by default): one held-out split of 218 texts is 43 texts, whose AUC moved by about
0.08 from seed to seed, so a single figure said little. Each fold's figures are kept and the report gives their
mean and spread ("validation (5-fold, 218 texts; ± the folds' std): AUC 0.810 ± 0.066, ..."). The spread is the
fold-to-fold standard deviation, what one split of that size would move by, not a confidence interval of the
mean: the folds share most of their training data, and no unbiased estimate of the mean's variance exists for
k-fold (Bengio & Grandvalet, 2004). lr/epochs are picked by the same folds' mean, so the mean is a little
optimistic, as the single split's figure always was.

Training data often mixes labelled sources of very different size and difficulty (a few hundred human
labels beside thousands of textbook-vs-web pairs). Given `groups` (the source of each example), every
source carries the same total weight in training (small ones are repeated), and lr/epochs are picked by
the mean of each source's own validation AUC. Without that, the big easy source drowns the small one
twice: in the loss, and in a pooled AUC whose pairs are mostly cross-source (bench/RESULTS.md).

Uses `fasttext-numpy2-wheel` (imports as `fasttext`): the other wheels give wrong k>1 probabilities or
fail `predict(str)` under numpy 2. Training always runs with `thread >= 11`: fastText 0.9.x initialises
only thread/10 of the input matrix (issue #1061) and, since commit b733943, leaves the rest as
uninitialised memory, so fewer threads intermittently die with "Encountered NaN" (field notes 6.3);
11 also covers the remainder block when rows x dim is not a multiple of 10.
So training is not repeatable: fastText's SGD on several threads is lock-free (Hogwild), and the one
deterministic setting, thread=1, is the one the NaN bug hits most. The seed fixes the validation folds or
split and the example order, not the model; the .json says `"deterministic": false` and the thread count.

A model is saved as `<name>.bin` plus `<name>.json`: its sha256, the labels, training settings, the
chosen lr/epochs, validation metrics (per source and per fold too) and the size of the data it saw. Either
way the final model is trained on all the data with the chosen lr/epochs, and the metrics are those of
models that never saw the texts they scored, at the fixed threshold 0.5 (none is tuned).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import xxhash

from textbookgen.curation.base import StageStats, Step, input_rows, require_columns
from textbookgen.curation.config import ClassifierConfig
from textbookgen.curation.corpus_io import file_digest
from textbookgen.curation.judge import JUDGE_STATUS
from textbookgen.curation.normalize import normalize_exact

MIN_THREADS = 11
#: fewer distinct labelled texts than this are validated by k-fold cross-validation (by default), not one split
CV_MAX_TEXTS = 2_000
DEFAULT_FOLDS = 5
#: the figures each fold reports, and whose mean and spread the cross-validated metrics give
FOLD_METRICS = ("roc_auc", "f1", "precision", "recall", "accuracy", "select_auc")
#: the .json's ids of the training texts (`text_ids`, base64 of sorted uint64), so `evaluate` can count them
TRAINED_ON = "trained_on"


def fasttext_line(text: str) -> str:
    """One example per line: fastText reads a newline as the end of an example."""
    return " ".join(text.split())


@dataclass
class TrainSettings:
    """fastText settings; `lrs` x `epochs` is the grid searched on the validation folds or split. `folds`:
    None picks `DEFAULT_FOLDS`-fold cross-validation under `CV_MAX_TEXTS` distinct texts and one split of
    `valid_fraction` above; 1 is one split; k >= 2 is k folds whatever the size."""

    lrs: tuple[float, ...] = (0.1, 0.5, 1.0)
    epochs: tuple[int, ...] = (5, 10)
    dim: int = 100
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 2_000_000
    valid_fraction: float = 0.2
    seed: int = 0
    folds: int | None = None
    thread: int = field(default_factory=lambda: max(MIN_THREADS, os.cpu_count() or 1))


@dataclass
class Metrics:
    """Binary metrics at a probability threshold, plus ROC AUC over all thresholds."""

    n: int
    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    roc_auc: float | None  # None with one class only: AUC ranks positives against negatives
    confusion: dict[str, int]  # tp, fp, tn, fn
    #: examples the model was trained on (same text, case and spacing aside); None when its .json does not say
    seen_in_training: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (ties count half)."""
    y = np.asarray(y, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0  # average 1-based rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> Metrics:
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    tn, fn = int((~pred & ~y).sum()), int((~pred & y).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    auc = roc_auc(y, scores)
    return Metrics(n=len(y), threshold=threshold, precision=round(p, 4), recall=round(r, 4), f1=round(f1, 4),
                   accuracy=round((tp + tn) / max(len(y), 1), 4), roc_auc=None if np.isnan(auc) else round(auc, 4),
                   confusion={"tp": tp, "fp": fp, "tn": tn, "fn": fn})


def _sidecar(meta_path: Path) -> dict[str, Any]:
    """The model's .json metadata (training figures, positive label); a bare .bin means label `hq`."""
    if not meta_path.exists():
        return {"positive_label": "hq"}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: the model's metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: the model's metadata must be a JSON object")
    return meta


class QualityModel:
    """A trained fastText model and its metadata; `scores(texts)` is P(positive label)."""

    def __init__(self, model: Any, meta: dict[str, Any]) -> None:
        self.model, self.meta = model, meta
        self.positive = meta["positive_label"]

    @classmethod
    def load(cls, path: str | Path, positive: str | None = None) -> QualityModel:
        """A saved model and its .json sidecar; `positive` overrides the sidecar's positive label."""
        import fasttext

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such fastText model")
        if path.is_dir():
            raise ValueError(f"{path}: is a folder, not a fastText model (.bin)")
        meta = _sidecar(path.with_suffix(".json"))
        try:
            model = fasttext.load_model(str(path))
        except ValueError as e:  # fastText says only "<path> has wrong file format!"
            raise ValueError(f"{path}: not a fastText model (fastText: {e})") from None
        meta["positive_label"] = positive or meta.get("positive_label", "hq")
        if f"__label__{meta['positive_label']}" not in model.get_labels():
            raise ValueError(f"{path}: no label {meta['positive_label']!r} (labels: {model.get_labels()})")
        return cls(model, meta)

    def scores(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        """P(`positive`) for each text, predicted in batches with k=-1 (all labels)."""
        out = np.empty(len(texts), dtype=np.float64)
        target = f"__label__{self.positive}"
        for s in range(0, len(texts), batch_size):
            batch = [fasttext_line(t) for t in texts[s : s + batch_size]]
            labels, probs = self.model.predict(batch, k=-1)
            for i, (ls, ps) in enumerate(zip(labels, probs, strict=True)):
                out[s + i] = next((float(p) for lab, p in zip(ls, ps, strict=True) if lab == target), 0.0)
        return np.clip(out, 0.0, 1.0)

    def evaluate(self, texts: list[str], labels: list[bool], threshold: float = 0.5) -> Metrics:
        """Metrics on labelled text, with how many of the texts the model saw in training: those score as
        they were fitted, not as new text would."""
        metrics = binary_metrics(np.asarray(labels, dtype=bool), self.scores(texts), threshold)
        if TRAINED_ON in self.meta:
            trained = np.frombuffer(base64.b64decode(self.meta[TRAINED_ON]), dtype="<u8")
            metrics.seen_in_training = int(np.isin(text_ids(texts), trained).sum())
        return metrics


def text_ids(texts: list[str]) -> np.ndarray:
    """A 64-bit id of each text as exact dedup normalises it (NFKC, case-folded, whitespace-collapsed)."""
    return np.fromiter((xxhash.xxh3_64_intdigest(normalize_exact(t).encode("utf-8", "surrogatepass"))
                        for t in texts), dtype=np.uint64, count=len(texts))


def write_examples(path: Path, texts: list[str], labels: np.ndarray, positive: str, negative: str) -> None:
    """One `__label__<name> <text>` line per example, in the given order (fastText reads in file order)."""
    with open(path, "w", encoding="utf-8") as f:
        for t, y in zip(texts, labels, strict=True):
            f.write(f"__label__{positive if y else negative} {fasttext_line(t)}\n")


def balance_copies(groups: np.ndarray) -> np.ndarray:
    """How many times to write each example so that every group carries about the largest group's
    weight: fastText has no sample weights, and repeating a small group in a shuffled file is the same
    up-weighting in expectation. No groups (all one value): one copy each."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return np.maximum(1, np.rint(counts.max() / counts)).astype(np.int64)[inverse]


def group_auc(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """ROC AUC within each group: pairs across groups rank the sources, not the quality inside one."""
    return {str(g): round(roc_auc(y[groups == g], scores[groups == g]), 4) for g in np.unique(groups)}


def _train(path: Path, settings: TrainSettings, lr: float, epoch: int) -> Any:
    import fasttext

    return fasttext.train_supervised(
        input=str(path), lr=lr, epoch=epoch, dim=settings.dim, wordNgrams=settings.word_ngrams,
        minCount=settings.min_count, bucket=settings.bucket, thread=max(MIN_THREADS, settings.thread),
        seed=settings.seed, verbose=0, loss="softmax")


def validation_split(y: np.ndarray, fraction: float, rng: np.random.Generator,
                     groups: np.ndarray | None = None, keys: np.ndarray | None = None) -> np.ndarray:
    """Stratified by class (and group): `fraction` of each stratum (at least one) marked True. Examples
    with the same `key` (the same text) land on one side, by their first occurrence's stratum: a text in
    both halves is scored on what the model trained on, and the validation figures read too high."""
    groups = np.zeros(len(y), dtype=np.int64) if groups is None else groups
    keys = np.arange(len(y)) if keys is None else keys
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    valid = np.zeros(len(first), dtype=bool)
    for g in np.unique(groups[first]):
        for cls_ in (True, False):
            idx = np.flatnonzero((groups[first] == g) & (y[first] == cls_))
            if len(idx):
                valid[rng.choice(idx, size=max(1, int(len(idx) * fraction)), replace=False)] = True
    return valid[inverse]


def cv_folds(y: np.ndarray, k: int, rng: np.random.Generator, groups: np.ndarray | None = None,
             keys: np.ndarray | None = None) -> np.ndarray:
    """The fold (0..k-1) of each example, stratified by class (and group): each stratum's distinct texts, in
    a random order, are dealt to the folds in turn, continuing where the last stratum stopped so that the
    folds' sizes differ by at most one text. Copies of a text (the same `key`) share its first occurrence's
    fold, as `validation_split` keeps them on one side."""
    groups = np.zeros(len(y), dtype=np.int64) if groups is None else groups
    keys = np.arange(len(y)) if keys is None else keys
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    fold = np.zeros(len(first), dtype=np.int64)
    dealt = 0
    for g in np.unique(groups[first]):
        for cls_ in (True, False):
            idx = np.flatnonzero((groups[first] == g) & (y[first] == cls_))
            fold[rng.permutation(idx)] = (dealt + np.arange(len(idx))) % k
            dealt += len(idx)
    return fold[inverse]


def fold_count(y: np.ndarray, groups: np.ndarray, keys: np.ndarray, requested: int | None) -> tuple[int, str | None]:
    """How many folds validate (1: one split), and a one-line note when it is fewer than asked: every fold
    needs each class (of each group) to score an AUC, so no more folds than the smallest such stratum has
    distinct texts."""
    _, first = np.unique(keys, return_index=True)
    if requested is None:
        requested = DEFAULT_FOLDS if len(first) < CV_MAX_TEXTS else 1
    if requested == 1:
        return 1, None
    strata = [(int(((groups[first] == g) & (y[first] == c)).sum()), str(g), c)
              for g in np.unique(groups) for c in (True, False)]
    smallest, group, cls_ = min(strata)
    if smallest >= requested:
        return requested, None
    name = f"{'positive' if cls_ else 'negative'} class" + (f" of group {group!r}" if len(np.unique(groups)) > 1 else "")
    texts = f"{smallest} distinct text{'s' * (smallest != 1)}"
    if smallest >= 2:
        return smallest, f"{smallest}-fold cross-validation, not {requested}: the {name} has only {texts}"
    return 1, (f"one validation split, not {requested}-fold cross-validation: the {name} has only {texts}; "
               "its figures move a lot with the split")


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1), min and max of one metric over the (two or more) folds."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std(ddof=1)), 4),
            "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}


def combine_folds(per_fold: list[list[dict[str, Any]]], scores: dict[tuple[float, int], list[np.ndarray]],
                  ) -> list[dict[str, Any]]:
    """One grid row per (lr, epochs) from each fold's `grid_search` rows: each metric the mean over the folds
    (`spread` and `folds` keep the rest), the confusion summed, `score_range` of the out-of-fold scores; a run
    that diverged on any fold is recorded as an error."""
    grid = []
    for rows in zip(*per_fold, strict=True):
        head = {"lr": rows[0]["lr"], "epoch": rows[0]["epoch"]}
        if err := next((r["error"] for r in rows if "error" in r), None):
            grid.append({**head, "error": err})
            continue
        s = np.concatenate(scores[(head["lr"], head["epoch"])])
        stats = {m: spread([r[m] for r in rows]) for m in FOLD_METRICS}
        grid.append({**head, "train_s": round(sum(r["train_s"] for r in rows), 2), "n": int(sum(r["n"] for r in rows)),
                     "threshold": rows[0]["threshold"], **{m: stats[m]["mean"] for m in FOLD_METRICS},
                     "group_auc": {g: round(float(np.mean([r["group_auc"][g] for r in rows])), 4)
                                   for g in rows[0]["group_auc"]},
                     "confusion": {c: sum(r["confusion"][c] for r in rows) for c in rows[0]["confusion"]},
                     "score_range": np.percentile(s, [5, 95]).round(4).tolist(), "spread": stats,
                     "folds": [{m: r[m] for m in ("n", *FOLD_METRICS)} for r in rows]})
    return grid


def summary_line(validation: dict[str, Any]) -> str:
    """The validation figures in one line, with their fold-to-fold spread when cross-validated."""
    if "spread" not in validation:
        return (f"validation ({validation['method']}, {validation['n']:,} texts): AUC {validation['roc_auc']:.3f}, "
                f"F1 {validation['f1']:.3f}")
    k, sp = len(validation["folds"]), validation["spread"]
    figures = ", ".join(f"{name} {sp[m]['mean']:.3f} ± {sp[m]['std']:.3f}"
                        for m, name in (("roc_auc", "AUC"), ("f1", "F1"), ("precision", "precision"),
                                        ("recall", "recall")))
    return f"validation ({k}-fold, {validation['n']:,} texts; ± the folds' std): {figures}"


def grid_search(train_file: Path, valid_texts: list[str], valid_y: np.ndarray, valid_groups: np.ndarray,
                settings: TrainSettings, positive: str, scores: dict[tuple[float, int], list[np.ndarray]] | None = None,
                ) -> list[dict[str, Any]]:
    """Train once per (lr, epochs) and score the validation split (or fold); a NaN-diverged run is recorded.
    `select_auc` is the mean of the per-group AUCs (the pooled AUC when there is one group). `scores`, when
    given, collects each run's validation scores under its (lr, epochs)."""
    grid: list[dict[str, Any]] = []
    for lr in settings.lrs:
        for epoch in settings.epochs:
            t0 = time.perf_counter()
            try:
                m = QualityModel(_train(train_file, settings, lr, epoch), {"positive_label": positive})
            except RuntimeError as e:  # "Encountered NaN": lr too high for this data
                grid.append({"lr": lr, "epoch": epoch, "error": str(e)})
                continue
            s = m.scores(valid_texts)
            if scores is not None:
                scores.setdefault((lr, epoch), []).append(s)
            per_group = group_auc(valid_y, s, valid_groups)
            metrics = binary_metrics(valid_y, s).as_dict()
            del metrics["seen_in_training"]  # none: the split keeps every copy of a text on one side
            grid.append({"lr": lr, "epoch": epoch, "train_s": round(time.perf_counter() - t0, 2),
                         "select_auc": round(float(np.mean(list(per_group.values()))), 4),
                         "group_auc": per_group, **metrics,
                         "score_range": np.percentile(s, [5, 95]).round(4).tolist()})
    return grid


def pick(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid's best run: highest mean per-group validation AUC, then F1, then fewer epochs. Not the
    pooled AUC: with a big easy group beside a small hard one, it rewards separating the groups."""
    ok = [r for r in grid if "error" not in r]
    if not ok:
        raise RuntimeError(f"fastText training failed for every lr/epoch: {grid}")
    return max(ok, key=lambda r: (r["select_auc"], r["f1"], -r["epoch"]))


#: the least spread (95th - 5th percentile) of validation scores for which a fixed threshold means something
MIN_SCORE_SPREAD = 0.1


def training_warnings(best: dict[str, Any]) -> list[str]:
    """What the chosen run's validation figures say the user should know. Scores packed around one value
    (a model that barely moved from its start: too few examples for the lr/epochs tried) rank documents,
    but a fixed threshold cut keeps all of them or none."""
    low, high = best["score_range"]
    if high - low >= MIN_SCORE_SPREAD:
        return []
    return [f"validation scores span only {low:.3f}-{high:.3f} (5th-95th percentile): the model barely trained "
            "on this little data (try more --epochs, e.g. 25,50, or a higher --lr); cut by keep_top_percent, "
            "not a threshold"]


def _check_groups(groups: list[str] | None, y: np.ndarray) -> np.ndarray:
    """The groups as an array (one group when None); each must hold both classes to have an AUC."""
    if groups is None:
        return np.full(len(y), "all")
    g = np.asarray([str(x) for x in groups])
    if len(g) != len(y):
        raise ValueError(f"train_classifier: groups has {len(g)} entries for {len(y)} texts")
    for name in np.unique(g):
        if y[g == name].all() or not y[g == name].any():
            raise ValueError(f"train_classifier: group {str(name)!r} needs both positive and negative examples")
    return g


def _check_trainable(y: np.ndarray, keys: np.ndarray, train: np.ndarray) -> None:
    """Both classes left to train on after the split: fastText would say only "Empty vocabulary"."""
    for cls_, name in ((True, "positive"), (False, "negative")):
        if not (y[train] == cls_).any():
            distinct = len(np.unique(keys[y == cls_]))
            raise ValueError(f"{name} examples hold {distinct} distinct text{'s' * (distinct != 1)} (copies count "
                             "once), all held out for validation: give more, to train on as well")


def validation_report(best: dict[str, Any], k: int) -> dict[str, Any]:
    """The chosen run's validation figures for the .json: each metric's mean over the folds under its old
    name (one split: its value), plus `method`, `spread` and `folds` when cross-validated, and `summary`."""
    names = ("n", "precision", "recall", "f1", "accuracy", "roc_auc", "confusion", "select_auc", "group_auc",
             "score_range")
    report: dict[str, Any] = {m: best[m] for m in names}
    report["method"] = f"{k}-fold cross-validation" if k > 1 else "validation split"
    if k > 1:
        report.update(spread=best["spread"], folds=best["folds"])
    report["summary"] = summary_line(report)
    return report


def train_classifier(texts: list[str], labels: list[bool], out_path: str | Path,
                     settings: TrainSettings | None = None, positive: str = "hq", negative: str = "cc",
                     source: str | None = None, groups: list[str] | None = None,
                     ) -> tuple[QualityModel, dict[str, Any]]:
    """Pick lr x epochs by k-fold cross-validation (few texts, see `TrainSettings.folds`) or on one validation
    split, both stratified by class and group (by the mean per-group ROC AUC, then F1), retrain on all data,
    save `<out>.bin` + `<out>.json`. `groups` names each example's labelled source (each needs both
    classes); every group then weighs the same in training. Returns the model and its metadata (with the
    grid's results). Copies of one text (overlapping labelled files)
    are all trained on or all validated on; the .json also holds the training texts' ids (`TRAINED_ON`,
    not in the returned metadata), so `evaluate` can say how many texts it was given were seen."""
    settings = settings or TrainSettings()
    y = np.asarray(labels, dtype=bool)
    if len(texts) != len(y) or y.all() or not y.any():
        raise ValueError("train_classifier: need as many labels as texts, with both classes present")
    if settings.folds is not None and settings.folds < 1:
        raise ValueError(f"train_classifier: folds must be >= 1 (1: one validation split), got {settings.folds}")
    g = _check_groups(groups, y)
    copies = balance_copies(g)
    rng = np.random.default_rng(settings.seed)
    keys = text_ids(texts)
    k, fold_note = fold_count(y, g, keys, settings.folds)
    if k == 1:
        fold = np.where(validation_split(y, settings.valid_fraction, rng, g, keys), 0, -1)
        _check_trainable(y, keys, fold != 0)
    else:
        fold = cv_folds(y, k, rng, g, keys)
    # fastText reads examples in file order: shuffle the classes, and spread the copies of an example
    order = rng.permutation(np.repeat(np.arange(len(y)), copies))
    with tempfile.TemporaryDirectory(prefix="textbookgen-fasttext-") as tmp:
        all_file = Path(tmp) / "all.txt"
        write_examples(all_file, [texts[i] for i in order], y[order], positive, negative)
        per_fold, scores = [], {}
        for f in range(k):
            train_file = Path(tmp) / f"train{f}.txt"
            tr, vi = order[fold[order] != f], np.flatnonzero(fold == f)
            write_examples(train_file, [texts[i] for i in tr], y[tr], positive, negative)
            per_fold.append(grid_search(train_file, [texts[i] for i in vi], y[vi], g[vi], settings, positive, scores))
        grid = per_fold[0] if k == 1 else combine_folds(per_fold, scores)
        best = pick(grid)
        model = _train(all_file, settings, best["lr"], best["epoch"])
    out, sidecar = model_paths(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(str(out))
    threads = max(MIN_THREADS, settings.thread)
    meta = {
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "positive_label": positive, "negative_label": negative, "labels": list(model.get_labels()),
        "settings": {**asdict(settings), "thread": threads},
        "deterministic": False, "thread": threads,  # Hogwild training: same data and seed, another model
        "chosen": {"lr": best["lr"], "epoch": best["epoch"]},
        "validation": validation_report(best, k),
        "warnings": ([fold_note] if fold_note else []) + training_warnings(best),
        "groups": {str(n): {"n": int((g == n).sum()), "copies": int(copies[g == n][0])} for n in np.unique(g)},
        "grid": grid, "n_train": int(len(y)), "n_positive": int(y.sum()), "source": source,
        "n_duplicate_texts": int(len(keys) - len(np.unique(keys))),
        "fasttext_package": "fasttext-numpy2-wheel",
    }
    trained_on = base64.b64encode(np.unique(keys).astype("<u8").tobytes()).decode("ascii")  # 11 bytes a text
    sidecar.write_text(json.dumps({**meta, TRAINED_ON: trained_on}, indent=2) + "\n")
    return QualityModel(model, {**meta, TRAINED_ON: trained_on}), meta


#: `classifier label`'s 0-5 judge scores: FineWeb-Edu kept int_score >= 3 as educational (field notes).
JUDGE_MIN_POSITIVE = 3.0
#: A positive share of the labelled examples outside (1 - this, this) is most likely a --min-positive that
#: does not fit the labels' scale.
LOPSIDED_SHARE = 0.9


def _top_label(path: str, label_column: str, text_column: str) -> tuple[float | None, bool]:
    """The largest numeric label of a labelled file or folder (numbers written as text too), or None when it
    has none (booleans, class words, no such column: `load_labelled` reads or refuses those), and whether
    `classifier label` wrote it (it has a `JUDGE_STATUS` column)."""
    from textbookgen.curation.corpus_io import Corpus

    tops, judged = [], False
    for chunk in Corpus(path, text_column).chunks([label_column, JUDGE_STATUS]):
        judged = judged or JUDGE_STATUS in chunk.columns
        col = chunk.get_column(label_column, default=None)
        if col is not None and (col.dtype.is_numeric() or col.dtype == pl.String):
            col = col.str.strip_chars() if col.dtype == pl.String else col
            tops.append(col.cast(pl.Float64, strict=False).fill_nan(None).max())
    return max((t for t in tops if t is not None), default=None), judged


def default_min_positive(paths: list[str], label_column: str = "label", text_column: str = "text") -> float:
    """`--min-positive` when it is not given, by the labels' scale: 1 for 0/1 labels (e.g. DCLM's human
    ones), 3 for 0-5 judge scores (`classifier label`'s files always: a sample of web pages it scored 0-1 is
    still on that scale, and at 1 its "some basic information" pages would train as positives). One fixed
    default trained on ~97 % positives from judge scores, or on none from 0/1 labels. Another scale, or files
    of both, raise ValueError: no default fits them."""
    scales: dict[str, float] = {}
    for path in paths:
        top, judged = _top_label(path, label_column, text_column)
        if top is not None and top > 5:
            raise ValueError(f"{path}: labels go up to {top:g}, neither 0/1 nor 0-5 judge scores; give "
                             "--min-positive (numeric labels >= it are positive)")
        scales[path] = 1.0 if not judged and (top is None or top <= 1) else JUDGE_MIN_POSITIVE
    binary, judged_paths = ([p for p, v in scales.items() if v == t] for t in (1.0, JUDGE_MIN_POSITIVE))
    if binary and judged_paths:
        raise ValueError(f"--labelled {binary[0]} has 0/1 labels and {judged_paths[0]} 0-5 judge scores: no one "
                         "--min-positive fits both; give it, or make the labels one scale")
    return JUDGE_MIN_POSITIVE if judged_paths else 1.0


def lopsided_warning(labels: list[bool], min_positive: float) -> str | None:
    """A one-line warning when nearly all, or nearly none, of the labelled examples are positive."""
    share = sum(labels) / len(labels) if labels else 0.5
    if 1 - LOPSIDED_SHARE <= share <= LOPSIDED_SHARE:
        return None
    return (f"warning: {share:.0%} of the {len(labels):,} labelled examples are positive: --min-positive "
            f"{min_positive:g} makes numeric labels >= {min_positive:g} positive (3 for 0-5 judge scores, as "
            "FineWeb-Edu; 1 for 0/1 labels)")


def model_paths(out_path: str | Path) -> tuple[Path, Path]:
    """`<out>.bin` and `<out>.json`; only a `.bin` ending is taken off, so `quality.v1` keeps its dot."""
    stem = str(out_path).removesuffix(".bin")
    return Path(stem + ".bin"), Path(stem + ".json")


SMALL_BUCKET = 200_000


def size_note(path: Path, settings: TrainSettings) -> str:
    """The saved model's size, and what `--bucket 200000` would make it. fastText keeps `dim` float32s per hash
    bucket of word n-grams beside those of the words, so the default 2M buckets are ~800 MB of a model's file
    whatever the data; fewer buckets share more n-grams, mostly a small accuracy cost."""
    size = path.stat().st_size
    note = f"{path}: {_mb(size)}"
    if settings.word_ngrams > 1 and settings.bucket > SMALL_BUCKET:
        smaller = size - (settings.bucket - SMALL_BUCKET) * settings.dim * 4
        note += (f"; --bucket {SMALL_BUCKET} makes it ~{_mb(smaller)} ({size / smaller:.0f}x smaller) at a small "
                 "accuracy cost (check with `classifier eval`)")
    return note


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 10e6 else f"{n / 1e6:,.0f} MB"


def percentile_cut(scores: np.ndarray, keep_top_percent: float) -> float:
    """The score at which the top `keep_top_percent` % of documents are kept."""
    return float(np.percentile(scores, 100.0 - keep_top_percent)) if len(scores) else 0.0


def top_percent_mask(scores: np.ndarray, keep_top_percent: float) -> np.ndarray:
    """Exactly round(n x X / 100) documents, highest scores first; ties go to the earlier row (a
    threshold would keep every document tied at the cut, and fastText scores often tie at 1.0)."""
    k = int(round(len(scores) * keep_top_percent / 100.0))
    keep = np.zeros(len(scores), dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:k]] = True
    return keep


class QualityScore(Step):
    """Score every document with the fastText model into `quality_score` (drops nothing)."""

    name = "quality_score"

    def __init__(self, config: ClassifierConfig, text_column: str = "text") -> None:
        self.config, self.text_column = config, text_column
        self.model = QualityModel.load(config.model_path, config.positive_label)  # type: ignore[arg-type]

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        require_columns(df, [self.text_column], self.name)
        t0 = time.perf_counter()
        s = self.scores(df[self.text_column])
        self.note(stats, s, len(s), time.perf_counter() - t0)
        return with_scores(df, s)

    def fingerprint(self) -> str:
        """The model file's bytes (a retrained model at the same path scores otherwise) and the positive label."""
        return f"{self.name} {self.model.positive} {file_digest(self.config.model_path)}"  # type: ignore[arg-type]

    def scores(self, texts: pl.Series) -> np.ndarray:
        """P(positive) of each text; a text's score does not depend on the others, so chunks give the same."""
        return self.model.scores(texts.to_list(), self.config.batch_size)

    def note(self, stats: StageStats, scores: np.ndarray, fresh: int, seconds: float) -> None:
        """The extras of a run whose documents have `scores`, `fresh` of them scored in `seconds` (the others a
        killed run scored): the speed is of those alone, None where there were none."""
        stats.extra.update({"model_sha256": self.model.meta.get("sha256"),
                            "docs_per_s": round(fresh / max(seconds, 1e-9), 1) if fresh else None,
                            "mean_score": round(float(scores.mean()), 4) if len(scores) else None})


def with_scores(df: pl.DataFrame, scores: np.ndarray) -> pl.DataFrame:
    """`df` with its `quality_score` column (an input's own one replaced, in its place)."""
    return df.with_columns(pl.Series("quality_score", scores, dtype=pl.Float64))


class QualityCut(Step):
    """Keep documents whose `quality_score` passes the threshold, or the top X % of them."""

    name = "quality_filter"

    def __init__(self, config: ClassifierConfig, id_column: str = "id") -> None:
        self.config = config
        self.id_column = id_column

    def fingerprint(self) -> str:
        return f"{self.name} {self.config.model_dump_json()} {self.id_column}"

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        """Writes `workdir/dropped.parquet` (id, row, quality_score of each document cut, lowest first), as the
        filters do: the cut is the one stage whose removals no file would otherwise show."""
        require_columns(df, ["quality_score"], self.name)
        keep = self.keep(df["quality_score"].fill_null(0.0).to_numpy(), stats)
        if workdir is not None and self.id_column in df.columns:
            self.write_dropped([self.dropped(df, keep)], workdir)
        return df.filter(pl.Series(keep))

    def keep(self, scores: np.ndarray, stats: StageStats) -> np.ndarray:
        """Which documents of the whole corpus's `scores` stay (the top share needs every score), noted in `stats`."""
        if self.config.keep_top_percent is not None:
            keep = top_percent_mask(scores, self.config.keep_top_percent)
            cut = float(scores[keep].min()) if keep.any() else 1.0
        else:
            cut = self.config.threshold if self.config.threshold is not None else 0.5
            keep = scores >= cut
        stats.dropped["low_quality"] = int((~keep).sum())
        stats.extra.update({"threshold": float(cut), "keep_top_percent": self.config.keep_top_percent})
        return keep

    def dropped(self, df: pl.DataFrame, keep: np.ndarray) -> pl.DataFrame:
        """The report rows (id, row, quality_score) of the documents of `df` that `keep` cuts."""
        return df.select(self.id_column, input_rows(df), "quality_score").filter(~pl.Series(keep))

    @staticmethod
    def write_dropped(parts: list[pl.DataFrame], workdir: Path) -> None:
        """`workdir/dropped.parquet`: the `dropped` rows of every chunk, lowest score first, ties in input order."""
        pl.concat(parts).sort("quality_score", maintain_order=True).write_parquet(workdir / "dropped.parquet")

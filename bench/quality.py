"""Quality-classifier benchmark: fastText trained on human labels plus textbook-vs-web text.

Training data: 70 % of the DCLM human quality annotations (`dclm_human_quality_labels`, 1 = high
quality), plus sections of real synthetic textbooks (SciPhi, positives) against real web text (C4,
negatives). Held out: the other 30 % of DCLM, and textbook books / C4 documents never seen in training
(textbooks are split by book, so no section of a test book is in training). The two labelled sources are
passed to ours as groups: each weighs the same in training, and lr x epochs are picked by the mean of
their AUCs on a validation split of the training data (`--pooled`: one group, the old behaviour).
No held-out label is used for any choice. Reports precision/recall/F1, ROC AUC and the confusion matrix
on each held-out set, and scoring speed (batched predict, best of 3 interleaved passes after a warm-up)
in docs/s.

Peer, in the same run on the same data: DCLM's classifier recipe (fastText `train_supervised` defaults
except wordNgrams=2: lr 0.1, 5 epochs, dim 100; same bucket and thread count as ours), i.e. what one gets
without our lr x epochs search. Ablation row: the same recipe on the group-balanced training file.

The DCLM test split has only 150 documents, so its AUC moves by about 0.04 from one split to the next;
`--seeds 0,1,2,3,4` repeats the whole run on other splits and prints the mean of each model. fastText trains
lock-free on several threads, so a rerun of one seed moves too: by about 0.001 for ours, up to 0.02 for
`--pooled`, whose top lr x epochs tie on validation and are picked by that noise (bench/RESULTS.md).

    python bench/quality.py [--seeds 0,1,2,3,4] [--pooled]

Last line: f1=<textbook-vs-web F1> auc=<..> dclm_f1=<human-label F1, keeping DCLM-train's positive share>
dclm_auc=<..> docs_per_s=<n>, then the same five for the peer as dclm_recipe_f1=... etc. (with several
seeds: each the mean over the splits).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from shared_data import skip_without  # bench/ is on the path

from textbookgen.curation.classifier import (
    MIN_THREADS,
    Metrics,
    QualityModel,
    TrainSettings,
    balance_copies,
    percentile_cut,
    train_classifier,
    write_examples,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DCLM = DATA / "dclm_human_quality_labels" / "majority_data.jsonl.gz"
SCIPHI = DATA / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz"
C4 = DATA / "c4_en_sample_1k" / "c4_sample.jsonl.gz"
DATA_FILES = [DCLM, SCIPHI, C4]


def read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def textbook_sections(books: list[dict]) -> list[str]:
    return [s for b in books for s in re.split(r"\n(?=#{1,3} )", b["text"]) if 80 <= len(s.split()) <= 3000]


def dclm_recipe(texts: list[str], labels: list[bool], bucket: int, seed: int, tmp: Path,
                copies: np.ndarray | None = None) -> QualityModel:
    """The peer: DCLM's fastText settings, trained once on all the training data (no search); `copies`
    repeats examples as our group balancing does (the ablation row)."""
    import fasttext

    path = tmp / "dclm_recipe.txt"
    reps = np.ones(len(texts), dtype=np.int64) if copies is None else copies
    # fastText reads in file order: mix the classes
    order = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(texts)), reps))
    write_examples(path, [texts[i] for i in order], np.asarray(labels, dtype=bool)[order], "hq", "cc")
    model = fasttext.train_supervised(input=str(path), lr=0.1, epoch=5, dim=100, wordNgrams=2, minCount=1,
                                      bucket=bucket, thread=MIN_THREADS, seed=seed, verbose=0)
    return QualityModel(model, {"positive_label": "hq"})


def held_out(model: QualityModel, tb_test: list[str], web_test: list[str], dclm_test: list[dict],
             keep_pct: float) -> dict[str, Metrics]:
    """Textbook-vs-web at 0.5, DCLM human labels at 0.5 and at the percentile cut keeping `keep_pct` %."""
    tw = model.evaluate(tb_test + web_test, [True] * len(tb_test) + [False] * len(web_test))
    test_texts, test_y = [r["text"] for r in dclm_test], [bool(r["label"]) for r in dclm_test]
    hd = model.evaluate(test_texts, test_y)
    # web pages score low against textbooks, so 0.5 is the wrong cut for them: cut by percentile instead,
    # keeping the share of documents that DCLM's training labels call high quality (as one keeps the
    # top X % of a corpus in production; no held-out label is used)
    hd_cut = model.evaluate(test_texts, test_y, percentile_cut(model.scores(test_texts), keep_pct))
    return {"textbook vs web": tw, "DCLM human labels": hd, f"DCLM, keep top {keep_pct:.0f} %": hd_cut}


def docs_per_s(model: QualityModel, corpus: list[str]) -> float:
    t0 = time.perf_counter()
    model.scores(corpus, batch_size=4096)
    return len(corpus) / (time.perf_counter() - t0)


def scoring_rates(models: dict[str, QualityModel], corpus: list[str], passes: int = 3) -> dict[str, float]:
    """Docs/s of each model's batched scoring: a warm-up call each, then `passes` interleaved passes, the best
    of each (the machine is shared: others only add time). Each used to be timed once, cold, ours first."""
    for model in models.values():
        model.scores(corpus[:256], batch_size=4096)
    best = dict.fromkeys(models, 0.0)
    for _ in range(passes):
        for name, model in models.items():
            best[name] = max(best[name], docs_per_s(model, corpus))
    return best


def summary(prefix: str, runs: list[tuple[dict[str, Metrics], float]]) -> str:
    """The five summary numbers, each the mean over the runs (one run per seed)."""
    rows = [(tw.f1, tw.roc_auc, cut.f1, hd.roc_auc, dps) for (tw, hd, cut), dps in
            ((tuple(sets.values()), dps) for sets, dps in runs)]
    f1, auc, dclm_f1, dclm_auc, dps = np.mean(rows, axis=0)
    return (f"{prefix}f1={f1:.4f} {prefix}auc={auc:.4f} {prefix}dclm_f1={dclm_f1:.4f} "
            f"{prefix}dclm_auc={dclm_auc:.4f} {prefix}docs_per_s={dps:.0f}")


def one_split(seed: int, bucket: int, pooled: bool) -> dict[str, tuple[dict[str, Metrics], float]]:
    """Split, train ours, the peer and the ablation, print the tables; each model's held-out metrics and
    docs/s."""
    rng = np.random.default_rng(seed)

    dclm = read(DCLM)
    order = rng.permutation(len(dclm))
    cut = int(0.7 * len(dclm))
    dclm_train, dclm_test = [dclm[i] for i in order[:cut]], [dclm[i] for i in order[cut:]]

    books = read(SCIPHI)
    # the same course appears in several variants: split by course name so test books are unseen
    course = [Path(b["path"]).stem for b in books]
    names = sorted(set(course))
    test_names = {names[i] for i in rng.permutation(len(names))[: max(2, len(names) // 4)]}
    tb_train = textbook_sections([b for b, c in zip(books, course, strict=True) if c not in test_names])
    tb_test = textbook_sections([b for b, c in zip(books, course, strict=True) if c in test_names])
    web = [r["text"] for r in read(C4) if len(r["text"].split()) >= 50]
    web_train, web_test = web[: int(0.7 * len(web))], web[int(0.7 * len(web)) :]

    texts = [r["text"] for r in dclm_train] + tb_train + web_train
    labels = [bool(r["label"]) for r in dclm_train] + [True] * len(tb_train) + [False] * len(web_train)
    groups = ["DCLM human labels"] * len(dclm_train) + ["textbook vs web"] * (len(tb_train) + len(web_train))
    print(f"\n## seed {seed}\ntrain: {len(texts)} docs (DCLM {len(dclm_train)}, textbook sections {len(tb_train)}, web {len(web_train)})"
          f"; held out: DCLM {len(dclm_test)}, textbook sections {len(tb_test)} "
          f"(courses {sorted(test_names)}), web {len(web_test)}")

    settings = TrainSettings(bucket=bucket, seed=seed)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        t0 = time.perf_counter()
        model, meta = train_classifier(texts, labels, Path(tmp) / "quality", settings, source="bench/quality.py",
                                       groups=None if pooled else groups)
        train_s = time.perf_counter() - t0
        model = QualityModel.load(Path(tmp) / "quality.bin")
        size_mb = (Path(tmp) / "quality.bin").stat().st_size / 1e6
        t0 = time.perf_counter()
        peer = dclm_recipe(texts, labels, bucket, seed, Path(tmp))
        peer_s = time.perf_counter() - t0
        balanced = dclm_recipe(texts, labels, bucket, seed, Path(tmp), balance_copies(np.asarray(groups)))
    print(f"\ntrained in {train_s:.1f}s (grid of {len(meta['grid'])}), model {size_mb:.0f} MB, sha256 "
          f"{meta['sha256'][:12]}; groups {meta['groups']}; chosen lr={meta['chosen']['lr']} "
          f"epoch={meta['chosen']['epoch']} (validation: mean group AUC {meta['validation']['select_auc']}, "
          f"pooled {meta['validation']['roc_auc']}); peer (DCLM recipe, lr 0.1, 5 epochs) in {peer_s:.1f}s")
    print("| lr | epochs | val F1 | val AUC, pooled | val AUC per group | mean of groups (selects) |\n"
          "|---:|---:|---:|---:|---|---:|")
    for g in meta["grid"]:
        per = " ".join(f"{k}: {v}" for k, v in g.get("group_auc", {}).items())
        print(f"| {g['lr']} | {g['epoch']} | {g.get('f1', 'NaN')} | {g.get('roc_auc', g.get('error'))} | {per} | "
              f"{g.get('select_auc', '')} |")

    keep_pct = 100.0 * float(np.mean([bool(r["label"]) for r in dclm_train]))
    results = {name: held_out(m, tb_test, web_test, dclm_test, keep_pct)
               for name, m in (("ours (grid-searched)", model), ("DCLM recipe", peer),
                               ("DCLM recipe, balanced (ablation)", balanced))}
    print("\n| model | held-out set | threshold | n | precision | recall | F1 | ROC AUC | confusion (tp fp tn fn) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name, sets in results.items():
        for set_name, m in sets.items():
            c = m.confusion
            print(f"| {name} | {set_name} | {m.threshold:.4g} | {m.n} | {m.precision} | {m.recall} | {m.f1} | "
                  f"{m.roc_auc} | {c['tp']} {c['fp']} {c['tn']} {c['fn']} |")

    corpus = (tb_test + web_test + [r["text"] for r in dclm_test]) * 5
    ours_dps, peer_dps = scoring_rates({"ours": model, "peer": peer}, corpus).values()
    words = sum(len(t.split()) for t in corpus) / len(corpus)
    print(f"\nscoring: {len(corpus):,} docs (mean {words:.0f} words), batched predict k=-1, best of 3 interleaved "
          f"passes after a warm-up: ours {ours_dps:,.0f} docs/s, DCLM recipe {peer_dps:,.0f} docs/s")
    dps = {"ours (grid-searched)": ours_dps, "DCLM recipe": peer_dps, "DCLM recipe, balanced (ablation)": float("nan")}
    return {name: (sets, dps[name]) for name, sets in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bucket", type=int, default=200_000)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: one data split and run each")
    ap.add_argument("--pooled", action="store_true",
                    help="ablation: no groups (no balancing, lr x epochs by the pooled validation AUC)")
    args = ap.parse_args()
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds: expects comma-separated integers, got {args.seeds!r}")
    skip_without(DATA_FILES)
    runs: dict[str, list[tuple[dict[str, Metrics], float]]] = {}
    for seed in seeds:
        for name, run in one_split(seed, args.bucket, args.pooled).items():
            runs.setdefault(name, []).append(run)
    if len(seeds) > 1:
        print(f"\nmean over seeds {seeds}:\n| model | DCLM human labels ROC AUC (mean +- sd) | per seed | "
              "textbook-vs-web AUC |\n|---|---:|---|---:|")
        for name, rs in runs.items():
            aucs = [sets["DCLM human labels"].roc_auc for sets, _ in rs]
            print(f"| {name} | {np.mean(aucs):.4f} +- {np.std(aucs):.4f} | {' '.join(f'{a:.4f}' for a in aucs)} | "
                  f"{np.mean([sets['textbook vs web'].roc_auc for sets, _ in rs]):.4f} |")
    print(summary("", runs["ours (grid-searched)"]) + " " + summary("dclm_recipe_", runs["DCLM recipe"]))


if __name__ == "__main__":
    main()

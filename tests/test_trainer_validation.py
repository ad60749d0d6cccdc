"""Validation loss during training: held-out data, logging, exact resume, DDP/FSDP2, clear errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from trainer_testlib import (
    VOCAB,
    hub_dataset,
    one_torch_thread,
    tiny_overrides,
    wiki_and_books,
    wiki_texts,
    write_hub_folder,
)

from trainer import checkpoint
from trainer.config import ConfigError, _set_dotted, load_config
from trainer.data import BatchPlan, DataError, TokenStream, get_batch
from trainer.distributed import DistInfo
from trainer.train import build_sampler, dataset_dir, stale_datasets, train, val_dir
from trainer.validate import window_starts

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_and_books(tmp_path_factory.mktemp("val"), shared_data)


def overrides(corpus, run: Path, holdouts=({"holdout_fraction": 0.1},), sources=None, **extra) -> dict:
    """tiny_overrides with a validation set per dataset (`holdouts`, one dict of fields per source)."""
    sources = sources or [(corpus["wiki"], 1.0)]
    cfg = tiny_overrides(run, corpus["root"] / "cache", corpus["tok"], sources,
                         **{"train.eval_interval": 2, "train.eval_tokens": 160, **extra})
    for ds, fields in zip(cfg["data.datasets"], holdouts, strict=True):
        ds.update(fields)
    return cfg


def mixed(corpus, run: Path, **extra) -> dict:
    return overrides(corpus, run, ({"holdout_tokens": 3000}, {"holdout_fraction": 0.1}),
                     [(corpus["books"], 0.8), (corpus["wiki"], 0.2)], **extra)


def ngrams(tokens: np.ndarray, n: int = 16) -> set[bytes]:
    return {tokens[i:i + n].tobytes() for i in range(len(tokens) - n + 1)}


def test_window_starts_spread_whole_windows_over_the_set():
    assert window_starts(100, 10, 30).tolist() == [0, 33, 66]
    assert window_starts(100, 10, 10**6).tolist() == list(range(0, 89, 11))  # all 9 that fit; the last ends at 99
    assert window_starts(11, 10, 10**6).tolist() == window_starts(50, 10, 5).tolist() == [0]


def test_held_out_documents_never_appear_in_training_batches(corpus, tmp_path):
    """Two epochs of the training batches read no token sequence that only the held-out documents have."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from trainer.data import doc_hash

    cfg = load_config(None, overrides(corpus, tmp_path / "run"))
    sampler, _ = build_sampler(cfg, VOCAB, DistInfo(), progress=False)
    tok = Tokenizer.from_file(str(corpus["tok"]))
    texts = [t for f in sorted((corpus["wiki"] / "data").glob("*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    grams = {True: set(), False: set()}
    for t in texts:  # held out: the lowest 10% of text hashes
        grams[doc_hash(t) < 0.1 * 2**64] |= ngrams(np.array(tok.encode(t, add_special_tokens=False).ids, dtype=np.int64))
    only_held = grams[True] - grams[False]
    assert len(only_held) > 5000  # the test has teeth: most held-out text is found nowhere else
    plan = BatchPlan(8, 4)
    seen = set()
    for step in range(2 * sampler.rows[0] // 8 + 1):
        for micro in range(plan.accum_steps):
            for row in get_batch(sampler, plan, step, micro):
                seen |= ngrams(row)
    leaked = seen & only_held
    assert len(seen) > len(only_held) and not leaked, f"{len(leaked)} held-out 16-grams in training batches"


def test_val_loss_is_logged_at_the_interval_and_at_the_end(corpus, tmp_path, capsys, monkeypatch):
    scalars: list[tuple[str, float, int]] = []

    class Writer:  # TensorBoard is optional: record what the run would write to it
        def __init__(self, *args, **kwargs):
            pass

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    run = tmp_path / "run"
    result = train(load_config(None, mixed(corpus, run, **{"train.max_steps": 7, "train.eval_interval": 3,
                                                              "log.plot": True, "log.tensorboard": True})))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 8))
    val = {r["step"]: r for r in records if "val_loss" in r}
    assert sorted(val) == [3, 6, 7] and result.val_losses == {s: r["val_loss"] for s, r in val.items()}
    last = val[7]
    assert last["val_loss"] == pytest.approx(0.8 * last["val_loss/books"] + 0.2 * last["val_loss/wiki"])
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
    assert val[3]["val_loss"] > last["val_loss"] and last["val_loss"] < math.log(VOCAB) - 0.5

    # the same number from the saved weights, the plain full-logits loss and the windows read afresh
    cfg = load_config(None, mixed(corpus, run, **{"train.eval_tokens": 160}))
    model = checkpoint.load_model(run, loss_chunk_size=0)
    for i, name in enumerate(["books", "wiki"]):
        stream = TokenStream(dataset_dir(cfg, i), held_out=True)
        starts = window_starts(len(stream), 32, 160)
        assert len(starts) == 5
        rows = torch.stack([torch.from_numpy(stream.read(int(s), 33)) for s in starts])
        with torch.no_grad():
            logits = model(rows[:, :-1])
        expected = F.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1)).item()
        assert last[f"val_loss/{name}"] == pytest.approx(expected, abs=1e-5)

    out = capsys.readouterr().out
    assert "validation every 3 steps and at the last: books 160 tokens, wiki 160 tokens" in out
    assert f"step      7/7 | val_loss {last['val_loss']:.4f} | val_ppl" in out
    assert f"loss {records[-1]['loss']:.4f} | val {last['val_loss']:.4f} |" in out
    assert (run / "loss.png").stat().st_size > 5000
    tags = {(tag, step) for tag, _, step in scalars}
    assert {("val/loss", 3), ("val/ppl", 6), ("val/loss/books", 7), ("val/loss/wiki", 7), ("train/loss", 1)} <= tags
    assert not any(tag.startswith("train/val") for tag, _ in tags)


def test_evaluation_changes_no_training_step(corpus, tmp_path, monkeypatch):
    """Same losses, weights and RNG state, bit for bit, with evaluation every step as with none, even for a
    model whose forward draws random numbers (as dropout would)."""
    from trainer.model import Phi

    forward = Phi.forward

    def drawing(self, *args, **kwargs):
        torch.rand(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Phi, "forward", drawing)
    quiet = train(load_config(None, mixed(corpus, tmp_path / "a", **{"train.max_steps": 4, "train.eval_interval": 0})))
    loud = train(load_config(None, mixed(corpus, tmp_path / "b", **{"train.max_steps": 4, "train.eval_interval": 1,
                                                                      "checkpoint.every": 1})))
    assert quiet.losses == loud.losses and sorted(loud.val_losses) == [1, 2, 3, 4] and not quiet.val_losses
    a, b = (checkpoint.resolve(tmp_path / run) for run in ("a", "b"))
    wa, wb = (torch.load(c / "model.pt", weights_only=True) for c in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (torch.load(c / "rng" / "rank-00000.pt", weights_only=True) for c in (a, b))
    assert torch.equal(ra["torch"], rb["torch"])


def test_a_resumed_run_gives_the_same_train_and_val_losses(corpus, tmp_path):
    full = train(load_config(None, mixed(corpus, tmp_path / "full", **{"train.max_steps": 8})))
    run = tmp_path / "run"
    # crash after step 5: the checkpoint at 4 is the last, steps 5 and its evaluation-free successors are redone
    first = train(load_config(None, mixed(corpus, run, **{"train.max_steps": 5, "checkpoint.every": 4,
                                                          "checkpoint.at_exit": False})))
    assert sorted(first.val_losses) == [2, 4, 5]  # 5 was that run's last step
    resumed = train(load_config(None, mixed(corpus, run, **{"train.max_steps": 8})))
    assert resumed.start_step == 4
    assert {**first.losses, **resumed.losses} == full.losses
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {r["step"]: r["val_loss"] for r in records if "val_loss" in r} == full.val_losses  # bit for bit
    assert sorted(full.val_losses) == [2, 4, 6, 8]


def test_fsdp2_evaluates_the_same_and_checkpoints_after_an_evaluation(corpus, tmp_path):
    """FSDP2 (one process on gloo): the same validation losses; a checkpoint saved right after an evaluation
    (which leaves the blocks' weights gathered) resumes to the same numbers."""
    single = train(load_config(None, mixed(corpus, tmp_path / "one", **{"train.max_steps": 4})))
    run, fsdp = tmp_path / "fsdp", {"distributed.strategy": "fsdp"}
    first = train(load_config(None, mixed(corpus, run, **{"train.max_steps": 3, "checkpoint.every": 2,
                                                          "checkpoint.at_exit": False, **fsdp})))
    resumed = train(load_config(None, mixed(corpus, run, **{"train.max_steps": 4, **fsdp})))
    assert resumed.start_step == 2 and sorted(resumed.val_losses) == [4]
    got = {2: first.val_losses[2], 4: resumed.val_losses[4]}
    assert got == pytest.approx(single.val_losses, abs=1e-5)
    assert {**first.losses, **resumed.losses} == pytest.approx(single.losses, abs=1e-5)


def test_a_published_validation_split(corpus, tmp_path, shared_data):
    """val_split: the publisher's split is the validation set, prepared beside the training split (which
    keeps all its documents); a changed validation file makes the data stale."""
    src = write_hub_folder(tmp_path / "src", wiki_texts(shared_data, 60), files=1)
    write_hub_folder(src, wiki_texts(shared_data, 80)[60:], files=1, split="validation")
    cfg = load_config(None, overrides(corpus, tmp_path / "run", ({"val_split": "validation"},), [(src, 1.0)],
                                      **{"train.max_steps": 2}))
    result = train(cfg)
    assert sorted(result.val_losses) == [2]
    val = TokenStream(val_dir(cfg, 0))
    assert val.index["split"] == "validation" and val.index["documents"] == 20
    assert TokenStream(dataset_dir(cfg, 0)).index["documents"] == 60 and "holdout" not in val.index
    model = checkpoint.load_model(tmp_path / "run", loss_chunk_size=0)
    rows = torch.stack([torch.from_numpy(val.read(int(s), 33)) for s in window_starts(len(val), 32, 160)])
    with torch.no_grad():
        expected = F.cross_entropy(model(rows[:, :-1]).reshape(-1, VOCAB), rows[:, 1:].reshape(-1)).item()
    assert result.val_losses[2] == pytest.approx(expected, abs=1e-5)
    assert stale_datasets(cfg) == []
    write_hub_folder(src, wiki_texts(shared_data, 90)[60:], files=1, split="validation")
    assert stale_datasets(cfg) == [0]


def test_another_holdout_is_other_training_data(corpus, tmp_path, capsys):
    """Changing the held-out set makes the prepared data stale, and a resume says its data differs."""
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2})))
    other = load_config(None, overrides(corpus, run, ({"holdout_fraction": 0.2},), **{"train.max_steps": 3}))
    assert stale_datasets(other) == [0]
    assert stale_datasets(load_config(None, overrides(corpus, run, ({},), **{"train.eval_interval": 0}))) == [0]
    capsys.readouterr()
    result = train(other)
    assert result.start_step == 2 and stale_datasets(other) == []
    assert "the data differs from the checkpoint's" in capsys.readouterr().out


def test_synthetic_data_trains_without_validation(tmp_path, capsys):
    cfg = load_config("tiny", {"run_dir": str(tmp_path), "data.synthetic": True, "data.datasets": [],
                               "data.seq_len": 16, "train.max_steps": 2, "train.eval_interval": 1,
                               "log.progress": False, "log.plot": False, "model.overrides": {"vocab_size": 256}})
    assert [r["step"] for r in train(cfg).history] == [1, 2]
    assert "validation off: synthetic data has no validation set" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "message"), [
    ({"train.eval_interval": -1}, r"^--set train.eval_interval: Input should be greater than or equal to 0$"),
    ({"train.eval_tokens": 0}, r"^--set train.eval_tokens: Input should be greater than or equal to 1$"),
    ({"train.eval_tokens": 100}, r"^--set train.eval_tokens: train.eval_tokens \(100\) is less than one sequence "
                                 r"\(data.seq_len 128\)$"),
    ({"data.datasets.0.holdout_fraction": 1}, r"^--set data.datasets.0.holdout_fraction: Input should be less than 1$"),
    ({"data.datasets.0.holdout_tokens": -5}, r"^--set data.datasets.0.holdout_tokens: Input should be greater than or "
                                             r"equal to 0$"),
    ({"data.datasets.0.holdout_fraction": 0.1, "data.datasets.0.val_split": "test"},
     r"^--set data.datasets.0.holdout_fraction, --set data.datasets.0.val_split: data.datasets.0: val_split, "
     r"holdout_fraction, holdout_tokens are set together: give one validation set$"),
    ({"data.datasets.0.val_split": "train", "data.datasets.0.holdout_tokens": 0},
     r"^--set data.datasets.0.val_split, .*: data.datasets.0: val_split 'train' is the training split"),
    ({"data.datasets.0.holdout_tokens": 0}, r"^\S*tiny.yaml: train.eval_interval is 50 but no dataset has a validation "
                                              r"set: give data.datasets.N a val_split, holdout_fraction or holdout_tokens$"),
])
def test_bad_validation_settings_name_the_field(change, message):
    assert load_config("tiny").data.datasets[0].holdout_tokens > 0  # the bundled tiny config holds some out
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", change)


@pytest.mark.parametrize(("holdout", "message"), [
    ({"holdout_fraction": 1e-9}, r"^data.datasets.0.holdout_fraction 1e-09: the validation set of .*wiki has 0 "
                                 r"tokens, less than one window of data.seq_len \+ 1 = 33; give it more$"),
    ({"holdout_tokens": 10**9}, r"^data.datasets.0.holdout_tokens 1e\+09: holds out [\d,]+ of .*wiki's [\d,]+ tokens, "
                                r"leaving 0 to train on \(need at least 65\); hold out less$"),
    ({"val_split": "validation"}, r"^data.datasets.0.val_split 'validation': no parquet files for split 'validation' "
                                  r"under .*wiki/data \(splits found: \['train'\]\)$"),
])
def test_a_validation_set_that_cannot_work_is_one_line_naming_the_field(corpus, tmp_path, holdout, message):
    with pytest.raises((ConfigError, DataError), match=message):
        train(load_config(None, overrides(corpus, tmp_path / "run", (holdout,))))
    assert not list(checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints"))


@pytest.mark.parametrize("layout", ["one parquet file", "files that name no split", "prepared before the check"])
def test_a_val_split_that_the_files_do_not_name_is_refused(corpus, tmp_path, shared_data, layout):
    """A single file or unnamed files (part-0.parquet) gave every split the same files: the validation set
    was a copy of the training data, and an earlier copy prepared so is not trusted either."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if layout == "one parquet file":
        source, found = tmp_path / "corpus.parquet", r"corpus.parquet is a single parquet file, which names no split"
    else:
        source, found = tmp_path / "unnamed", r"no parquet file under .*unnamed names a split \(found part-0.parquet\)"
        source.mkdir()
    pq.write_table(pa.table({"text": wiki_texts(shared_data, 40)}), source / "part-0.parquet"
                   if source.suffix != ".parquet" else source)
    cfg = load_config(None, overrides(corpus, tmp_path / "run", ({"val_split": "validation"},), [(source, 1.0)]))
    if layout == "prepared before the check":
        from trainer.data import prepare

        for folder, split in ((dataset_dir(cfg, 0), "train"), (val_dir(cfg, 0), "validation")):
            prepare(str(source), folder, str(corpus["tok"]), split=split, progress=False, num_workers=1)
    with pytest.raises(DataError, match=rf"^data.datasets.0.val_split 'validation': .*{found}.*holdout_fraction"):
        train(cfg)
    assert not val_dir(cfg, 0).exists() or layout == "prepared before the check"


@pytest.mark.parametrize(("first", "second", "message"), [
    ({"holdout_fraction": 0.1}, {}, r"datasets.1 trains on .*wiki split 'train', whose documents datasets.0 keeps "
                                    r"for validation \(holdout_fraction 0.1 of split 'train'\)"),
    ({}, {"holdout_tokens": 3000}, r"datasets.0 trains on .* datasets.1 keeps for validation \(holdout_tokens 3000"),
    ({"holdout_fraction": 0.1}, {"holdout_fraction": 0.2}, r"datasets.1 trains on .* \(holdout_fraction 0.1 of"),
    ({"val_split": "validation"}, {"split": "validation"}, r"datasets.1 trains on .*wiki split 'validation', whose "
                                                           r"documents datasets.0 keeps for validation \(val_split"),
])
def test_one_source_twice_never_trains_on_the_others_validation_set(corpus, tmp_path, first, second, message):
    """The same documents listed twice (here once by another spelling of the path): held out by one dataset,
    they reached training through the other."""
    twice = [(corpus["wiki"], 0.5), (corpus["wiki"] / ".." / corpus["wiki"].name, 0.5)]
    cfg = overrides(corpus, tmp_path / "run", (first, second), twice)
    cfg["data.datasets"][1]["name"] = "again"
    said = r"^--set data.datasets: data: " + message + r".*give both the same validation set$"
    with pytest.raises(ConfigError, match=said):
        load_config(None, cfg)
    same = overrides(corpus, tmp_path / "run", (first or second,) * 2, twice)
    same["data.datasets"][1]["name"] = "again"
    assert len(load_config(None, same).data.datasets) == 2  # both hold the same documents out


def _torchrun(args: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), NCCL_NVLS_ENABLE="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer", "train", "--no-progress", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_evaluate_as_one(corpus, tmp_path, strategy):
    """2 ranks on gloo split 5 windows per dataset 3 + 2 (padded to whole micro-batches of 2): the same
    validation losses as one process."""
    from trainer.cli import main

    # rank 1's second batch is padding only: its mean loss is NaN without chunking, and must count as nothing
    chunk = 0 if strategy == "ddp" else 128
    cfg = mixed(corpus, tmp_path / strategy, **{"train.max_steps": 3, "train.micro_batch": 2,
                                                "distributed.strategy": strategy, "model.loss_chunk_size": chunk})
    tree: dict = {}
    for k, v in cfg.items():
        _set_dotted(tree, k, v, "test")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    assert main(["prepare", "-c", str(tmp_path / "c.yaml")]) == 0
    _torchrun(["-c", str(tmp_path / "c.yaml")], tmp_path)
    records = [json.loads(x) for x in (tmp_path / strategy / "metrics.jsonl").read_text().splitlines()]
    two = {r["step"]: (r["val_loss/books"], r["val_loss/wiki"]) for r in records if "val_loss" in r}
    one = train(load_config(None, {**cfg, "run_dir": str(tmp_path / "one"), "distributed.strategy": "auto"}))
    assert sorted(two) == [2, 3]
    for step, (books, wiki) in two.items():
        rec = next(r for r in one.history if r["step"] == step)
        assert (books, wiki) == pytest.approx((rec["val_loss/books"], rec["val_loss/wiki"]), abs=1e-5)


def test_a_hub_sources_missing_val_split_is_found_before_any_split_is_tokenized(corpus, tmp_path, monkeypatch):
    """A Hub source's val_split was found missing only after its training split was tokenized (which replaced
    the prepared one): now it is checked once the snapshot is down, before any tokenizing."""
    from trainer.train import prepare_all

    with hub_dataset(corpus["wiki"], "tester/wiki", tmp_path / "hf-cache", monkeypatch) as endpoint:
        cfg = load_config(None, overrides(corpus, tmp_path / "run", ({"val_split": "validation"},),
                                          [("tester/wiki", 1.0)], **{"data.cache_dir": str(tmp_path / "cache")}))
        cfg.data.datasets[0].endpoint = endpoint
        with pytest.raises(DataError, match=r"^data.datasets.0.val_split 'validation': no parquet files for split"):
            prepare_all(cfg, progress=False)
    assert not dataset_dir(cfg, 0).exists()


def test_loss_plot_learning_rate_axis_starts_at_zero(tmp_path, monkeypatch):
    """A constant lr (phi-1.5's schedule) drawn on an autoscaled axis read 0.00096 ... 0.00104: a flat line
    that looked like noise. From 0, it is the schedule; the legend names it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.train import plot_metrics

    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps({"step": s, "tokens": 512 * s, "loss": 10 - s / 10, "lr": 1e-3}) + "\n"
                             for s in range(1, 21)))
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    assert plot_metrics(jsonl, tmp_path / "loss.png").stat().st_size > 5000
    loss_ax, lr_ax = drawn[0].axes
    assert lr_ax.get_ylim()[0] == 0 and lr_ax.get_ylim()[1] >= 1e-3
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train loss", "learning rate"]

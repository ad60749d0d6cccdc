"""trainer.train: the loss falls on real text, schedules, optimizer groups, precision options, NaN stop."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_testlib import (
    one_torch_thread,
    small_tokenizer,
    tiny_overrides,
    wiki_and_books,
    wiki_texts,
    write_hub_folder,
)

from trainer.config import ConfigError, load_config
from trainer.train import TrainingDiverged, lr_at, make_optimizer, model_config, train

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_and_books(tmp_path_factory.mktemp("loop"), shared_data)


def cfg_for(corpus, tmp_path, sources=None, **extra):
    sources = sources or [(corpus["wiki"], 1.0)]
    return load_config(None, tiny_overrides(tmp_path / "run", corpus["root"] / "cache", corpus["tok"], sources, **extra))


def test_loss_falls_on_a_real_mixed_corpus(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path, [(corpus["books"], 0.8), (corpus["wiki"], 0.2)],
                  **{"train.max_steps": 60, "log.plot": True, "checkpoint.every": 30, "checkpoint.export_hf": True,
                     "checkpoint.export_dtype": "float32"})
    result = train(cfg)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 60 and result.stop_reason == "done"
    assert abs(losses[0] - math.log(512)) < 0.3  # starts at chance over the 512 rows
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5  # and learns the text
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 61))
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "step_s"} <= set(records[0])
    assert records[-1]["tokens"] == 60 * 8 * 32
    assert (tmp_path / "run" / "loss.png").stat().st_size > 5000
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "latest", "step-00000030", "step-00000060"]
    from trainer.export import load_hf

    hf = load_hf(tmp_path / "run" / "hf")  # checkpoint.export_hf: an HF folder beside the checkpoints
    assert (tmp_path / "run" / "hf" / "tokenizer.json").is_file() and hf.config.vocab_size == 512


def test_schedules_are_functions_of_the_step(corpus, tmp_path):
    const = cfg_for(corpus, tmp_path)
    assert [lr_at(s, const) for s in (0, 5, 9)] == [3e-3] * 3  # the paper: constant, no warmup
    cos = cfg_for(corpus, tmp_path, **{"schedule.kind": "cosine", "schedule.warmup_steps": 2,
                                       "schedule.min_lr": 1e-4, "train.max_steps": 12})
    assert lr_at(0, cos) == pytest.approx(1.5e-3) and lr_at(1, cos) == pytest.approx(3e-3)
    assert lr_at(2, cos) == pytest.approx(3e-3) and lr_at(7, cos) == pytest.approx((3e-3 + 1e-4) / 2)
    assert lr_at(12, cos) == pytest.approx(1e-4) and lr_at(50, cos) == pytest.approx(1e-4)
    lin = cfg_for(corpus, tmp_path, **{"schedule.kind": "linear", "train.max_steps": 10})
    assert lr_at(5, lin) == pytest.approx(1.5e-3)


def test_no_weight_decay_on_biases_and_norms(corpus, tmp_path):
    from trainer.model import Phi

    cfg = cfg_for(corpus, tmp_path)
    model = Phi(model_config(cfg))
    opt = make_optimizer(model, cfg, "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(n.endswith("bias") or "layernorm" in n for n in no_decay)
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.layers.0.mlp.fc1.weight"} <= decay
    assert not any(n.endswith("bias") or "layernorm" in n for n in decay)
    assert len(decay) + len(no_decay) == len(names)
    assert opt.param_groups[0]["betas"] == (0.9, 0.98) and opt.param_groups[0]["eps"] == 1e-7


def test_memory_options_do_not_change_the_losses(corpus, tmp_path):
    base = train(cfg_for(corpus, tmp_path / "a", **{"train.max_steps": 3, "model.loss_chunk_size": 0}))
    opts = train(cfg_for(corpus, tmp_path / "b", **{"train.max_steps": 3, "model.loss_chunk_size": 48,
                                                    "model.activation_checkpointing": True}))
    for a, b in zip(base.history, opts.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_accumulation_matches_one_big_batch(corpus, tmp_path):
    accum = train(cfg_for(corpus, tmp_path / "a", **{"train.max_steps": 3, "train.micro_batch": 2}))
    whole = train(cfg_for(corpus, tmp_path / "b", **{"train.max_steps": 3, "train.micro_batch": 8}))
    for a, b in zip(accum.history, whole.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_bf16_options_train(corpus, tmp_path):
    for precision in ("bf16-mixed", "bf16"):
        result = train(cfg_for(corpus, tmp_path / precision, **{"train.max_steps": 3, "train.precision": precision}))
        assert all(math.isfinite(r["loss"]) for r in result.history)
        assert abs(result.history[0]["loss"] - math.log(512)) < 0.3


def test_pure_bf16_keeps_gains_and_biases_fp32_so_they_train(tmp_path):
    """At the paper's lr 2e-4 a bf16 LayerNorm gain (step 2^-7 near 1.0) would never move."""
    from trainer import distributed
    from trainer.data import Loader
    from trainer.train import Trainer

    cfg = load_config(None, {"run_dir": str(tmp_path / "run"), "model.name": "tiny", "model.overrides": {"vocab_size": 512},
                             "data.synthetic": True, "data.datasets": [], "data.seq_len": 32, "train.global_batch": 8,
                             "train.micro_batch": 8, "train.max_steps": 5, "train.precision": "bf16",
                             "train.device": "cpu", "log.progress": False,
                             "log.plot": False, "optim.lr": 2e-4})
    trainer = Trainer(cfg, distributed.setup("cpu"), False)
    dtypes = {n: p.dtype for n, p in trainer.model.named_parameters()}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    assert dtypes["model.final_layernorm.weight"] == dtypes["model.layers.0.mlp.fc1.bias"] == torch.float32
    before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    loader = Loader(trainer.sampler, trainer.plan, 0, "cpu")
    for step in range(5):
        trainer.train_step(step, loader, lambda: None)
    loader.close()
    moved = {n: (p.detach().float() != before[n]).float().mean().item() for n, p in trainer.model.named_parameters()}
    assert moved["model.final_layernorm.weight"] > 0.9 and moved["model.layers.0.input_layernorm.weight"] > 0.9


def test_nan_loss_stops_with_a_clear_message(corpus, tmp_path, monkeypatch):
    from trainer.model import Phi

    forward, calls = Phi.forward, []

    def poisoned(self, *args, **kwargs):  # the 5th micro-batch (step 3) goes bad, like an fp overflow
        calls.append(1)
        out = forward(self, *args, **kwargs)
        return out * float("nan") if len(calls) == 5 else out

    monkeypatch.setattr(Phi, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 3: loss is nan.*stopped before the update.*"
                                               r"Last good checkpoint: .*step-00000002.*optim.lr"):
        train(cfg_for(corpus, tmp_path, **{"checkpoint.every": 1}))
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000001", "step-00000002"]  # nothing written after the bad step


def test_time_budget_stops_with_a_checkpoint(corpus, tmp_path):
    result = train(cfg_for(corpus, tmp_path, **{"train.max_steps": 10_000, "train.time_budget_s": 0.001}))
    assert result.stop_reason == "time budget" and result.final_step == 1
    assert (tmp_path / "run" / "checkpoints" / "step-00000001" / "meta.json").is_file()


def test_synthetic_data_needs_no_dataset(tmp_path):
    cfg = load_config("tiny", {"run_dir": str(tmp_path), "data.synthetic": True, "data.datasets": [],
                               "data.seq_len": 16, "train.max_steps": 2, "log.progress": False, "log.plot": False,
                               "model.overrides": {"vocab_size": 256}})
    assert [r["step"] for r in train(cfg).history] == [1, 2]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train.lrr": 1}, r"train.lrr: unknown field"),
    ({"optim.lr": -1}, r"optim.lr: Input should be greater than 0"),
    ({"train.global_batch": 10, "train.micro_batch": 4}, r"global_batch \(10\) must be a multiple of micro_batch \(4\)"),
    ({"train.precision": "fp8"}, r"train.precision: Input should be 'bf16-mixed', 'bf16' or 'fp32'"),
    ({"data.datasets": []}, r"data.datasets is empty"),
    ({"data.datasets.0.weight": 0}, r"data.datasets.0.weight: Input should be greater than 0"),
    ({"data.datasets.3.weight": 1}, r"data.datasets.3: no list item 3"),
    ({"train.max_tokens": 1e6}, r"train.max_steps \(200\) and train.max_tokens \(1e\+06\) are both set; keep one: "
                                r"--set train.max_steps=null to train by tokens"),
    ({"train.precision": "bf16", "distributed.strategy": "fsdp"}, r"train.precision bf16 with distributed.strategy "
                                                                   r"fsdp: .* use bf16-mixed"),
])
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_bad_model_settings_are_reported(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"model.name: unknown model 'phi-9'"):
        model_config(cfg_for(corpus, tmp_path, **{"model.name": "phi-9"}))
    with pytest.raises(ConfigError, match=r"model.overrides: \['n_layer'\] are not PhiConfig fields"):
        model_config(cfg_for(corpus, tmp_path, **{"model.overrides": {"n_layer": 2}}))
    with pytest.raises(ConfigError, match=r"data.seq_len 512 exceeds the model's context 256"):
        model_config(cfg_for(corpus, tmp_path, **{"data.seq_len": 512}))


def test_config_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: tiny}\ntrain: {max_tokens: 1.0e+6, global_batch: 64, micro_batch: 8}\n"
                    "data: {seq_len: 64, datasets: [{source: x}]}\n")
    cfg = load_config(path, ["train.global_batch=32", "optim.betas=[0.9, 0.95]"])
    assert cfg.max_steps == -(-1_000_000 // (32 * 64)) and cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.datasets[0].cache_name == "x-train"
    path.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="train: Input should be a valid dictionary"):
        load_config(path)
    path.write_text("train: {max_steps: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"config file not found: nope.yaml \(bundled configs: demo-100m, phi-1.5, tiny\)"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config("tiny", ["train.max_steps"])
    for name in ("tiny", "demo-100m", "phi-1.5"):
        assert model_config(load_config(name)).vocab_size == 51200
    assert load_config("phi-1.5").max_steps == 35763  # 150B tokens / (2048 x 2048)


def test_changed_source_is_tokenized_again(corpus, tmp_path, shared_data):
    import os

    from trainer.data import index_is_current
    from trainer.train import dataset_dir, prepare_all, stale_parts

    src = write_hub_folder(tmp_path / "src", wiki_texts(shared_data, 40), files=1)
    cfg = load_config(None, tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(src, 1.0)]))
    first = prepare_all(cfg, progress=False, stale=stale_parts(cfg))[0]
    assert first["documents"] == 40 and index_is_current(dataset_dir(cfg, 0), str(src), corpus["tok"])
    shard = next(dataset_dir(cfg, 0).glob("shard-*.bin"))
    parquet = next((src / "data").glob("*.parquet"))
    os.utime(parquet, ns=(1, 1))  # touched, same bytes: re-hashed, not re-tokenized
    assert not index_is_current(dataset_dir(cfg, 0), str(src), corpus["tok"])
    mtime = shard.stat().st_mtime_ns
    assert prepare_all(cfg, progress=False, stale=stale_parts(cfg))[0]["key"] == first["key"]
    assert shard.stat().st_mtime_ns == mtime and index_is_current(dataset_dir(cfg, 0), str(src), corpus["tok"])
    write_hub_folder(src, wiki_texts(shared_data, 60), files=1)  # new content: tokenized again
    assert prepare_all(cfg, progress=False, stale=stale_parts(cfg))[0]["documents"] == 60


def test_start_up_checks_the_prepared_data_once(corpus, tmp_path, shared_data, monkeypatch):
    """Start-up loads the tokenizer and lists the source files once to find stale data, then prepares only
    what it found (a second check used to load and list everything again)."""
    import os
    from collections import Counter

    import trainer.data as data_mod
    import trainer.tokenizer as tokenizer_mod
    import trainer.train as train_mod
    from trainer.distributed import DistInfo

    src = write_hub_folder(tmp_path / "src", wiki_texts(shared_data, 40))
    cfg = load_config(None, tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(src, 1.0)]))
    train_mod.build_sampler(cfg, 512, DistInfo(), progress=False)
    calls: Counter[str] = Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(train_mod, "load_tokenizer", counted("check loads", train_mod.load_tokenizer))
    monkeypatch.setattr(tokenizer_mod, "load_tokenizer", counted("prepare loads", tokenizer_mod.load_tokenizer))
    monkeypatch.setattr(data_mod, "resolve_source", counted("listings", data_mod.resolve_source))
    train_mod.build_sampler(cfg, 512, DistInfo(), progress=False)  # current: one check, nothing prepared
    assert calls == {"check loads": 1, "listings": 1}
    calls.clear()
    for parquet in (src / "data").glob("*.parquet"):  # touched: stale, so prepared (re-hashed)
        os.utime(parquet)
    train_mod.build_sampler(cfg, 512, DistInfo(), progress=False)
    assert calls == {"check loads": 1, "prepare loads": 1, "listings": 2}  # one check, then prepare's own


def test_changed_column_or_tokenizer_is_tokenized_again(corpus, tmp_path):
    """The cache folder is named by source and split only: training start-up must not reuse ids made from
    another column or by another tokenizer (export would ship the new tokenizer with a model of the old ids)."""
    from trainer.data import DataError, TokenStream, prepare, read_index, tokenizer_fingerprint
    from trainer.distributed import DistInfo
    from trainer.tokenizer import load_tokenizer
    from trainer.train import build_sampler, dataset_dir

    other_tok = small_tokenizer(tmp_path / "other.json", [corpus["books"]])
    base = tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)])
    build_sampler(load_config(None, base), 512, DistInfo(), progress=False)
    folder = dataset_dir(load_config(None, base), 0)
    for change in ({"data.datasets.0.column": "id"}, {"data.tokenizer": str(other_tok)}):
        cfg = load_config(None, {**base, **change})
        with pytest.raises(DataError, match=r"tokenized data missing or out of date for \["):
            build_sampler(cfg, 512, DistInfo(rank=1, world_size=2), progress=False)
        build_sampler(cfg, 512, DistInfo(), progress=False)  # one process tokenizes again
        ds = cfg.data.datasets[0]
        expected = prepare(ds.source, tmp_path / "expected", cfg.data.tokenizer, column=ds.column,
                           num_workers=1, progress=False)
        index = read_index(folder)
        assert index["key"] == expected["key"] and index["column"] == ds.column
        assert index["key"]["tokenizer_sha256"] == tokenizer_fingerprint(load_tokenizer(cfg.data.tokenizer).to_str())
        got, want = TokenStream(folder), TokenStream(tmp_path / "expected")
        assert got.read(0, len(got)).tolist() == want.read(0, len(want)).tolist()


def test_a_tokenizer_out_of_reach_goes_by_the_one_the_data_records(corpus, tmp_path, monkeypatch):
    """Data prepared on a login node, training on an offline one: start if the data records the configured
    tokenizer (with a warning); refuse data made with another one, which would train on the wrong ids."""
    import trainer.train as train_mod
    from trainer.data import DataError
    from trainer.distributed import DistInfo

    base = tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)])
    train_mod.build_sampler(load_config(None, base), 512, DistInfo(), progress=False)

    def offline(spec):
        raise ValueError(f"cannot fetch GPT-2 BPE files for {spec} (offline?)")

    monkeypatch.setattr(train_mod, "load_tokenizer", offline)
    with pytest.warns(UserWarning, match="cannot load tokenizer .* going by the tokenizer the prepared data records"):
        assert train_mod.stale_datasets(load_config(None, base)) == []
    other = load_config(None, {**base, "data.tokenizer": "gpt2-codegen"})
    with pytest.warns(UserWarning), pytest.raises(DataError, match="tokenized with .*tok.json.*data.tokenizer is 'gpt2-codegen'"):
        train_mod.stale_datasets(other)


def test_another_source_under_the_same_dataset_name_is_tokenized_again(corpus, tmp_path):
    """The cache folder is named after the dataset's name: pointing it at another source must not reuse
    the old tokens (a Hub id used to count as current without a look)."""
    from trainer.data import read_index
    from trainer.distributed import DistInfo
    from trainer.train import build_sampler, dataset_dir, stale_datasets

    base = tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)])
    build_sampler(load_config(None, base), 512, DistInfo(), progress=False)
    moved = load_config(None, {**base, "data.datasets.0.source": str(corpus["books"])})
    assert moved.data.datasets[0].cache_name == load_config(None, base).data.datasets[0].cache_name
    assert stale_datasets(moved) == [0]
    build_sampler(moved, 512, DistInfo(), progress=False)
    assert read_index(dataset_dir(moved, 0))["source"] == str(corpus["books"])
    hub_id = load_config(None, {**base, "data.datasets.0.source": "someone/other-textbooks"})
    assert stale_datasets(hub_id) == [0]


def test_tensorboard_without_the_package_is_a_clear_error(corpus, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = cfg_for(corpus, tmp_path, **{"log.tensorboard": True, "train.max_steps": 1})
    with pytest.raises(ConfigError, match=r"log.tensorboard: needs the tensorboard package"):
        train(cfg)
    assert not Path(cfg.run_dir).exists()  # refused before the run folder (an empty metrics.jsonl) was made


def test_multi_process_runs_refuse_unprepared_data(corpus, tmp_path):
    """Rank 0 tokenizing for hours while the others wait would time them out: ask for `prepare` first."""
    from trainer.data import DataError
    from trainer.distributed import DistInfo
    from trainer.train import build_sampler

    cfg = load_config(None, tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)]))
    with pytest.raises(DataError, match=r"run `python -m trainer prepare -c CONFIG` before a multi-process run"):
        build_sampler(cfg, 512, DistInfo(rank=1, world_size=2), progress=False)
    assert not (tmp_path / "cache").exists()
    build_sampler(cfg, 512, DistInfo(), progress=False)  # one process prepares by itself
    build_sampler(cfg, 512, DistInfo(rank=1, world_size=2), progress=False)  # now every rank may read it


def test_a_resume_that_moves_the_lr_schedule_says_so(corpus, tmp_path, capsys):
    """Extending a finished cosine run restarts the decay from its middle: lr jumps from min_lr back up, which
    the run must say; a plain resume of the same config goes on along the same curve, silently."""
    cos = {"schedule.kind": "cosine", "schedule.min_lr": 1e-4, "checkpoint.every": 2}
    train(cfg_for(corpus, tmp_path, **cos, **{"train.max_steps": 4}))
    capsys.readouterr()
    train(cfg_for(corpus, tmp_path, **cos, **{"train.max_steps": 8}))
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: step 5 trains at lr 0.00155, where the run that saved" in out
    assert "would have gone on at 0.0001: the schedule's end (max_steps/max_tokens)" in out
    fresh = tmp_path / "again"
    train(cfg_for(corpus, fresh, **cos, **{"train.max_steps": 8, "train.time_budget_s": 1e-9}))
    train(cfg_for(corpus, fresh, **cos, **{"train.max_steps": 8}))
    assert "warning" not in capsys.readouterr().out


def test_settings_that_would_do_little_are_warned_about(corpus, tmp_path, capsys):
    """A warmup as long as the run never reaches optim.lr nor decays; a preset's 51,200 rows under a 438-token
    BPE leave most of the embedding and lm_head unused. Both train, with a line each saying so."""
    train(cfg_for(corpus, tmp_path, **{"schedule.kind": "cosine", "schedule.warmup_steps": 5, "train.max_steps": 2,
                                       "model.overrides": {}}))
    out = " ".join(capsys.readouterr().out.split())
    assert ("warning: schedule.warmup_steps 5 is not below the run's 2 steps: the lr never reaches optim.lr 0.003 "
            "and the cosine decay never starts") in out
    assert re.search(r"warning: data.tokenizer has 4\d\d tokens but the model 51,200 embedding rows, 99% of them "
                     r"never used: set model.overrides.vocab_size=448 \(a multiple of 64\)", out), out
    train(cfg_for(corpus, tmp_path / "at_the_end", **{"schedule.warmup_steps": 2, "train.max_steps": 2}))
    assert ("warning: schedule.warmup_steps 2 is not below the run's 2 steps: the lr reaches optim.lr 0.003 only at "
            "the last step\n") in capsys.readouterr().out
    train(cfg_for(corpus, tmp_path / "fits", **{"schedule.warmup_steps": 1, "train.max_steps": 2}))
    assert "warning" not in capsys.readouterr().out


def test_a_time_budget_counts_from_the_start_and_leaves_room_for_the_exit_checkpoint(monkeypatch):
    """A budget set to a machine's limit must end with the checkpoint written: it counts the start-up (data
    preparation, model building) and stops while the next step and the exit checkpoint still fit."""
    from trainer import train as train_mod

    clock = [0.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock[0])
    started = clock[0]
    clock[0] = 2.0  # start-up: 2 s of the 10
    with train_mod._StopFlag(10.0, started) as stop:
        clock[0] = 4.0  # step 1: 2 s
        assert not stop.wanted()  # 4 + 2 <= 10
        clock[0] = 6.0  # step 2, 2 s, then a 1 s checkpoint
        assert not stop.wanted()
        stop.saved(1.0)
        clock[0] = 7.0 + 1.0
        assert stop.wanted() and stop.reason == "time budget"  # 8 + 2 (slowest step) + 1 (checkpoint) > 10


@pytest.mark.parametrize(("name", "tflops"), [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                              ("NVIDIA H100 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                              ("NVIDIA GeForce RTX 4090", None)])
def test_mfu_is_measured_against_the_cards_own_peak(monkeypatch, name, tflops):
    """An H100 PCIe peaks at 756 bf16 TFLOP/s, not the SXM's 989: against that its MFU read 24% low."""
    from trainer import train as train_mod

    monkeypatch.setattr(train_mod.torch.cuda, "get_device_name", lambda device=None: name)
    assert train_mod.peak_flops("cuda:0", None) == (tflops and tflops * 1e12)
    assert train_mod.peak_flops("cuda:0", 100.0) == 100e12 and train_mod.peak_flops("cpu", None) is None


def test_a_tokenizer_out_of_reach_is_warned_about_with_trains_own_option(corpus, tmp_path, monkeypatch, capsys):
    """`train` takes no --tokenizer: its warning (data prepared elsewhere, the Hub offline) names data.tokenizer."""
    import trainer.train as train_mod
    from trainer.tokenizer import GIVE_TOKENIZER

    cfg = cfg_for(corpus, tmp_path, **{"train.max_steps": 1})
    train_mod.build_sampler(cfg, 512, train_mod.distributed.DistInfo(), progress=False)

    def offline(spec):
        raise ValueError(f"cannot fetch {spec} (no network): {GIVE_TOKENIZER} a folder holding GPT-2's BPE files")

    monkeypatch.setattr(train_mod, "load_tokenizer", offline)
    with pytest.warns(UserWarning, match="going by the tokenizer the prepared data records"):
        train(cfg)
    out = " ".join(capsys.readouterr().out.split())
    assert "(no network): set data.tokenizer to a folder holding GPT-2's BPE files): the checkpoints will not" in out
    assert "--tokenizer" not in out


def test_model_overrides_take_the_fields_types(corpus, tmp_path):
    """YAML 1.1 reads `layer_norm_eps: 1e-5` (no dot) as the string '1e-5', which reached torch.layer_norm as a
    TypeError traceback; a fractional layer count did likewise. Numbers in strings convert; the rest name the field."""
    from trainer.model import Phi

    cfg = load_config(None, tiny_overrides(tmp_path, tmp_path, corpus["tok"], [(corpus["wiki"], 1.0)]))
    cfg.model.overrides = {"vocab_size": 512, "layer_norm_eps": "1e-5", "num_hidden_layers": "1"}
    pc = model_config(cfg)
    assert pc.layer_norm_eps == 1e-5 and pc.num_hidden_layers == 1
    Phi(pc)(torch.zeros(1, 4, dtype=torch.long))
    cfg.model.overrides = {"num_hidden_layers": 2.5}
    with pytest.raises(ConfigError, match=r"^model.overrides.num_hidden_layers=2.5: Input should be a valid integer"):
        model_config(cfg)


def test_tokens_seen_go_on_from_the_checkpoints_count_under_another_seq_len(corpus, tmp_path):
    """A resume under a longer or shorter data.seq_len (context extension) counted every earlier sample at the new
    length: the tokens seen went backwards (2 steps of 8 x 32 = 512, then 384 after a step of 8 x 16)."""
    train(cfg_for(corpus, tmp_path, **{"train.max_steps": 2}))
    result = train(cfg_for(corpus, tmp_path, **{"train.max_steps": 3, "data.seq_len": 16}))
    assert [r["tokens"] for r in result.history] == [2 * 8 * 32 + 8 * 16]
    from trainer.checkpoint import read_meta

    assert read_meta(tmp_path / "run")["tokens"] == 640
    by_tokens = train(cfg_for(corpus, tmp_path, **{"train.max_steps": None, "train.max_tokens": 640 + 2 * 8 * 16,
                                                   "data.seq_len": 16}))
    assert by_tokens.final_step == 5 and by_tokens.history[-1]["tokens"] == 896  # the budget counts tokens too


def test_a_time_budget_leaves_room_for_an_exit_checkpoint_not_yet_timed(monkeypatch):
    """With `checkpoint.every: 0` no checkpoint had been timed, so none was allowed for: on an H100 a 110 s budget
    ended after 140 s. Until one is timed, the weights and AdamW's moments at CHECKPOINT_WRITE_GBPS are."""
    from trainer import train as train_mod
    from trainer.model import CONFIGS, Phi

    model = Phi(CONFIGS["tiny"])
    n = sum(p.numel() for p in model.parameters())
    assert train_mod.checkpoint_seconds(model) == pytest.approx(n * 12 / (train_mod.CHECKPOINT_WRITE_GBPS * 1e9))
    clock = [0.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock[0])
    with train_mod._StopFlag(10.0, 0.0, exit_s=3.0) as stop:
        clock[0] = 2.0
        assert not stop.wanted()  # 2 + 2 + 3 <= 10
        clock[0] = 4.0
        assert not stop.wanted()  # 4 + 2 + 3 <= 10
        clock[0] = 6.0
        assert stop.wanted()  # 6 + 2 + 3 > 10: stop now, while the untimed checkpoint still fits
        stop.saved(0.5)  # a timed one replaces the estimate
        assert stop.exit_s == 0.5


def test_a_time_budget_leaves_room_for_the_process_to_end(monkeypatch):
    """On an H200, phi-1.5's process ended 4 s after its exit checkpoint (compile workers, CUDA torn down): a
    scheduler's limit counts that too. The trainer gives it SHUTDOWN_S."""
    from trainer import train as train_mod

    clock = [0.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock[0])
    with train_mod._StopFlag(10.0, 0.0, exit_s=3.0, shutdown_s=1.0) as stop:
        clock[0] = 2.0
        assert not stop.wanted()  # 2 + 2 + 3 + 1 <= 10
        clock[0] = 4.0
        assert stop.wanted()  # 4 + 2 + 3 + 1 >= 10: without the shutdown this step would have run
    assert train_mod.SHUTDOWN_S >= 4.0



@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc for process start times")
@pytest.mark.parametrize("torchrun", [False, True])
def test_a_time_budget_counts_python_start_up_too(torchrun):
    """A machine's time limit counts from the launch: the 11 s of importing torch before the trainer's clock
    started were outside --time-budget. Under torchrun the launcher's start counts (its workers start later)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    probe = "import time; time.sleep({}); import trainer.cli as c; print(time.perf_counter() - c._STARTED)"
    if torchrun:  # the launcher spends the second, then starts the worker, which finds it by its parent pid
        worker = [sys.executable, "-c", probe.format(0)]
        cmd = [sys.executable, "-c", f"import subprocess, time; time.sleep(1); subprocess.run({worker!r}, check=True)"]
        env["TORCHELASTIC_RUN_ID"] = "run"
    else:
        cmd = [sys.executable, "-c", probe.format(1)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert float(out.split()[-1]) >= 0.9  # the second spent before the trainer's import is counted

"""trainer.checkpoint: atomic saves, and a run killed and resumed equals one never interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from trainer_testlib import one_torch_thread, tiny_overrides, wiki_corpus

from trainer import checkpoint
from trainer.config import load_config
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_corpus(tmp_path_factory.mktemp("ckpt"), shared_data)


def overrides(corpus, run_dir, **extra):
    return tiny_overrides(run_dir, corpus["root"] / "cache", corpus["tok"], [(corpus["wiki"], 1.0)], **extra)


def params_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint.resolve(run_dir) / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    result = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 12})))
    return run, result.losses


def test_resume_gives_the_losses_of_an_uninterrupted_run(corpus, tmp_path, uninterrupted):
    full_run, full = uninterrupted
    run = tmp_path / "run"
    # crash after step 7: checkpoints at 4 only (no exit save), so steps 5-7 are lost and redone
    first = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 7, "checkpoint.every": 4,
                                                              "checkpoint.at_exit": False})))
    assert checkpoint.find_latest(run / "checkpoints").name == "step-00000004"
    resumed = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 12})))
    assert resumed.start_step == 4
    assert {**first.losses, **resumed.losses} == full  # bitwise, every step
    assert all(torch.equal(a, b) for a, b in zip(params_of(run).values(), params_of(full_run).values(), strict=True))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the lost steps 5-7 were dropped from the log, not duplicated
    starts = [json.loads(x) for x in (run / "environment.jsonl").read_text().splitlines()]
    assert [e["start_step"] for e in starts] == [0, 4]  # one line per start: what each part ran on
    assert all(e["torch"] == torch.__version__ and e["attention"] == "sdpa" and e["world_size"] == 1
               and e["strategy"] == "none" for e in starts)


def start_training(cfg: dict, cfg_file: Path) -> subprocess.Popen:
    from trainer.config import _set_dotted

    tree: dict = {}
    for k, v in cfg.items():
        _set_dotted(tree, k, v, "test")
    cfg_file.write_text(yaml.safe_dump(tree))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", "-c", str(cfg_file), "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_process_resumes_exactly(corpus, tmp_path):
    """SIGKILL a real training process mid-run (possibly mid-save), then resume in this process."""
    run = tmp_path / "run"
    proc = start_training(overrides(corpus, run, **{"train.max_steps": 100_000, "checkpoint.every": 3}),
                          tmp_path / "c.yaml")
    deadline = time.time() + 120
    while checkpoint.find_latest(run / "checkpoints") is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    latest = checkpoint.find_latest(run / "checkpoints")
    assert latest is not None
    k = json.loads((latest / "meta.json").read_text())["step"]
    assert k % 3 == 0 and not list((run / "checkpoints").glob("*.tmp"))[1:]
    resumed = train(load_config(None, overrides(corpus, run, **{"train.max_steps": k + 3})))
    full = train(load_config(None, overrides(corpus, tmp_path / "full", **{"train.max_steps": k + 3})))
    assert resumed.start_step == k and resumed.losses == {s: full.losses[s] for s in range(k + 1, k + 4)}
    assert all(torch.equal(a, b) for a, b in zip(params_of(run).values(), params_of(tmp_path / "full").values(),
                                                 strict=True))


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint(corpus, tmp_path):
    run = tmp_path / "run"
    proc = start_training(overrides(corpus, run, **{"train.max_steps": 100_000, "checkpoint.every": 0}),
                          tmp_path / "c.yaml")
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM: stopped, resumable
    assert "SIGTERM: stopping after this step" in err and "stop=SIGTERM" in out
    steps = len(metrics.read_text().splitlines())
    assert checkpoint.read_meta(run)["step"] == steps >= 3


def test_incomplete_saves_are_ignored_and_old_ones_pruned(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 5, "checkpoint.every": 1,
                                                      "checkpoint.keep": 2})))
    root = run / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step-00000004", "step-00000005"]
    (root / "step-00000009.tmp").mkdir()  # a save that crashed before its rename
    (root / "step-00000008").mkdir()  # a folder without meta.json
    assert checkpoint.find_latest(root).name == "step-00000005"
    (root / "latest").unlink()
    assert checkpoint.find_latest(root).name == "step-00000005"
    meta = checkpoint.read_meta(run)
    assert meta["step"] == 5 and meta["format"] == "torch" and meta["model_config"]["vocab_size"] == 512
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.resolve(tmp_path / "elsewhere")


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    """A run restarted below a later branch's checkpoints (--resume from an earlier step) keeps its own
    newest ones: pruning by rank of step alone deleted the one `latest` had just been pointed at."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"

    def saved(step: int) -> list[str]:
        checkpoint.save(root, step, model, optimizer, {}, keep=2)
        return [p.name.removeprefix("step-0000000") for p in checkpoint.list_checkpoints(root)]

    assert [saved(s) for s in (3, 6, 9)][-1] == ["6", "9"]
    assert saved(4) == ["4", "6", "9"] and checkpoint.find_latest(root).name == "step-00000004"
    assert saved(5) == ["4", "5", "6", "9"]
    assert saved(6) == ["5", "6", "9"]  # the branch's step 6 is overwritten, its 9 stays until then


def test_a_fresh_start_refuses_another_runs_checkpoints(corpus, tmp_path):
    """resume=never beside an earlier run's checkpoints would mix the two runs, and a later auto-resume
    could continue the earlier one: it is refused, naming the folder, before anything is written."""
    run, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2})))
    config = (run / "config.yaml").read_text()
    fresh = {"train.max_steps": 1, "checkpoint.resume": "never"}
    with pytest.raises(checkpoint.CheckpointError, match=rf"resume is 'never' but {re.escape(str(root))} holds "
                                                         r"checkpoints of an earlier run \(newest step-00000002\)"):
        train(load_config(None, overrides(corpus, run, **fresh)))
    assert checkpoint.find_latest(root).name == "step-00000002" and (run / "config.yaml").read_text() == config
    assert train(load_config(None, overrides(corpus, tmp_path / "other", **fresh))).final_step == 1


def test_a_resume_takes_weight_decay_betas_and_eps_from_the_config(corpus, tmp_path, capsys):
    """Loading the optimizer's state restores the checkpoint's settings: the config's must win, and say so."""
    from trainer import distributed
    from trainer.train import Trainer

    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2})))
    changed = {"train.max_steps": 3, "optim.weight_decay": 0.0, "optim.betas": [0.9, 0.95], "optim.eps": 1e-8}
    trainer = Trainer(load_config(None, overrides(corpus, run, **changed)), distributed.setup("cpu"), False)
    assert trainer.start == 2
    decayed, plain = trainer.optimizer.param_groups
    assert (decayed["weight_decay"], tuple(decayed["betas"]), decayed["eps"]) == (0.0, (0.9, 0.95), 1e-8)
    assert (plain["weight_decay"], tuple(plain["betas"]), plain["eps"]) == (0.0, (0.9, 0.95), 1e-8)
    assert "optimizer settings from the config, not the checkpoint: weight_decay 0.1 -> 0.0" in capsys.readouterr().out


def test_checkpoint_of_another_model_is_refused(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 1})))
    other = overrides(corpus, run, **{"train.max_steps": 2, "model.overrides": {"vocab_size": 512,
                                                                                "num_hidden_layers": 3}})
    with pytest.raises(checkpoint.CheckpointError, match="does not fit the model"):
        train(load_config(None, other))


def test_fsdp2_sharded_checkpoint_resumes_exactly(corpus, tmp_path, uninterrupted):
    """FSDP2 (one process on gloo) writes a DCP checkpoint; resuming gives the same losses."""
    _, full = uninterrupted
    run = tmp_path / "run"
    fsdp = {"distributed.strategy": "fsdp"}
    first = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 4, **fsdp})))
    assert (checkpoint.resolve(run) / "dcp" / ".metadata").is_file()
    assert checkpoint.read_meta(run)["format"] == "dcp"
    resumed = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 6, **fsdp})))
    losses = {**first.losses, **resumed.losses}
    for s in range(1, 7):
        assert losses[s] == pytest.approx(full[s], abs=1e-5)
    model = checkpoint.load_model(run)  # a sharded checkpoint loads into a plain model for export/eval
    assert model.config.vocab_size == 512 and not model.training


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


@pytest.mark.parametrize("damage", ["no .metadata", "garbage .metadata", "truncated shard", "missing shard"])
def test_damaged_sharded_checkpoint_names_its_folder(tmp_path, damage):
    model = torch.nn.Linear(4, 4)
    ckpt = checkpoint.save(tmp_path, 1, model, torch.optim.AdamW(model.parameters()),
                           {"config": {}, "model_config": {}}, sharded=True)
    folder = ckpt / "dcp"
    shard = next(folder.glob("*.distcp"))
    if damage == "no .metadata":
        (folder / ".metadata").unlink()
    elif damage == "garbage .metadata":
        (folder / ".metadata").write_bytes(b"xx")
    elif damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:50])
    else:
        shard.unlink()
    fresh = torch.nn.Linear(4, 4)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(f"{folder}: the sharded checkpoint is damaged")):
        checkpoint.load(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()))


def test_sharded_checkpoint_of_another_shape_does_not_fit(tmp_path):
    model = torch.nn.Linear(4, 4)
    checkpoint.save(tmp_path, 1, model, torch.optim.AdamW(model.parameters()), {"config": {}, "model_config": {}},
                    sharded=True)
    other = torch.nn.Linear(4, 5)
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit the model/optimizer: Size mismatch"):
        checkpoint.load(tmp_path, other, torch.optim.AdamW(other.parameters()))


@pytest.mark.parametrize("optimizer", [True, False])
def test_sharded_checkpoint_of_a_bigger_model_does_not_load_into_a_smaller_one(tmp_path, optimizer):
    """DCP fills only the keys the model asks for: the checkpoint's extra layer must be refused, not dropped."""
    big = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    checkpoint.save(tmp_path, 1, big, torch.optim.AdamW(big.parameters()), {"config": {}, "model_config": {}},
                    sharded=True)
    small = torch.nn.Sequential(torch.nn.Linear(4, 4))
    opt = torch.optim.AdamW(small.parameters()) if optimizer else None
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit the model/optimizer: unexpected key.*model\.1\."):
        checkpoint.load(tmp_path, small, opt)


def test_fsdp2_checkpoint_of_more_layers_is_refused(corpus, tmp_path):
    run = tmp_path / "run"
    fsdp = {"distributed.strategy": "fsdp"}
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 1, **fsdp, "model.overrides": {
        "vocab_size": 512, "num_hidden_layers": 3}})))
    with pytest.raises(checkpoint.CheckpointError, match="does not fit the model"):
        train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2, **fsdp})))


def first_samples(trainer, step: int) -> list[int]:
    """The sample numbers that step `step` of this (one-process) trainer reads, in order."""
    return [g for micro in range(trainer.plan.accum_steps) for g in trainer.plan.samples(step, micro)]


def test_a_resume_under_another_global_batch_goes_on_from_the_samples_drawn(corpus, tmp_path):
    """4 steps of 8 drew samples 0..31: steps of 16 from there read 32..47, 48..63 (not 64.., which would
    never read 32..63), and the checkpoint records the samples drawn, not steps x the current batch."""
    from trainer import distributed
    from trainer.train import Trainer

    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 4})))
    assert checkpoint.read_meta(run)["samples"] == 32
    bigger = load_config(None, overrides(corpus, run, **{"train.max_steps": 6, "train.global_batch": 16}))
    trainer = Trainer(bigger, distributed.setup("cpu"), False)
    assert trainer.start == 4 and first_samples(trainer, 4) == list(range(32, 48))
    assert first_samples(trainer, 5) == list(range(48, 64))
    train(bigger)
    assert checkpoint.read_meta(run)["samples"] == 64
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] // 32 for r in records] == [8, 16, 24, 32, 48, 64]  # samples drawn x seq_len
    by_tokens = load_config(None, overrides(corpus, run, **{"train.max_steps": None, "train.max_tokens": 96 * 32}))
    assert train(by_tokens).final_step == 10  # 32 more samples to the token budget: 4 steps of 8


def test_the_lr_schedule_follows_the_token_budget_across_a_global_batch_change(corpus, tmp_path):
    """Under max_tokens the cosine decays over the samples drawn: after 10 of 20 steps of 8, steps of 16 go
    on from the middle of the curve and end where the trainer stops (step 15), not at 160 / 16 = 10 steps
    counted from step 0 (which put every later step at min_lr)."""
    from trainer.train import lr_at

    run = tmp_path / "run"
    budget = {"train.max_steps": None, "train.max_tokens": 20 * 8 * 32, "schedule.kind": "cosine",
              "schedule.min_lr": 1e-4, "checkpoint.every": 10}
    first = load_config(None, overrides(corpus, run, **budget))
    train(first)
    resumed = load_config(None, overrides(corpus, run, **budget, **{
        "train.global_batch": 16, "checkpoint.resume": str(run / "checkpoints" / "step-00000010")}))
    assert train(resumed).final_step == 15
    lr = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert lr[11] == pytest.approx(lr_at(10, first))  # the curve of the uninterrupted run at its sample 80
    assert lr[15] == pytest.approx(lr_at(18, first))  # sample 144: position 18 of 20 steps of 8
    assert lr[10] > lr[11] > lr[12] > lr[13] > lr[14] > lr[15] > 1e-4


def test_a_resume_under_another_seed_is_refused_unless_allowed(corpus, tmp_path):
    """The seed orders the data: resuming under another one silently replayed some samples and skipped others."""
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2})))
    config = (run / "config.yaml").read_text()
    reseeded = overrides(corpus, run, **{"train.max_steps": 3, "train.seed": 7})
    with pytest.raises(checkpoint.CheckpointError, match=r"train.seed is 7 but .*step-00000002 was trained with seed "
                                                         r"1337: .*set train.seed=1337, or "
                                                         r"checkpoint.allow_seed_change=true .* from sample 16"):
        train(load_config(None, reseeded))
    assert (run / "config.yaml").read_text() == config  # refused before anything was written
    assert checkpoint.read_meta(run)["data_seed"] == 1337
    allowed = train(load_config(None, {**reseeded, "checkpoint.allow_seed_change": True}))
    assert allowed.start_step == 2 and checkpoint.read_meta(run)["data_seed"] == 7


def test_a_checkpoint_without_the_data_position_resumes_where_its_config_left_off(corpus, tmp_path, uninterrupted):
    """Checkpoints written before meta.json recorded samples and data_seed: their config tells both."""
    from trainer import distributed
    from trainer.train import Trainer

    _, full = uninterrupted
    run = tmp_path / "run"
    first = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 4})))
    meta_file = checkpoint.resolve(run) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("samples", "data_seed")}))
    bigger = Trainer(load_config(None, overrides(corpus, run, **{"train.max_steps": 5, "train.global_batch": 16})),
                     distributed.setup("cpu"), False)
    assert first_samples(bigger, 4) == list(range(32, 48))
    resumed = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 12})))
    assert {**first.losses, **resumed.losses} == full


def test_a_branch_from_an_earlier_checkpoint_is_what_a_later_auto_resume_continues(corpus, tmp_path):
    """Restarted from step 2 of a run that had reached step 6 (after a loss spike, say) and killed before its
    first save, the branch was lost: `latest` still named step 6, so the rerun with the default resume (auto)
    went on with the abandoned steps 3-6, and metrics.jsonl, cut back to step 2 by the branch, jumped from the
    branch's step 3 to step 7."""
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 6, "checkpoint.every": 2,
                                                      "checkpoint.keep": 3})))
    branch = str(run / "checkpoints" / "step-00000002")
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 3, "checkpoint.resume": branch,
                                                      "checkpoint.at_exit": False})))  # killed: no save
    again = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 6})))
    assert again.start_step == 2
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_run_started_from_another_runs_checkpoint_goes_on_from_it_after_a_crash(corpus, tmp_path):
    """Resumed from another run's checkpoint and killed before its first save, the rerun started from scratch."""
    first, second = tmp_path / "first", tmp_path / "second"
    train(load_config(None, overrides(corpus, first, **{"train.max_steps": 2})))
    train(load_config(None, overrides(corpus, second, **{"train.max_steps": 3, "checkpoint.at_exit": False,
                                                         "checkpoint.resume": str(first)})))
    again = train(load_config(None, overrides(corpus, second, **{"train.max_steps": 4})))
    assert again.start_step == 2
    steps = [json.loads(x)["step"] for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4]


def test_a_fresh_start_forgets_the_checkpoint_an_earlier_start_resumed_from(corpus, tmp_path):
    """`latest` naming another run's checkpoint (a start that resumed from it and crashed) must not outlive a
    fresh start (resume: never) in the same folder: the fresh run's rerun after a crash would go on from it."""
    first, second = tmp_path / "first", tmp_path / "second"
    train(load_config(None, overrides(corpus, first, **{"train.max_steps": 2})))
    train(load_config(None, overrides(corpus, second, **{"train.max_steps": 3, "checkpoint.at_exit": False,
                                                         "checkpoint.resume": str(first)})))
    train(load_config(None, overrides(corpus, second, **{"train.max_steps": 1, "checkpoint.at_exit": False,
                                                         "checkpoint.resume": "never"})))
    assert train(load_config(None, overrides(corpus, second, **{"train.max_steps": 2}))).start_step == 0

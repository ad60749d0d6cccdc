"""distributed.timeout_minutes: the process group's timeout, which every `dist.init_process_group` of the trainer
takes. Under torch's default (NCCL: 10 minutes) a run whose rank 0 alone downloads train.init_from (1.4B
parameters from the Hub) for longer, the other ranks waiting, would end in a watchdog timeout that says nothing of
why or what to change. A wait past it now fails every rank with a TimeoutError naming the field; a rank that worked
past it and found a peer gone is told that one gave up waiting or crashed (a peer's crash is no timeout of its)."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("torch")

import test_h15_rank_errors as h15  # noqa: E402
import test_h33_init_from_rank0 as h33  # noqa: E402

from trainer import distributed  # noqa: E402
from trainer.config import ConfigError, load_config  # noqa: E402

BASE = {"data.synthetic": True, "train.max_steps": 1}


def test_the_default_is_30_minutes_and_a_set_value_is_kept() -> None:
    assert load_config(None, BASE).distributed.timeout_minutes == 30
    assert load_config(None, {**BASE, "distributed.timeout_minutes": 90}).distributed.timeout_minutes == 90


@pytest.mark.parametrize(("value", "problem"), [
    ("0", "greater than 0"), ("-5", "greater than 0"), ("20000", "less than or equal to 10080"),
    (".inf", "finite number"), ("soon", "valid number"), ("null", "valid number")])
def test_a_bad_timeout_is_refused_naming_the_field(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"^--set distributed\.timeout_minutes: .*{problem}"):
        load_config(None, ["data.synthetic=true", "train.max_steps=1", f"distributed.timeout_minutes={value}"])


def test_a_bad_timeout_in_a_file_names_its_line(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  synthetic: true\ntrain:\n  max_steps: 1\ndistributed:\n  timeout_minutes: 0\n")
    with pytest.raises(ConfigError, match=rf"^{config}:6: distributed\.timeout_minutes: .*greater than 0"):
        load_config(config)


def test_a_misspelt_timeout_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"unknown field \(did you mean distributed\.timeout_minutes\?\)"):
        load_config(None, {**BASE, "distributed.timeout": 60})


def _recording(monkeypatch: pytest.MonkeyPatch, forward: bool) -> list[dict]:
    """The kwargs of each `dist.init_process_group` call from now on; the call goes on to torch's where `forward`."""
    calls: list[dict] = []
    real = distributed.dist.init_process_group

    def record(*args: object, **kwargs: object) -> None:
        calls.append(kwargs)
        if forward:
            real(*args, **kwargs)

    monkeypatch.setattr(distributed.dist, "init_process_group", record)
    return calls


def test_torchruns_group_is_joined_under_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """`setup` under torchrun (WORLD_SIZE 2; the join itself recorded, not made)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    calls = _recording(monkeypatch, forward=False)
    try:
        distributed.setup("cpu", "gloo", 45)
    finally:
        distributed.teardown()
    assert [c["timeout"] for c in calls] == [timedelta(minutes=45)]


def test_a_one_process_fsdp_run_makes_its_group_under_the_timeout(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """FSDP2 on one process makes a group of one (`choose_strategy`): the config's value reaches it through
    `train`."""
    from trainer.train import train

    calls = _recording(monkeypatch, forward=True)
    overrides = {"run_dir": str(tmp_path / "run"), "model.overrides": {"vocab_size": 256}, "data.seq_len": 16,
                 "train.global_batch": 2, "train.micro_batch": 2, "train.device": "cpu", "log.plot": False,
                 "checkpoint.every": 0, "checkpoint.at_exit": False, "distributed.strategy": "fsdp",
                 "distributed.timeout_minutes": 7.5, **BASE}
    assert train(load_config(None, overrides), progress=False).final_step == 1
    assert [c["timeout"] for c in calls] == [timedelta(minutes=7.5)]


def test_a_wait_that_fails_before_the_timeout_keeps_torchs_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that crashed at once ("Connection closed by peer") is no timeout: its error is not renamed."""
    def closed(flag: bool) -> bool:
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(distributed, "_any_rank", closed)
    monkeypatch.setattr(distributed, "_timeout", timedelta(minutes=5))
    with pytest.raises(RuntimeError, match="^Connection closed by peer$"):
        now = distributed.time.monotonic()
        distributed._any_rank_in_time(None, began=now, waiting=now)


# rank 0's init_from load sleeps past the timeout before reading the weights (scenario "fails": a path that is not
# there), then marks folder/loaded; each rank's outcome as h15's OUTCOME_MAIN writes it
SLOW_INIT_FROM = '''
import json, os, sys, time
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    from trainer import pretrained
    from trainer import train as train_module
    from trainer.config import load_config
    cfg = load_config(None, json.loads((folder / "overrides.json").read_text()))
    load = pretrained.load_initial
    def slow(spec):
        time.sleep(cfg.distributed.timeout_minutes * 60 + 3)
        model = load(spec + ".missing" if name == "fails" else spec)
        (folder / "loaded").write_text(spec)
        return model
    pretrained.load_initial = slow
    return train_module.train(cfg, progress=False).final_step

''' + h15.OUTCOME_MAIN


def _slow_init_from(tmp_path: Path, scenario: str) -> tuple[Path, list[dict]]:
    """The 2-rank synthetic run of SLOW_INIT_FROM's `scenario` under a 3 s timeout from a tiny checkpoint: the
    checkpoint and each rank's outcome. Fails (not waiting for pytest's timeout) where the ranks hang."""
    ckpt, _ = h33._source(tmp_path / "source", seed=3)
    h15.synthetic_run(tmp_path, **{"train.init_from": str(ckpt), "distributed.timeout_minutes": 0.05})
    try:
        return ckpt, h15.two_ranks(scenario, tmp_path, SLOW_INIT_FROM, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung (killed after 60 s)")


def assert_timeouts_named(outcomes: list[dict]) -> None:
    """Rank 1 gave up waiting, rank 0 found it gone after its work: both TimeoutErrors naming the field."""
    assert [o.get("error") for o in outcomes] == ["TimeoutError", "TimeoutError"], outcomes
    assert outcomes[1]["message"].startswith("the ranks gave up waiting for one another past the process group's "
                                             "timeout (distributed.timeout_minutes 0.05): "), outcomes
    assert outcomes[0]["message"].startswith("another rank left while this one worked past the process group's "
                                             "timeout (distributed.timeout_minutes 0.05): "), outcomes
    assert all("--set distributed.timeout_minutes=60" in o["message"] for o in outcomes), outcomes


@pytest.mark.slow
def test_rank_0s_init_from_load_past_the_timeout_fails_every_rank_naming_the_field(tmp_path: Path) -> None:
    """2 gloo ranks under a 3 s timeout; rank 0 reads train.init_from for 6 s while rank 1 waits: rank 1 gives up
    at the timeout, rank 0 finds it gone after its load, and both end with a TimeoutError that names
    distributed.timeout_minutes (before: torch's own RuntimeErrors, and under NCCL a 10-minute watchdog abort)."""
    ckpt, outcomes = _slow_init_from(tmp_path, "train")
    assert_timeouts_named(outcomes)
    assert (tmp_path / "loaded").read_text() == str(ckpt)  # rank 0 went on to its wait after the slow load
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_rank_whose_own_work_failed_past_the_timeout_raises_its_own_error(tmp_path: Path) -> None:
    """Rank 0's slow init_from load then fails (a path not there) after rank 1 gave up waiting: rank 0 ends with its
    own InitError, the cause, not with "another rank left" (the TimeoutError hid it); rank 1 with the timeout."""
    ckpt, outcomes = _slow_init_from(tmp_path, "fails")
    assert [o.get("error") for o in outcomes] == ["InitError", "TimeoutError"], outcomes
    assert outcomes[0]["message"].startswith(f"train.init_from {ckpt}.missing: no such file or folder"), outcomes
    assert outcomes[1]["message"].startswith("the ranks gave up waiting for one another"), outcomes


# Both ranks run an every-rank shared_outcome fn (e.g. a resume's checkpoint read) for 4 s under a 3 s timeout:
# nobody waits for anybody. Then rank 1 dies hard (OOM killer, segfault: no Python error to send). Rank 0 meets
# "Connection closed by peer" at once, after waiting ~0 s.
CRASH_AFTER_LONG_WORK = '''
import json, os, sys, time
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    from trainer import distributed
    distributed.setup("cpu", "gloo", 0.05)
    def work():
        time.sleep(4)
        if rank == 1:
            (folder / "rank-1.json").write_text(json.dumps({"crashed": True}))
            os._exit(0)  # exit 0: torch.multiprocessing would SIGTERM rank 0 on a non-zero one
        return "done"
    began = time.monotonic()
    try:
        return distributed.shared_outcome(work, every=True)
    except Exception as e:
        waited = time.monotonic() - began - 4
        raise type(e)(f"{e} | cause: {e.__cause__!r} | waited after own work: {waited:.1f}s") from e

''' + h15.OUTCOME_MAIN


@pytest.mark.slow
def test_a_peer_crash_after_long_every_rank_work_is_not_called_a_timeout(tmp_path: Path) -> None:
    """No rank waited past the timeout: rank 0 is not told that the ranks gave up waiting (it was, before)."""
    outcomes = h15.two_ranks("crash", tmp_path, CRASH_AFTER_LONG_WORK, timeout=60)
    assert outcomes[1] == {"crashed": True}, outcomes
    assert outcomes[0]["message"].startswith("another rank left while this one worked past"), outcomes[0]
    assert "else it crashed (see its log)" in outcomes[0]["message"], outcomes[0]


def test_the_suggested_timeout_is_one_the_config_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past a 6000-minute timeout the message suggests --set distributed.timeout_minutes=12000: over the 10080 cap."""
    def timed_out(flag: bool) -> bool:
        raise RuntimeError("Timed out waiting 360000000ms for recv operation to complete")

    monkeypatch.setattr(distributed, "_any_rank", timed_out)
    monkeypatch.setattr(distributed, "_timeout", timedelta(minutes=6000))
    with pytest.raises(TimeoutError) as caught:
        long_ago = distributed.time.monotonic() - 6000 * 60 - 1
        distributed._any_rank_in_time(None, began=long_ago, waiting=long_ago)
    suggested = str(caught.value).rsplit("--set ", 1)[1]
    try:
        load_config(None, ["data.synthetic=true", "train.max_steps=1", suggested])
    except ConfigError as e:
        pytest.fail(f"the message suggests {suggested}, which is refused: {e}")

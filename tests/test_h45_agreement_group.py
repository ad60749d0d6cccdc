"""The ranks' agreements (`distributed.shared_outcome`, `from_rank_0`) wait on a gloo group of their own, made with
the process group under distributed.timeout_minutes: under NCCL a wait past the timeout (rank 0 alone reading
train.init_from or writing a checkpoint) ended in the watchdog's SIGABRT, naming no setting; on gloo the waiting rank
gets an error, which becomes the TimeoutError that names distributed.timeout_minutes. A GPU's own error in that wait
(out of memory) is not renamed a timeout."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import test_h15_rank_errors as h15  # noqa: E402
import test_h33_init_from_rank0 as h33  # noqa: E402
import test_h38_process_group_timeout as h38  # noqa: E402

from trainer import distributed  # noqa: E402

# Rank 0 works 6 s alone in `from_rank_0` under a 3 s timeout while rank 1 waits. Scenario "gloo": a gloo main group
# whose collectives, once failed, end the process with SIGABRT, as NCCL's watchdog does with one past the timeout (a
# wait on the main group never reaches Python); the agreement group is left as it is. "nccl": the real thing (2 GPUs).
AGREE_PAST_TIMEOUT = '''
import json, os, sys, time
import torch.multiprocessing as mp


def aborting(op):
    """Collective `op`, whose failure on the main group aborts the process (NCCL's watchdog past the timeout)."""
    import torch.distributed as dist
    def call(*args, group=None, **kwargs):
        try:
            return op(*args, group=group, **kwargs)
        except RuntimeError:
            if group is None or group is dist.group.WORLD:
                os.abort()
            raise
    return call


def scenario(name, folder, rank):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from trainer import distributed
    if name == "gloo":
        for op in ("all_reduce", "all_gather_object", "broadcast_object_list"):
            setattr(dist, op, aborting(getattr(dist, op)))
    distributed.setup("cpu" if name == "gloo" else "auto", "auto", 0.05)
    assert dist.get_backend() == ("gloo" if name == "gloo" else "nccl")
    def slow():
        time.sleep(6)
        return "weights"
    try:
        return distributed.from_rank_0(slow)
    finally:
        distributed.teardown()

''' + h15.OUTCOME_MAIN


def _agree_past_timeout(tmp_path: Path, scenario: str) -> list[dict]:
    """Each rank's outcome of AGREE_PAST_TIMEOUT's `scenario`; fails (not waiting for pytest's timeout) on a hang."""
    try:
        return h15.two_ranks(scenario, tmp_path, AGREE_PAST_TIMEOUT, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung (killed after 60 s)")


@pytest.mark.slow
def test_a_wait_past_the_timeout_is_ours_where_the_main_group_would_abort(tmp_path: Path) -> None:
    """The main group aborts the process on a failed collective, as NCCL's watchdog does: the agreement's wait is on
    the gloo agreement group, so both ranks end with the TimeoutError naming distributed.timeout_minutes (before:
    rank 1 waited on the main group and died of SIGABRT, and rank 0 with it)."""
    h38.assert_timeouts_named(_agree_past_timeout(tmp_path, "gloo"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_under_nccl_a_wait_past_the_timeout_is_ours(tmp_path: Path) -> None:
    h38.assert_timeouts_named(_agree_past_timeout(tmp_path, "nccl"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_under_nccl_rank_0s_slow_init_from_load_fails_every_rank_naming_the_field(tmp_path: Path) -> None:
    """The whole trainer on 2 GPUs (DDP, NCCL): rank 0 reads train.init_from for 6 s under a 3 s timeout."""
    ckpt, _ = h33._source(tmp_path / "source", seed=3)
    h15.synthetic_run(tmp_path, **{"train.init_from": str(ckpt), "distributed.timeout_minutes": 0.05,
                                   "train.device": "auto"})
    try:
        outcomes = h15.two_ranks("train", tmp_path, h38.SLOW_INIT_FROM, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung (killed after 120 s)")
    h38.assert_timeouts_named(outcomes)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_gpus_out_of_memory_in_the_wait_is_not_called_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA out-of-memory error from the agreement's collective, however late, stays what it is: the broad
    `except RuntimeError` made it "the ranks gave up waiting", and its advice a longer timeout."""
    def out_of_memory(flag: bool) -> bool:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    monkeypatch.setattr(distributed, "_any_rank", out_of_memory)
    monkeypatch.setattr(distributed, "_timeout", timedelta(minutes=5))
    long_ago = distributed.time.monotonic() - 5 * 60 - 1
    with pytest.raises(torch.OutOfMemoryError, match="^CUDA out of memory"):
        distributed._any_rank_in_time(None, began=long_ago, waiting=long_ago)

"""distributed.shared_outcome on a 2-process gloo group: a Ctrl-C (KeyboardInterrupt) or SystemExit that one rank meets
in `fn` must reach the other ranks as an error does (it skipped the collective, leaving them waiting in it: a hang
under NCCL, a gloo "connection closed" crash), and a call where no rank fails must not gather pickled errors (per
training step: an all_gather_object cost ~8 all-reduces on CPU gloo)."""

from __future__ import annotations

import pytest
import test_h15_rank_errors as h15

# one process per rank (torch.multiprocessing spawn); each writes what it ended with to OUT/rank-N.json
WORKER = '''
import json, os, sys
from datetime import timedelta
import torch.multiprocessing as mp


def scenario(name, rank):
    import torch.distributed as dist
    from trainer.distributed import shared_outcome

    def fail():
        if name == "interrupt":
            raise KeyboardInterrupt
        raise SystemExit(3)

    if name == "no_failure":  # nothing fails: the errors are never gathered
        def refuse(*args, **kwargs):
            raise AssertionError("all_gather_object called where no rank failed")
        dist.all_gather_object = refuse
        return [shared_outcome(lambda: rank * 10 + 1, every=True) for _ in range(3)]
    return shared_outcome(fail)  # rank 0 alone runs it


def worker(rank, port, name, folder):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist
    from pathlib import Path
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        outcome = {"ok": scenario(name, rank)}
    except BaseException as e:
        outcome = {"error": type(e).__name__, "every_rank": getattr(e, "every_rank", False)}
    (Path(folder) / f"rank-{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()

''' + h15.SPAWN_MAIN


@pytest.mark.slow
@pytest.mark.parametrize(("name", "error"), [("interrupt", "KeyboardInterrupt"), ("exit", "SystemExit")])
def test_an_interrupt_or_exit_on_rank_0_reaches_every_rank(tmp_path, name, error):
    """Rank 0's KeyboardInterrupt (a second Ctrl-C while it writes a checkpoint) skipped the gather: rank 1 crashed
    on the closed connection (or hung under NCCL). Now rank 1 raises it too, and stops as interrupted."""
    outcomes = h15.two_ranks(name, tmp_path, WORKER)
    assert outcomes == [{"error": error, "every_rank": True}] * 2, outcomes


@pytest.mark.slow
def test_no_failure_gathers_no_errors(tmp_path):
    """The per-step metrics write goes through shared_outcome: where no rank fails, one all-reduce of a flag decides,
    and each rank gets its own result."""
    outcomes = h15.two_ranks("no_failure", tmp_path, WORKER)
    assert outcomes == [{"ok": [1, 1, 1]}, {"ok": [11, 11, 11]}], outcomes

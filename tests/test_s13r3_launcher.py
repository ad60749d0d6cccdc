"""The 2-rank gloo launcher (test_h15's SPAWN_MAIN) gives its ranks TORCHELASTIC_USE_AGENT_STORE, as torchrun's
agent does, but not the TORCHELASTIC_RESTART_COUNT that torchrun sets beside it: torch 2.4 (pyproject's floor)
reads `os.environ["TORCHELASTIC_RESTART_COUNT"]` in env:// under the agent store (the attempt's key prefix), so
every rank of every 2-rank test failed there with a KeyError before joining."""

from __future__ import annotations

import pytest
import test_h15_rank_errors as h15

# each rank joins (env://), all-reduces its rank + 1 and reports the agent-store variables it was given
WORKER = '''
import json, os, sys
import torch.multiprocessing as mp


def worker(rank, port, name, folder):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from pathlib import Path
    dist.init_process_group("gloo")
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    env = {k: os.environ.get(k) for k in ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT")}
    (Path(folder) / f"rank-{rank}.json").write_text(json.dumps({"ok": {"env": env, "sum": t.item()}}))
    dist.destroy_process_group()

''' + h15.SPAWN_MAIN


@pytest.mark.slow
def test_the_ranks_get_the_restart_count_torchrun_sets_beside_the_agent_store(tmp_path):
    outcomes = h15.two_ranks("env", tmp_path, WORKER)
    env = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"}
    assert outcomes == [{"ok": {"env": env, "sum": 3.0}}] * 2, outcomes

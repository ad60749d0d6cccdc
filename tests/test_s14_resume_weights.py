"""2 gloo ranks (test_h15's launcher): a resume's weights that one rank's node cannot read, and an error raised
while another was handled, each stop every rank without leaving a DDP model alive past the process group."""

from __future__ import annotations

import json

import pytest
import test_h15_rank_errors as h15

# rank 1's node holds a damaged model.pt (the same path, the same meta.json): its read fails, rank 0's does not.
# ddp_metrics: rank 0's disk fills up at step 2, so metrics.jsonl's write fails (sent to rank 1 by shared_outcome)
# and then its close in Trainer.run's `finally` (the unflushed line): the error train() sees is the close's, whose
# __context__ (the write's) holds the _train_steps frame, and so the Trainer and its DDP model
WORKER = '''
import json, os, sys
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    from trainer import checkpoint, train as train_module
    from trainer.config import load_config
    if name == "weights_rank1" and rank == 1:
        def damaged(path, **kw):
            raise checkpoint.CheckpointError(f"{path}: damaged on rank 1's node")
        checkpoint.load_weights = damaged
    if name == "ddp_metrics":
        write, close = train_module.MetricsLog.write, train_module.MetricsLog.close
        def full_write(log, rec):
            if log.enabled and rec["step"] == 2:
                raise OSError(28, "No space left on device")
            write(log, rec)
        def full_close(log):
            close(log)
            if log.enabled:
                raise OSError(28, "No space left on device (close)")
        train_module.MetricsLog.write, train_module.MetricsLog.close = full_write, full_close
    alive = count_ddp_at_destroy()
    cfg = load_config(None, json.loads((folder / "overrides.json").read_text()))
    try:
        train_module.train(cfg, progress=False)
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e), "ddp_alive": alive}
    return {"ddp_alive": alive}

''' + h15.COUNT_DDP + h15.OUTCOME_MAIN


@pytest.mark.slow
def test_a_resumes_weights_rank_1_cannot_read_stop_every_rank(tmp_path):
    """Each rank read model.pt/optim.pt outside any shared outcome: rank 1 raised its error, rank 0 went on into the
    next collective (gloo's "connection closed"; a hang under NCCL)."""
    h15.synthetic_run(tmp_path, **{"checkpoint.every": 2})
    assert [o.get("ok") for o in h15.two_ranks("train", tmp_path)] == [2, 2]
    overrides = json.loads((tmp_path / "overrides.json").read_text())
    (tmp_path / "overrides.json").write_text(json.dumps({**overrides, "train.max_steps": 3}))
    outcomes = [o["ok"] for o in h15.two_ranks("weights_rank1", tmp_path, WORKER)]
    assert [o.get("error") for o in outcomes] == ["CheckpointError", "CheckpointError"], outcomes
    assert all("damaged on rank 1's node" in o["message"] for o in outcomes), outcomes


@pytest.mark.slow
def test_an_error_raised_while_another_was_handled_leaves_no_ddp_model_alive(tmp_path):
    """Only the raised error's frames were cleared: the write's error, the close's __context__, kept the Trainer's
    frames, so its DDP model outlived the group on rank 0 (the gloo deadlock `distributed.teardown` explains)."""
    h15.synthetic_run(tmp_path, **{"train.max_steps": 3})
    outcomes = [o["ok"] for o in h15.two_ranks("ddp_metrics", tmp_path, WORKER)]
    assert [o.get("error") for o in outcomes] == ["OSError", "OSError"], outcomes
    assert [o["ddp_alive"] for o in outcomes] == [[0], [0]], outcomes

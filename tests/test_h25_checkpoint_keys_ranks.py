"""Loading a sharded (DCP) checkpoint on 2 gloo ranks whose metadata one rank cannot read: each rank read it itself
for the unexpected-keys check, so that rank raised while the other went on into `dcp.load`'s collectives (waiting
for it: a hang under NCCL, a gloo "connection closed" crash here). Now every rank raises the same error."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import test_h15_rank_errors as h15  # noqa: E402

# scenario `metadata_fails_on_rank_N`: both ranks save a tiny model as a sharded checkpoint, then load it back, rank
# N's reads of its metadata failing with an I/O error
WORKER = '''
import errno, json, os, sys
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint import FileSystemReader
    from trainer import checkpoint
    from trainer.model import CONFIGS, Phi
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = Phi(CONFIGS["tiny"])
    ckpt = checkpoint.save(folder / "checkpoints", 1, model, torch.optim.AdamW(model.parameters()),
                           {"config": {}, "model_config": {}}, sharded=True)

    def unreadable(self, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(ckpt / "dcp" / ".metadata"))

    if rank == int(name.removeprefix("metadata_fails_on_rank_")):
        FileSystemReader.read_metadata = unreadable
    checkpoint.load(ckpt, model)
    return "loaded"
''' + h15.OUTCOME_MAIN


@pytest.mark.slow
@pytest.mark.parametrize("failing", [0, 1])
def test_a_metadata_read_failing_on_one_rank_fails_on_every_rank(tmp_path, failing):
    outcomes = h15.two_ranks(f"metadata_fails_on_rank_{failing}", tmp_path, WORKER, timeout=120)
    assert [o.get("error") for o in outcomes] == ["CheckpointError", "CheckpointError"], outcomes
    assert outcomes[0]["message"] == outcomes[1]["message"], outcomes
    assert "the sharded checkpoint is damaged or incomplete" in outcomes[0]["message"]
    assert "Input/output error" in outcomes[0]["message"]

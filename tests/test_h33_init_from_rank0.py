"""train.init_from is read by rank 0 alone and its weights broadcast to every rank (2 gloo ranks, test_h15's
launcher). Each rank loaded its own node's copy, and FSDP2 (unlike DDP's constructor) broadcasts nothing: nodes
holding other copies (a re-downloaded Hub revision, a half-updated folder) trained their ranks from other weights,
silently, and a node without a copy failed the run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")

import test_h15_rank_errors as h15  # noqa: E402

# scenario "train" (or "oom_rank1": rank 1 runs out of memory building the model): the synthetic run of folder/overrides.json updated by folder/node-N.json (init_from as rank N's
# node holds it); returns the final step, the init_from specs this rank loaded, and the sum of its model's full
# weights once wrapped (DDP or FSDP2).
WORKER = '''
import json, os, sys
import torch.multiprocessing as mp


def weights_sum(model):
    state = model.state_dict()
    full = [state[k].full_tensor() if hasattr(state[k], "full_tensor") else state[k] for k in sorted(state)]
    return sum(float(t.detach().double().sum()) for t in full)


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    from trainer import pretrained
    from trainer import train as train_module
    from trainer.config import load_config
    overrides = json.loads((folder / "overrides.json").read_text())
    overrides.update(json.loads((folder / f"node-{rank}.json").read_text()))
    read, wrapped, load, build = [], [], pretrained.load_initial, train_module.Trainer._build_optimizer
    def noted(spec):
        read.append(spec)
        return load(spec)
    def noting(self):
        build(self)
        wrapped.append(weights_sum(self.model))
    pretrained.load_initial, train_module.Trainer._build_optimizer = noted, noting
    if name == "oom_rank1" and rank == 1:
        def oom(cfg):
            raise torch.OutOfMemoryError("CUDA out of memory (rank 1, simulated)")
        train_module.Phi = oom
    final = train_module.train(load_config(None, overrides), progress=False).final_step
    return {"final_step": final, "read": read, "weights": wrapped}

''' + h15.OUTCOME_MAIN


def _source(folder: Path, seed: int) -> tuple[Path, float]:
    """A training checkpoint of the tiny model (vocab 256, as `h15.synthetic_run`) seeded by `seed`, and its
    weights' sum."""
    import torch

    from trainer import checkpoint
    from trainer.model import CONFIGS, Phi

    torch.manual_seed(seed)
    model = Phi(dataclasses.replace(CONFIGS["tiny"], vocab_size=256))
    meta = {"config": {"data": {"synthetic": True}}, "model_config": dataclasses.asdict(model.config)}
    ckpt = checkpoint.save(folder, 5, model, torch.optim.AdamW(model.parameters()), meta)
    return ckpt, sum(float(t.double().sum()) for t in model.state_dict().values())


def _run(folder: Path, strategy: str, rank0: str, rank1: str, scenario: str = "train") -> list[dict]:
    """The 2-step synthetic run under `strategy`, init_from being `rank0` on rank 0's node and `rank1` on rank 1's;
    each rank's outcome. Fails (not waiting for pytest's timeout) where the ranks hang."""
    h15.synthetic_run(folder, **{"train.init_from": rank0, "distributed.strategy": strategy})
    for rank, spec in enumerate((rank0, rank1)):
        (folder / f"node-{rank}.json").write_text(json.dumps({"train.init_from": spec}))
    try:
        return h15.two_ranks(scenario, folder, WORKER, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{strategy}: the ranks hung (killed after 90 s)")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
@pytest.mark.parametrize("node1", ["other copy", "no copy"])
def test_every_rank_starts_from_rank_0s_init_from_weights(tmp_path, strategy, node1):
    """Rank 1's node holds other weights at init_from's path, or none: rank 1 reads nothing and starts from rank
    0's weights. Before, FSDP2's rank 1 trained from its own copy, and a missing one failed both ranks."""
    ckpt, total = _source(tmp_path / "source", seed=3)
    other = _source(tmp_path / "other", seed=4)[0] if node1 == "other copy" else tmp_path / "elsewhere" / ckpt.name
    outcomes = _run(tmp_path, strategy, str(ckpt), str(other))
    assert [o.get("ok", o).get("final_step") for o in outcomes] == [2, 2], outcomes
    assert [o["ok"]["weights"] for o in outcomes] == [[pytest.approx(total, rel=1e-9)]] * 2, outcomes
    assert [o["ok"]["read"] for o in outcomes] == [[str(ckpt)], []], outcomes


@pytest.mark.slow
def test_init_from_that_rank_0_cannot_read_fails_every_rank_with_its_message(tmp_path):
    """Under FSDP2, rank 0's node lacks init_from (rank 1's holds it): both ranks end with rank 0's InitError,
    before any step, rank 1 having read nothing."""
    ckpt, _ = _source(tmp_path / "source", seed=3)
    lacking = tmp_path / "elsewhere" / ckpt.name
    outcomes = _run(tmp_path, "fsdp", str(lacking), str(ckpt))
    assert [o.get("error") for o in outcomes] == ["InitError", "InitError"], outcomes
    assert all(o["message"].startswith(f"train.init_from {lacking}: no such file or folder") for o in outcomes), outcomes
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_rank_failing_to_build_the_model_fails_every_rank_before_the_broadcast(tmp_path):
    """Rank 1 runs out of memory building the model: both ranks raise it. The build is an agreement, else rank 0
    waited in the weights' broadcast for a rank that had left (gloo: a closed connection; NCCL: a hang)."""
    ckpt, _ = _source(tmp_path / "source", seed=3)
    outcomes = _run(tmp_path, "fsdp", str(ckpt), str(ckpt), scenario="oom_rank1")
    assert [o.get("error") for o in outcomes] == ["OutOfMemoryError"] * 2, outcomes


def test_broadcast_module_is_refused_inside_an_agreement():
    """Its broadcasts are collectives: inside a `shared_outcome`'s fn they would pair with another rank's
    agreement (a hang); refused on one process too, where they would not, so that tests find it."""
    import torch

    from trainer import distributed

    module = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"distributed.broadcast_module inside a shared_outcome's fn"):
        distributed.shared_outcome(lambda: distributed.broadcast_module(module), every=True)
    distributed.broadcast_module(module)  # outside one, on one process: nothing to send

"""No collective inside another rank-agreement (`distributed.shared_outcome`'s fn), on 2 gloo ranks (test_h15's
launcher). train.init_from was loaded by every rank inside one `shared_outcome(every=True)` (rank 0 alone loads it
now, in `from_rank_0`'s agreement); a sharded (DCP) training checkpoint's load ran its own agreements and DCP's
collectives in there. A rank that failed before them (init_from missing on its node alone) sent its error through the
outer agreement's collectives while the others were in the inner ones: they paired off wrongly, and the ranks ended
with another error, or waited until the timeout."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")

import test_h15_rank_errors as h15  # noqa: E402

# scenario "train": the synthetic run of folder/overrides.json updated by folder/node-N.json (the paths as rank N's
# node holds them); returns the final step and the sum of the init_from weights this rank loaded.
# scenario "nested_rank_N": rank N fails in an every-rank agreement before the every-rank one nested in it.
WORKER = '''
import json, os, sys
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    if name.startswith("nested_rank_"):
        import torch.distributed as dist
        from trainer import distributed
        dist.init_process_group("gloo")

        def load():
            if rank == int(name.removeprefix("nested_rank_")):
                raise FileNotFoundError(f"rank {rank}: no such file")
            distributed.shared_outcome(lambda: None, every=True)
            return rank

        return distributed.shared_outcome(load, every=True)
    from trainer import pretrained
    from trainer import train as train_module
    from trainer.config import load_config
    overrides = json.loads((folder / "overrides.json").read_text())
    overrides.update(json.loads((folder / f"node-{rank}.json").read_text()))
    loaded, load = [], pretrained.load_initial
    def noted(spec):
        model = load(spec)
        loaded.append(sum(float(t.double().sum()) for t in model.state_dict().values()))
        return model
    pretrained.load_initial = noted
    return {"final_step": train_module.train(load_config(None, overrides), progress=False).final_step,
            "loaded": loaded}

''' + h15.OUTCOME_MAIN


def _source(folder: Path, sharded: bool) -> tuple[Path, float]:
    """A training checkpoint of the tiny model (vocab 256, as `h15.synthetic_run`) to start from, and its weights'
    sum."""
    import torch

    from trainer import checkpoint
    from trainer.model import CONFIGS, Phi

    torch.manual_seed(3)
    model = Phi(dataclasses.replace(CONFIGS["tiny"], vocab_size=256))
    meta = {"config": {"data": {"synthetic": True}}, "model_config": dataclasses.asdict(model.config)}
    ckpt = checkpoint.save(folder / "source", 5, model, torch.optim.AdamW(model.parameters()), meta, sharded=sharded)
    return ckpt, sum(float(t.double().sum()) for t in model.state_dict().values())


def _nodes(folder: Path, rank0: dict, rank1: dict) -> None:
    """Each rank's overrides: the paths as its node holds them."""
    for rank, overrides in enumerate((rank0, rank1)):
        (folder / f"node-{rank}.json").write_text(json.dumps(overrides))


def _two_ranks(name: str, folder: Path) -> list[dict]:
    """`h15.two_ranks`, failing (not waiting for pytest's timeout) where the ranks hang."""
    try:
        return h15.two_ranks(name, folder, WORKER, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scenario {name}: the ranks hung (killed after 90 s)")


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True], ids=["torch", "dcp"])
def test_an_init_from_checkpoint_that_rank_0s_node_lacks_fails_every_rank_with_its_error(tmp_path, sharded):
    """Rank 0's node holds no checkpoint at init_from's path: both ranks raise its InitError, before any step (rank
    0 alone reads init_from since test_h33; rank 1's node need not hold it)."""
    ckpt, _ = _source(tmp_path, sharded)
    h15.synthetic_run(tmp_path, **{"train.init_from": str(ckpt)})
    lacking = tmp_path / "elsewhere" / ckpt.name
    _nodes(tmp_path, {"train.init_from": str(lacking)}, {})
    outcomes = _two_ranks("train", tmp_path)
    assert [o.get("error") for o in outcomes] == ["InitError", "InitError"], outcomes
    assert all(o["message"].startswith(f"train.init_from {lacking}: no such file or folder") for o in outcomes), outcomes
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_rank_0_starts_from_a_sharded_init_from_checkpoint(tmp_path):
    """Rank 0 loads the sharded checkpoint alone (no collective inside the agreement): all its weights. Rank 1,
    whose node lacks it, reads nothing (test_h33: it gets rank 0's weights)."""
    ckpt, total = _source(tmp_path, sharded=True)
    h15.synthetic_run(tmp_path, **{"train.init_from": str(ckpt)})
    _nodes(tmp_path, {}, {"train.init_from": str(tmp_path / "elsewhere" / ckpt.name)})
    outcomes = _two_ranks("train", tmp_path)
    assert [o.get("ok", o).get("final_step") for o in outcomes] == [2, 2], outcomes
    assert [o["ok"]["loaded"] for o in outcomes] == [[pytest.approx(total)], []], outcomes


@pytest.mark.slow
@pytest.mark.parametrize("failing", [0, 1])
def test_a_failure_before_a_nested_agreement_is_every_ranks(tmp_path, failing):
    """The nested `shared_outcome` runs its fn plainly: the outer one alone agrees, with the failing rank's error."""
    outcomes = _two_ranks(f"nested_rank_{failing}", tmp_path)
    assert outcomes == [{"error": "FileNotFoundError", "message": f"rank {failing}: no such file"}] * 2, outcomes


def test_collectives_inside_an_agreement_are_refused():
    """`from_rank_0`, `gathered`, `all_reduce_sum` and `barrier` are collectives: inside a `shared_outcome`'s fn they
    would pair with another rank's agreement; a rank-0-only `shared_outcome` there would be no barrier. Refused (on
    one process too, where they would not hang): a bug."""
    import torch

    from trainer import distributed

    calls = {"from_rank_0": lambda: distributed.from_rank_0(lambda: 1),
             "gathered": lambda: distributed.gathered(1),
             "all_reduce_sum": lambda: distributed.all_reduce_sum(torch.ones(1)),
             "barrier": distributed.barrier,
             "shared_outcome (rank 0 alone)": lambda: distributed.shared_outcome(lambda: 1)}
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=re.escape(f"distributed.{name} inside a shared_outcome's fn")):
            distributed.shared_outcome(call, every=True)
        call()  # outside one: as before
    assert distributed.shared_outcome(lambda: distributed.shared_outcome(lambda: 2, every=True)) == 2

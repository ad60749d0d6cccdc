"""A read of the training data failing on one rank mid-run stops every rank at that step with that rank's error:
it raised on that rank alone, which went into its error path while the others waited in the step's gradient
all-reduce (DDP) or weight all-gather (FSDP2), a hang until the process group's timeout. Also: a shard truncated
after start-up is a DataError naming it, not a SIGBUS that ends the process naming nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

import test_h15_rank_errors as h15  # noqa: E402
from trainer_testlib import tiny_overrides, wiki_corpus  # noqa: E402

# each rank runs `python -m trainer train` (cli.main: its exit code and stderr are the outcome) on its own copy of
# the prepared data (folder/cache-N: a node's own disk); at rank 1's first sample of step 2 (1-based), read by the
# loader's thread while step 1 trains, its shard fails: an I/O error (`eio`), or the file cut to nothing
# (`truncated`, a real read of it); `intact`: no failure there
WORKER = '''
import errno, json, os, sys
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import contextlib, io
    import torch
    torch.set_num_threads(1)
    from trainer import data
    from trainer.cli import main
    failure, strategy = name.split("-")
    original = data.MixtureSampler.sample

    def sample(self, g):
        if failure != "intact" and rank == 1 and g >= 8:  # train.global_batch 8: step 2's samples
            shard = self.streams[0].folder / self.streams[0].index["shards"][0]["file"]
            if failure == "eio":
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(shard))
            os.truncate(shard, 0)
        return original(self, g)

    data.MixtureSampler.sample = sample
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "-c", str(folder / "c.json"), "--set", f"data.cache_dir={folder}/cache-{rank}",
                     "--set", f"distributed.strategy={strategy}"])
    return {"code": code, "stderr": err.getvalue()}
''' + h15.OUTCOME_MAIN


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data) -> Path:
    """The tiny config's overrides (overrides.json) and its data prepared into cache-0, in one shard."""
    from trainer.config import load_config
    from trainer.train import prepare_all

    root = tmp_path_factory.mktemp("h25")
    corpus = wiki_corpus(root, shared_data)
    overrides = tiny_overrides(root / "run", root / "cache-0", corpus["tok"], [(corpus["wiki"], 1.0)],
                               **{"train.max_steps": 4})
    [index] = prepare_all(load_config(None, overrides), progress=False)
    assert len(index["shards"]) == 1  # the one the scenarios damage holds every sample
    (root / "overrides.json").write_text(json.dumps(overrides))
    return root


def _run(prepared: Path, folder: Path, name: str, cut: int = 0) -> tuple[list[dict], Path]:
    """Scenario `name` on 2 ranks in `folder`, each on its own copy of the prepared data, that of rank 1 with `cut`
    bytes cut off its shard before the start; the outcomes, and the shard file of rank 1's copy."""
    from trainer.config import _set_dotted
    from trainer.data import INDEX_NAME, read_index

    tree: dict = {}
    overrides = json.loads((prepared / "overrides.json").read_text()) | {"run_dir": str(folder / "run")}
    for key, value in overrides.items():
        _set_dotted(tree, key, value, "test")
    (folder / "c.json").write_text(json.dumps(tree))
    for rank in (0, 1):
        shutil.copytree(prepared / "cache-0", folder / f"cache-{rank}")
    [dataset] = [p for p in (folder / "cache-1").iterdir() if (p / INDEX_NAME).is_file()]
    shard = dataset / read_index(dataset)["shards"][0]["file"]
    os.truncate(shard, shard.stat().st_size - cut)
    # a few seconds' run: past 120 s it hangs (the ranks are killed, TimeoutExpired)
    return [o["ok"] for o in h15.two_ranks(name, folder, WORKER, timeout=120)], shard


def _one_error_line(outcomes: list[dict]) -> str:
    """The one `error:` line the ranks printed between them (rank 0: the error every rank raises alike)."""
    lines = [line for o in outcomes for line in o["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1, outcomes
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_read_failing_on_one_rank_stops_every_rank_at_that_step(prepared, tmp_path, strategy):
    outcomes, shard = _run(prepared, tmp_path, f"eio-{strategy}")
    assert [o["code"] for o in outcomes] == [2, 2], outcomes  # bad input, on every rank
    assert _one_error_line(outcomes) == (f"error: rank 1 of 2: step 2: reading the training data failed: [Errno 5] "
                                         f"Input/output error: '{shard}'")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1]  # stopped at step 2, before its update


@pytest.mark.slow
def test_a_shard_truncated_on_one_rank_after_start_up_is_named_on_every_rank(prepared, tmp_path):
    outcomes, shard = _run(prepared, tmp_path, "truncated-ddp")
    assert [o["code"] for o in outcomes] == [2, 2], outcomes
    assert _one_error_line(outcomes).startswith(f"error: rank 1 of 2: step 2: reading the training data failed: "
                                                f"{shard}: truncated to 0 bytes since it was opened")


@pytest.mark.slow
def test_a_shard_truncated_on_one_rank_before_start_up_is_refused_on_every_rank(prepared, tmp_path):
    """Each rank opens its node's copy of the data at start-up: rank 1 refused its truncated shard alone, while
    rank 0 went on into DDP's broadcast of the weights. The rank is named: its node's copy is to be prepared again."""
    outcomes, shard = _run(prepared, tmp_path, "intact-ddp", cut=2)
    assert [o["code"] for o in outcomes] == [2, 2], outcomes
    assert _one_error_line(outcomes).startswith(f"error: rank 1 of 2: {shard}: missing or truncated shard")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

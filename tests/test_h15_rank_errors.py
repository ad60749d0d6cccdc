"""Errors that one rank meets are raised on every rank of a 2-process gloo group: a refusal or write failure on
rank 0 alone left the other ranks waiting in the next collective (a hang under NCCL, a gloo "connection closed"
crash) or ending as if the run had succeeded. Also: an export replaces a stale generation_config.json."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the main of a worker script: `worker(rank, port, scenario, folder)` on 2 ranks, which join (env://) the
# store this process holds, as torchrun's workers join its agent's (TORCHELASTIC_USE_AGENT_STORE): a port picked
# free and closed here was free for anyone until rank 0 bound it, and two test runs at once could take the same one.
# TORCHELASTIC_RESTART_COUNT too, as torchrun sets it: torch 2.4 (pyproject's floor) reads it in env:// under the
# agent store, a KeyError on every rank without it.
# The ranks are forked from this process once it has imported torch and the trainer's modules: spawned, each rank
# imported them again after this process had (about 4 s of a 2-core machine per launch, most of each test's time),
# and finalized its interpreter at exit (~1 s), as this process did. The modules are the same either way; each rank
# still joins its own process group (this process holds only the store, which no rank touches but through its port).
# A forked rank ends with os._exit (multiprocessing's), skipping the interpreter's finalization that a torchrun rank
# goes through: `two_ranks(..., start="spawn")` keeps that for the tests about how ranks exit.
SPAWN_MAIN = '''

if __name__ == "__main__":
    from datetime import timedelta

    import torch.distributed as dist
    import trainer.cli, trainer.export, trainer.train  # noqa: F401 (loaded once, for the forked ranks)

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    os.environ.update(TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0")
    mp.start_processes(worker, args=(store.port, sys.argv[1], sys.argv[2]), nprocs=2,
                       start_method=os.environ.get("TWO_RANKS_START", "fork"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the ranks are done: no finalizing of torch and the store's thread here (~1 s); a rank's error
    # raised by start_processes above exits as usual, with its traceback
'''

# the main of a script whose `scenario(name, folder, rank)` runs on each rank: what it returned ({"ok": ...}) or
# raised ({"error": ..., "message": ...}) goes to folder/rank-N.json, which `two_ranks` reads
OUTCOME_MAIN = '''

def worker(rank, port, name, folder):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from pathlib import Path
    folder = Path(folder)
    try:
        outcome = {"ok": scenario(name, folder, rank)}
    except Exception as e:
        outcome = {"error": type(e).__name__, "message": str(e)}
    (folder / f"rank-{rank}.json").write_text(json.dumps(outcome))
''' + SPAWN_MAIN

# worker-script lines: `count_ddp_at_destroy()` returns a list that gets, as the process group is destroyed, how many
# DDP modules are alive then (one alive then frees the group from its Reducer: a gloo deadlock, distributed.teardown)
COUNT_DDP = '''

def count_ddp_at_destroy():
    import gc
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    destroy, alive = dist.destroy_process_group, []
    def counting(*args):
        alive.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
        destroy(*args)
    dist.destroy_process_group = counting
    return alive
'''

# one process per rank (torch.multiprocessing, no torchrun agent to kill the ranks left behind); each writes
# what it ended with to OUT/rank-N.json
WORKER = '''
import json, os, sys
import torch.multiprocessing as mp


def full_disk(rank, enabled):
    """OSError ENOSPC where `enabled(rank, *args)`: a disk that fills up under one rank only."""
    def fail(*args, **kwargs):
        if enabled(rank, *args):
            raise OSError(28, "No space left on device")
        return fail.original(*args, **kwargs)
    return fail


def scenario(name, folder, rank):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    if not name.startswith("train"):  # train joins the group itself (distributed.setup)
        dist.init_process_group("gloo")
    if name.startswith("train"):
        from trainer import train as train_module
        from trainer.config import load_config
        if name == "train_full_disk":  # rank 0 writes metrics.jsonl; its disk fills up at step 2
            fail = full_disk(rank, lambda rank, log, rec: log.enabled and rec["step"] == 2)
            fail.original, train_module.MetricsLog.write = train_module.MetricsLog.write, fail
        if name.endswith("_ddp_alive"):
            alive = count_ddp_at_destroy()
        cfg = load_config(None, json.loads((folder / "overrides.json").read_text()))
        if name.endswith("_ddp_alive"):
            try:
                train_module.train(cfg, progress=False)
            except Exception as e:
                return {"error": type(e).__name__, "ddp_alive": alive}
            return {"ddp_alive": alive}
        return train_module.train(cfg, progress=False).final_step
    from trainer.model import CONFIGS, Phi
    torch.manual_seed(0)
    model = Phi(CONFIGS["tiny"])
    if name == "export":
        from trainer.export import export_hf
        return str(export_hf(model, folder / "hf"))
    from trainer import checkpoint
    if name == "save_rank1_full":  # rank 1's own file (its RNG state) does not fit
        fail = full_disk(rank, lambda rank, obj, path: rank == 1 and "rng" in str(path))
        fail.original, checkpoint.torch.save = checkpoint.torch.save, fail
    optimizer = torch.optim.AdamW(model.parameters())
    return str(checkpoint.save(folder / "checkpoints", 1, model, optimizer, {}))
''' + COUNT_DDP + OUTCOME_MAIN


def two_ranks(name: str, folder: Path, worker: str = WORKER, timeout: float = 180, start: str = "fork"
              ) -> list[dict]:
    """Run scenario `name` of the script `worker` on 2 gloo ranks in `folder`; each rank's outcome ({"ok": ...} or
    {"error": ..., ...}), which the script writes to folder/rank-N.json. Past `timeout` seconds the script and its
    ranks are killed and `subprocess.TimeoutExpired` raised. `start`: how the ranks start (SPAWN_MAIN): forked
    from the script, or "spawn": fresh interpreters that finalize at exit, as torchrun's ranks do."""
    script = folder / "worker.py"
    script.write_text(worker)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TWO_RANKS_START=start)
    proc = run_as_group([sys.executable, str(script), name, str(folder)], folder, env, timeout)
    files = [folder / f"rank-{r}.json" for r in (0, 1)]
    assert all(f.is_file() for f in files), proc.stderr[-3000:]
    return [json.loads(f.read_text()) for f in files]


def run_as_group(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)` in a process group of its own, all of
    it killed on a timeout (or an interrupt): killing the script alone left its spawned ranks running, holding CPU
    and ports for the rest of the test session."""
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):  # an interrupt may come after the group has ended
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()  # reaps the script; its pipes close once every rank is gone
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def synthetic_run(folder: Path, **extra) -> None:
    """overrides.json of a 2-step DDP run on synthetic data into folder/run."""
    overrides = {"run_dir": str(folder / "run"), "model.name": "tiny", "model.overrides": {"vocab_size": 256},
                 "data.synthetic": True, "data.datasets": [], "data.seq_len": 16, "train.global_batch": 4,
                 "train.micro_batch": 2, "train.max_steps": 2, "train.device": "cpu", "log.progress": False,
                 "log.plot": False, "checkpoint.every": 0, **extra}
    (folder / "overrides.json").write_text(json.dumps(overrides))


@pytest.mark.slow
def test_a_stale_tokenizer_in_the_export_folder_is_refused_on_every_rank_before_training(tmp_path):
    """A run without a tokenizer, checkpoint.export_hf, run_dir/hf holding an earlier export's tokenizer.json: rank 0
    alone refused, after the whole run, and rank 1 ended as a success. Now both refuse at start-up."""
    (tmp_path / "run" / "hf").mkdir(parents=True)
    (tmp_path / "run" / "hf" / "tokenizer.json").write_text("{}")
    synthetic_run(tmp_path, **{"checkpoint.export_hf": True})
    outcomes = two_ranks("train", tmp_path)
    for outcome in outcomes:
        assert outcome.get("error") == "ValueError", outcomes
        assert "hf: holds tokenizer.json from before" in outcome["message"]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any step


@pytest.mark.slow
def test_export_hf_raises_its_refusal_on_every_rank(tmp_path):
    """The export at the end (tokenizer files may appear while a run trains): every rank raises rank 0's refusal."""
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\n")
    outcomes = two_ranks("export", tmp_path)
    assert [o.get("error") for o in outcomes] == ["ValueError", "ValueError"], outcomes
    assert all("holds merges.txt from before" in o["message"] for o in outcomes)
    assert not (tmp_path / "hf" / "model.safetensors").exists()


@pytest.mark.slow
def test_an_unreadable_metrics_log_is_refused_on_every_rank(tmp_path):
    """Rank 0 alone reads metrics.jsonl: its refusal left rank 1 in the first step's all-reduce. Spawned ranks, which
    finalize their interpreters at exit (where a DDP model outliving the group once deadlocked)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('garbage\n{"step": 1}\n')
    synthetic_run(tmp_path)
    outcomes = two_ranks("train", tmp_path, start="spawn")
    assert [o.get("error") for o in outcomes] == ["FileFormatError", "FileFormatError"], outcomes
    assert all("metrics.jsonl:1: not a JSON record" in o["message"] for o in outcomes)


@pytest.mark.parametrize("refused", [False, True], ids=["done", "refused"])
def test_no_ddp_module_outlives_the_process_group(tmp_path, refused):
    """The group's last reference freed from DDP's Reducer (pybind, the GIL held) joined gloo's worker threads while
    one waited for the GIL to free a finished collective's tensors: a deadlock at exit, about 1 run in 15 of the
    refusal above (pytorch#56297). The trainer now lets go of its model before the group goes, on a run that ends
    and on one refused by an error raised on every rank."""
    if refused:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "metrics.jsonl").write_text('garbage\n{"step": 1}\n')
    synthetic_run(tmp_path)
    outcomes = two_ranks("train_ddp_alive", tmp_path)
    expected = {"error": "FileFormatError", "ddp_alive": [0]} if refused else {"ddp_alive": [0]}
    assert [o["ok"] for o in outcomes] == [expected, expected], outcomes


@pytest.mark.slow
def test_a_checkpoint_rank_0_cannot_write_fails_on_every_rank(tmp_path):
    """Rank 0 makes the checkpoint's folder; failing (here the checkpoints root is a file) it left rank 1 in the
    barrier after it. Now rank 1 raises rank 0's error."""
    (tmp_path / "checkpoints").write_text("not a folder")
    outcomes = two_ranks("save", tmp_path)
    assert [o.get("error") for o in outcomes] == ["NotADirectoryError", "NotADirectoryError"], outcomes
    assert outcomes[0]["message"] == outcomes[1]["message"] and "checkpoints" in outcomes[0]["message"]


@pytest.mark.slow
def test_a_metrics_write_rank_0_fails_stops_every_rank(tmp_path):
    """Rank 0 alone writes metrics.jsonl: a full disk there at step 2 left rank 1 in step 3's all-reduce."""
    synthetic_run(tmp_path, **{"train.max_steps": 4})
    outcomes = two_ranks("train_full_disk", tmp_path)
    assert [o.get("error") for o in outcomes] == ["OSError", "OSError"], outcomes
    assert all("No space left on device" in o["message"] for o in outcomes)


@pytest.mark.slow
def test_a_checkpoint_file_rank_1_cannot_write_fails_on_every_rank(tmp_path):
    """Each rank writes its RNG state: rank 1 failing left rank 0 in the barrier after the writes, and no
    checkpoint is committed (no `latest`, no step folder) when one rank's part is missing."""
    outcomes = two_ranks("save_rank1_full", tmp_path)
    assert [o.get("error") for o in outcomes] == ["OSError", "OSError"], outcomes
    assert not (tmp_path / "checkpoints" / "latest").exists()
    assert not (tmp_path / "checkpoints" / "step-00000001").exists()


def test_an_export_replaces_a_stale_generation_config(tmp_path):
    """A generation_config.json left by another model (other eos id, sampling, length) steered transformers'
    `generate()` of the exported weights; the export now writes its own, as `save_pretrained` does."""
    transformers = pytest.importorskip("transformers")
    from trainer.export import export_hf
    from trainer.model import CONFIGS, Phi

    out = tmp_path / "hf"
    out.mkdir()
    stale = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.1, "max_length": 7}
    (out / "generation_config.json").write_text(json.dumps(stale))
    export_hf(Phi(CONFIGS["tiny"]), out)
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert (gen.eos_token_id, gen.bos_token_id) == (50256, 50256)  # config.json's
    assert not gen.do_sample and gen.temperature != 0.1 and gen.max_length != 7

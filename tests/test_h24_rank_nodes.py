"""2 gloo ranks (test_h15's launcher) whose nodes hold other files at the same paths.

train.init_from's tokenizer is checked against data.tokenizer by rank 0 alone, against the tokenizer it loaded and
sent to every rank (the one the run trains with). Each rank used to load data.tokenizer itself for that check: a
node whose copy at that path was another vocabulary refused the whole run, though the run's tokenizer (rank 0's)
was the weights' own.

checkpoint.resume naming a checkpoint that one node lacks: that rank raised alone, and rank 0 went on into the next
collective, to wait for it there (a hang under NCCL, gloo's "connection closed" once rank 1 was gone)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import test_h15_rank_errors as h15
from trainer_testlib import VOCAB, tiny_overrides, wiki_corpus

from trainer.config import load_config
from trainer.train import prepare_all

# one process per rank; `folder/node-N.json` holds overrides for rank N: the paths as its node holds them (another
# file, or none, at the same path); each rank notes the tokenizers it loaded itself
WORKER = '''
import json, os, sys
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    from trainer import tokenizer as tokenizer_module
    from trainer import train as train_module
    from trainer.config import load_config
    overrides = json.loads((folder / "overrides.json").read_text())
    overrides.update(json.loads((folder / f"node-{rank}.json").read_text()))
    loads, load = [], tokenizer_module.load_tokenizer
    def noted(spec="gpt2-codegen"):
        loads.append(str(spec))
        return load(spec)
    tokenizer_module.load_tokenizer = train_module.load_tokenizer = noted
    try:
        return {"final_step": train_module.train(load_config(None, overrides), progress=False).final_step,
                "loads": loads}
    except Exception as e:
        raise type(e)(f"{e} (loads: {loads})") from e

''' + h15.OUTCOME_MAIN


@pytest.fixture
def run(tmp_path, shared_data):
    """Prepared data, a BPE of another vocabulary, and an HF export (with the corpus's BPE) to start from."""
    import torch

    from trainer.export import export_hf
    from trainer.model import CONFIGS, Phi
    from trainer.tokenizer import load_tokenizer, train_tokenizer

    corpus = wiki_corpus(tmp_path / "corpus", shared_data)
    other = tmp_path / "other-tok.json"
    train_tokenizer(sorted((corpus["wiki"] / "data").glob("*.parquet")), vocab_size=300).save(str(other))
    torch.manual_seed(0)
    hf = export_hf(Phi(dataclasses.replace(CONFIGS["tiny"], vocab_size=VOCAB)), tmp_path / "hf",
                   load_tokenizer(corpus["tok"]), dtype="float32")
    overrides = tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)],
                               **{"train.max_steps": 1, "train.micro_batch": 4, "train.init_from": str(hf)})
    prepare_all(load_config(None, overrides), progress=False)
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    return {"folder": tmp_path, "tok": str(corpus["tok"]), "other": str(other), "hf": str(hf)}


def _nodes(run: dict, rank0: dict, rank1: dict) -> None:
    """Each rank's overrides: the paths as its node holds them."""
    for rank, overrides in enumerate((rank0, rank1)):
        (run["folder"] / f"node-{rank}.json").write_text(json.dumps(overrides))


@pytest.mark.slow
def test_another_vocabulary_on_rank_1s_node_alone_does_not_refuse_the_run(run):
    """Rank 1 loads no tokenizer: rank 0's, the weights' own, is the run's on every rank, which both train with."""
    _nodes(run, {"data.tokenizer": run["tok"]}, {"data.tokenizer": run["other"]})
    outcomes = h15.two_ranks("train", run["folder"], WORKER)
    assert outcomes[1] == {"ok": {"final_step": 1, "loads": []}}, outcomes
    assert outcomes[0]["ok"]["final_step"] == 1 and {run["tok"], run["hf"]} <= set(outcomes[0]["ok"]["loads"])


@pytest.mark.slow
def test_another_vocabulary_on_rank_0_refuses_on_every_rank(run):
    """The refusal of rank 0's check (the run's tokenizer is not the weights') is raised on every rank."""
    _nodes(run, {"data.tokenizer": run["other"]}, {"data.tokenizer": run["tok"]})
    outcomes = h15.two_ranks("train", run["folder"], WORKER)
    assert [o.get("error") for o in outcomes] == ["InitError", "InitError"], outcomes
    assert all(f"train.init_from {run['hf']} was trained with tokenizer" in o["message"] and
               "another vocabulary than data.tokenizer" in o["message"] for o in outcomes), outcomes


@pytest.mark.slow
def test_a_checkpoint_to_resume_that_rank_1s_node_lacks_stops_every_rank(run):
    """Both ranks raise rank 1's refusal, which names the path, before any step."""
    _nodes(run, {}, {})
    assert [o.get("ok", o)["final_step"] for o in h15.two_ranks("train", run["folder"], WORKER)] == [1, 1]
    step = run["folder"] / "run" / "checkpoints" / "step-00000001"
    elsewhere = run["folder"] / "elsewhere"
    _nodes(run, {"checkpoint.resume": str(step), "train.max_steps": 2},
           {"checkpoint.resume": str(elsewhere / step.name), "train.max_steps": 2})
    outcomes = h15.two_ranks("train", run["folder"], WORKER)
    assert [o.get("error") for o in outcomes] == ["CheckpointError", "CheckpointError"], outcomes
    assert all(o["message"].startswith(f"no checkpoint at {elsewhere / step.name}") for o in outcomes), outcomes


@pytest.mark.slow
def test_ranks_that_find_other_checkpoints_to_resume_are_refused(run):
    """Rank 1's node holds a later checkpoint at the path: the ranks went on from other steps, their collectives
    paired off wrongly (a hang or a crash at the end). Now every rank refuses, naming both, before any step."""
    _nodes(run, {"checkpoint.every": 1, "train.max_steps": 2}, {"checkpoint.every": 1, "train.max_steps": 2})
    assert [o.get("ok", o)["final_step"] for o in h15.two_ranks("train", run["folder"], WORKER)] == [2, 2]
    steps = [run["folder"] / "run" / "checkpoints" / f"step-0000000{n}" for n in (1, 2)]
    _nodes(run, {"checkpoint.resume": str(steps[0]), "train.max_steps": 3},
           {"checkpoint.resume": str(steps[1]), "train.max_steps": 3})
    outcomes = h15.two_ranks("train", run["folder"], WORKER)
    assert [o.get("error") for o in outcomes] == ["CheckpointError", "CheckpointError"], outcomes
    assert outcomes[0]["message"] == outcomes[1]["message"], outcomes
    assert outcomes[0]["message"].startswith(f"the ranks found other checkpoints to resume: rank 0 goes on from "
                                             f"{steps[0]} (step 1), rank 1 from {steps[1]} (step 2)"), outcomes
    assert not (run["folder"] / "run" / "checkpoints" / "step-00000003").exists()

"""2 gloo ranks (test_h15's launcher): a load of data.tokenizer or train.init_from that failed on one rank only was
raised there alone, the other rank going on into a collective (a gloo "connection closed" crash, a hang under NCCL);
and after a stop that one rank asked for (a SIGTERM it alone got), the ranks exited with different codes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import test_h15_rank_errors as h15
import yaml
from trainer_testlib import tiny_overrides, wiki_corpus

from trainer.config import _set_dotted

# one process per rank; each writes what it ended with to OUT/rank-N.json
WORKER = '''
import json, os, signal, sys
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    from trainer import train as train_module
    from trainer.config import load_config
    overrides = json.loads((folder / "overrides.json").read_text())
    if name == "tokenizer_rank1" and rank == 1:  # the tokenizer folder is on rank 0's node alone
        def missing(spec):
            raise FileNotFoundError(f"tokenizer not found: {spec} (no such file or folder)")
        train_module.load_tokenizer = missing
    if name == "init_from_rank0" and rank == 0:  # the Hub is out of reach from rank 0 (which alone reads init_from)
        from trainer import pretrained
        def unreachable(spec):
            raise pretrained.InitError(f"train.init_from {spec}: cannot download the Hub model: connection reset")
        pretrained.load_initial = unreachable
    if name == "sigterm_rank1":  # rank 1 alone gets a SIGTERM, during step 2; the CLI's exit code is the outcome
        if rank == 1:
            wanted = train_module._StopFlag.wanted
            def signalled(self):
                self.calls = getattr(self, "calls", 0) + 1
                if self.calls == 2:
                    self._handle(signal.SIGTERM, None)
                return wanted(self)
            train_module._StopFlag.wanted = signalled
        from trainer.cli import main
        return main(["train", "-c", str(folder / "config.yaml"), "--no-progress"])
    return train_module.train(load_config(None, overrides), progress=False).final_step

''' + h15.OUTCOME_MAIN


@pytest.mark.slow
def test_a_tokenizer_only_rank_0_can_load_is_the_runs_on_every_rank(tmp_path, shared_data):
    """Each rank loaded data.tokenizer: rank 1's failure was raised on rank 1 alone, and rank 0 crashed in the next
    collective. Now rank 0 alone loads it and sends it: both train, and the checkpoint keeps the tokenizer."""
    from trainer import checkpoint
    from trainer.cli import main
    from trainer.tokenizer import load_tokenizer

    corpus = wiki_corpus(tmp_path / "corpus", shared_data)
    overrides = tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)],
                               **{"train.max_steps": 2, "train.micro_batch": 4})
    _write_config(tmp_path / "config.yaml", overrides)
    assert main(["prepare", "-c", str(tmp_path / "config.yaml")]) == 0  # a multi-process run needs its data ready
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    outcomes = h15.two_ranks("tokenizer_rank1", tmp_path, WORKER)
    assert outcomes == [{"ok": 2}, {"ok": 2}], outcomes
    kept = checkpoint.pinned_tokenizer(tmp_path / "run" / "checkpoints" / "step-00000002")
    assert checkpoint.tokenizer_sha256(kept) == checkpoint.tokenizer_sha256(load_tokenizer(corpus["tok"]))


@pytest.mark.slow
def test_an_init_from_load_failing_on_rank_0_fails_every_rank(tmp_path):
    """Rank 0 could not download train.init_from (each rank loaded it: where rank 1 alone failed, rank 0 went on into
    DDP's first broadcast and crashed on the closed connection). Rank 0 alone reads it now (test_h33); rank 1, which
    waits for its weights, raises rank 0's InitError too."""
    import torch

    from trainer.export import export_hf
    from trainer.model import CONFIGS, Phi

    torch.manual_seed(0)
    export_hf(Phi(dataclasses.replace(CONFIGS["tiny"], vocab_size=256)), tmp_path / "weights")
    h15.synthetic_run(tmp_path, **{"train.init_from": str(tmp_path / "weights")})
    outcomes = h15.two_ranks("init_from_rank0", tmp_path, WORKER)
    assert [o.get("error") for o in outcomes] == ["InitError", "InitError"], outcomes
    assert all("cannot download the Hub model: connection reset" in o["message"] for o in outcomes)


@pytest.mark.slow
def test_a_sigterm_that_one_rank_got_gives_every_rank_its_exit_code(tmp_path):
    """Rank 1 got SIGTERM and exited 143; rank 0 stopped with it as "stop requested on another rank" and exited 3.
    Now the stop's reason travels with the vote: both stop after step 2 and exit 143, with a checkpoint."""
    h15.synthetic_run(tmp_path, **{"train.max_steps": 5})
    _write_config(tmp_path / "config.yaml", json.loads((tmp_path / "overrides.json").read_text()))
    outcomes = h15.two_ranks("sigterm_rank1", tmp_path, WORKER)
    assert outcomes == [{"ok": 143}, {"ok": 143}], outcomes
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()


def _write_config(path: Path, overrides: dict) -> None:
    """`overrides` (dotted keys) as a YAML config for `-c`."""
    tree: dict = {}
    for key, value in overrides.items():
        _set_dotted(tree, key, value, "test")
    path.write_text(yaml.safe_dump(tree))

"""2 gloo ranks (test_h15's launcher): each rank trains on the prepared data of its own node (data.cache_dir is
read by every rank), so the check of that data must be each rank's own. Judged on rank 0 alone (and sent to the
others), a node whose copy was missing or out of date trained on it, or crashed alone."""

from __future__ import annotations

import json
import shutil

import pytest
import test_h15_rank_errors as h15
from trainer_testlib import tiny_overrides, wiki_corpus

from trainer.config import load_config
from trainer.train import prepare_all

# one process per rank, rank 1 reading data.cache_dir from `cache_rank1` (its node's copy of the same path)
WORKER = '''
import json, os, sys
import torch.multiprocessing as mp


def scenario(name, folder, rank):
    import torch
    torch.set_num_threads(1)
    from trainer import train as train_module
    from trainer.config import load_config
    overrides = json.loads((folder / "overrides.json").read_text())
    if rank == 1:
        overrides["data.cache_dir"] = str(folder / "cache_rank1")
    return train_module.train(load_config(None, overrides), progress=False).final_step

''' + h15.OUTCOME_MAIN


@pytest.mark.slow
def test_data_out_of_date_on_rank_1s_node_alone_is_refused_on_every_rank(tmp_path, shared_data):
    """Rank 1's node holds a copy prepared before text specials were spelled out (its index lacks
    `specials_in_text`): rank 0's own copy is current, and rank 0's verdict let rank 1 train on the old ids."""
    corpus = wiki_corpus(tmp_path / "corpus", shared_data)
    overrides = tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)],
                               **{"train.max_steps": 2, "train.micro_batch": 4})
    prepare_all(load_config(None, overrides), progress=False)
    shutil.copytree(tmp_path / "cache", tmp_path / "cache_rank1")
    index_path = tmp_path / "cache_rank1" / "wiki" / "index.json"
    index = json.loads(index_path.read_text())
    del index["key"]["specials_in_text"]
    index_path.write_text(json.dumps(index))
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    outcomes = h15.two_ranks("train", tmp_path, WORKER)
    assert [o.get("error") for o in outcomes] == ["DataError", "DataError"], outcomes
    assert outcomes[0]["message"] == outcomes[1]["message"], outcomes
    assert f"out of date for ['{corpus['wiki']}'] on rank 1" in outcomes[0]["message"]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_data_missing_on_rank_1s_node_alone_is_refused_on_every_rank(tmp_path, shared_data):
    """Rank 1's node has no prepared copy: rank 1 crashed alone reading it, and rank 0 in the next collective."""
    corpus = wiki_corpus(tmp_path / "corpus", shared_data)
    overrides = tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)],
                               **{"train.max_steps": 2, "train.micro_batch": 4})
    prepare_all(load_config(None, overrides), progress=False)
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    outcomes = h15.two_ranks("train", tmp_path, WORKER)
    assert [o.get("error") for o in outcomes] == ["DataError", "DataError"], outcomes
    assert f"missing or out of date for ['{corpus['wiki']}'] on rank 1" in outcomes[1]["message"], outcomes

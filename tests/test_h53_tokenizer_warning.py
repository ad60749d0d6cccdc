"""The held "cannot load data.tokenizer" warning: said once, where the data builds and the run goes on."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trainer_testlib import one_torch_thread

from trainer import train as train_module
from trainer.cli import main
from trainer.tokenizer import train_tokenizer

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


def test_a_tokenizer_the_run_cannot_keep_is_warned_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """The warning is held until the data is built (h50: else said twice where tokenizing fails); where the data's
    own loader reads the tokenizer, it must still be printed, once, and the run exit 0."""
    docs = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": [f"document {i}: the {i % 7} cats sat on {i % 5} mats." for i in range(200)]}),
                   docs)
    tok = tmp_path / "tok.json"
    train_tokenizer([docs], vocab_size=300).save(str(tok))

    def unloadable(spec):
        raise ValueError(f"{spec}: cannot be read here")

    monkeypatch.setattr(train_module, "load_tokenizer", unloadable)
    assert main(["train", "-c", "tiny", "--run-dir", str(tmp_path / "run"), "--max-steps", "1", "--device", "cpu",
                 "--no-progress", "--set", f"data.datasets.0.source={docs}", "--set", f"data.tokenizer={tok}",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.datasets.0.holdout_tokens=0",
                 "--set", "data.seq_len=32",
                 "--set", "train.global_batch=4", "--set", "train.micro_batch=4", "--set", "train.precision=fp32",
                 "--set", "log.plot=false", "--set", "train.eval_interval=0", "--set", "checkpoint.every=0"]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert said.count(f"warning: cannot load data.tokenizer '{tok}' ({tok}: cannot be read here)") == 1, said

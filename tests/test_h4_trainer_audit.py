"""Rough edges met running the pipeline end to end as a researcher would (textbookgen build against the emulator,
push to a fake Hub, prepare from the Hub id, train, kill and resume, export, generate, eval)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from trainer_testlib import tiny_overrides, wiki_corpus

from trainer.cli import main
from trainer.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_corpus(tmp_path_factory.mktemp("h4audit"), shared_data)


@pytest.fixture(scope="module")
def run(corpus):
    """A tiny run of one step on the corpus (its checkpoint keeps the corpus's tokenizer)."""
    from trainer.config import load_config
    from trainer.train import train

    folder = corpus["root"] / "run"
    train(load_config(None, tiny_overrides(folder, corpus["root"] / "cache", corpus["tok"], [(corpus["wiki"], 1.0)],
                                           **{"train.max_steps": 1})))
    return folder


def test_prepare_says_when_it_replaces_data_prepared_with_another_tokenizer(corpus, tmp_path, capsys, shared_data):
    """Two configs sharing data.cache_dir and a dataset name but not the tokenizer (a tokenizer ablation) replace
    each other's tokens at every start: prepare says so and how to keep both, rather than re-tokenizing unseen."""
    from trainer.data import Holdout, prepare

    out = tmp_path / "tokens"
    prepare(str(corpus["wiki"]), out, str(corpus["tok"]), num_workers=1, progress=False)
    assert "note:" not in capsys.readouterr().err
    prepare(str(corpus["wiki"]), out, str(corpus["tok"]), num_workers=1, progress=False)  # up to date: reused
    assert "note:" not in capsys.readouterr().err
    gpt2 = str(shared_data / "tokenizer_gpt2")
    prepare(str(corpus["wiki"]), out, gpt2, num_workers=1, progress=False)
    err = capsys.readouterr().err
    assert f"note: {out} holds {corpus['wiki']} prepared with another tokenizer ({corpus['tok']}); preparing it " \
           "again replaces that data (to keep both, prepare this one into another folder: its own data.cache_dir " \
           "or data.datasets.N.name, or prepare --out)" in err, err
    prepare(str(corpus["wiki"]), out, gpt2, num_workers=1, progress=False, holdout=Holdout(fraction=0.1))
    assert "prepared with another holdout rule; preparing" in capsys.readouterr().err


def test_gpt2_files_missing_from_a_mirror_name_the_mirror(tmp_path):
    """Under HF_ENDPOINT (a mirror, a test Hub) the GPT-2 files of gpt2-codegen come from there: a 404 for
    openai-community/gpt2 names that endpoint, not the Hub, which has them."""
    pytest.importorskip("aiohttp")
    from textbookgen.testing.fakehub import FakeHub

    folder = tmp_path / "ds" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a few words"] * 4}), folder / "train-00000-of-00001.parquet")
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        env.pop("HF_HUB_OFFLINE", None)
        res = subprocess.run([sys.executable, "-m", "trainer", "prepare", str(folder.parent), "--out",
                              str(tmp_path / "tok")], capture_output=True, text=True, env=env, timeout=120)
        endpoint = hub.endpoint
    assert res.returncode == 2, res.stderr
    assert f"cannot fetch GPT-2's BPE files from the Hub repo 'openai-community/gpt2' at {endpoint} (HF_ENDPOINT) " \
           "(40" in res.stderr, res.stderr  # 401/404: the fake Hub has no such repo


def test_start_up_line_names_the_hub_commit_training_reads(corpus, tmp_path, monkeypatch):
    """Training does not ask the Hub for a newer commit of a Hub id (no network at start-up): it reads what
    prepare fetched, so its start-up line names that commit, not only the dataset."""
    from trainer_testlib import hub_dataset

    from trainer.data import MixtureSampler, TokenStream, prepare

    with hub_dataset(corpus["wiki"], "tester/wiki", tmp_path / "hf-cache", monkeypatch) as endpoint:
        index = prepare("tester/wiki", tmp_path / "tok", corpus["tok"], endpoint=endpoint, num_workers=1,
                        progress=False)
    sampler = MixtureSampler([TokenStream(tmp_path / "tok")], [1.0], seq_len=16, seed=0, names=["wiki"])
    [line] = sampler.epoch_lines(10)
    assert index["commit"] and line.startswith(f"data wiki (tester/wiki@{index['commit'][:12]}, as prepared): draws ")


def test_train_tokenizer_on_a_build_folder_reads_its_dataset_as_prepare_does(tmp_path, capsys):
    """A build folder's parquet files are generation and curation files: train-tokenizer, like prepare, reads its
    dataset/ (with a note), and refuses one with no dataset yet rather than training on uncurated documents."""
    build = tmp_path / "build"
    (build / ".build").mkdir(parents=True)
    (build / "manifest.json").write_text("{}")
    pq.write_table(pa.table({"text": ["some uncurated words"] * 20}), build / "documents.parquet")
    out = str(tmp_path / "t.json")
    assert main(["train-tokenizer", str(build), "--vocab-size", "300", "--out", out]) == 2
    assert f"{build} is a textbookgen build folder with no dataset/ yet" in capsys.readouterr().err
    (build / "dataset" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["some curated words"] * 20}), build / "dataset" / "data" / "train-00000-of-00001.parquet")
    assert main(["train-tokenizer", str(build), "--vocab-size", "300", "--out", out]) == 0
    said = capsys.readouterr()
    assert "from 1 file(s)" in said.out and f"note: {build} is a textbookgen build folder; reading its dataset" in said.err
    assert load_tokenizer(out).token_to_id("Ġcurated") is not None and load_tokenizer(out).token_to_id("Ġuncurated") is None


def test_generate_help_says_what_the_sampling_flags_mean(capsys):
    """--temperature, --top-k and --top-p had no help: their off values (0 greedy, 0 and 1 off) were only told by
    the error for a value out of range."""
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for said in ("--temperature TEMPERATURE 0: greedy (default 0.8)", "0: off (default 50)", "1: off (default 0.95)",
                 "stops at EOS; default 200", "a different draw each run"):
        assert said in text, said


def test_export_without_tokenizer_refuses_a_folder_holding_an_earlier_tokenizer(run, tmp_path, capsys):
    """`export --no-tokenizer` over an earlier export left that export's tokenizer.json beside the new weights:
    generate and eval then paired them silently (a smaller vocabulary passes the size check) and sampled with the
    wrong ids. It is refused before anything is written."""
    out = tmp_path / "hf"
    assert main(["export", str(run), str(out)]) == 0
    weights = (out / "model.safetensors").read_bytes()
    assert main(["export", str(run), str(out), "--no-tokenizer", "--dtype", "float32"]) == 2
    assert f"error: {out}: holds tokenizer.json, tokenizer_config.json from before, which loaders would pair with " \
           "weights exported without a tokenizer" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights  # nothing written
    assert main(["export", str(run), str(tmp_path / "bare"), "--no-tokenizer"]) == 0
    assert not (tmp_path / "bare" / "tokenizer.json").exists()


def test_eval_does_not_warn_of_indexing_errors_for_contexts_it_truncates(shared_data, tmp_path, capfd):
    """transformers warns "Token indices sequence length is longer than the specified maximum sequence length
    for this model ... will result in indexing errors" when 8-shot GSM8K is encoded for a short-context model,
    but scoring left-truncates as lm_eval does: the warning told an evaluator the run was broken when it was not."""
    import shutil

    import torch
    import transformers

    from trainer.eval.models import CausalLM

    shutil.copy(shared_data / "tokenizer_gpt2" / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(shared_data / "tokenizer_gpt2" / "vocab.bpe", tmp_path / "merges.txt")
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path), model_max_length=32)
    torch.manual_seed(0)
    cfg = transformers.PhiConfig(vocab_size=50304, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=32)
    lm = CausalLM(transformers.PhiForCausalLM(cfg).eval(), tok, device="cpu")
    capfd.readouterr()
    [(logprob, _)] = lm.loglikelihood([("word " * 100, "end")])
    [text] = lm.generate(["word " * 100], max_new_tokens=2)
    assert np.isfinite(logprob) and isinstance(text, str)
    assert "Token indices sequence length" not in capfd.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--revision", "deadbeef"], "--revision goes with a dataset SOURCE; with --config it would be ignored: set "
                                 "data.datasets.N.revision instead (--set data.datasets.0.revision=...)"),
    (["--tokenizer", "/no/such/tok.json"], "--tokenizer goes with a dataset SOURCE; with --config it would be "
                                           "ignored: set data.tokenizer instead"),
    (["--column", "body"], "--column goes with a dataset SOURCE"),
    (["--split", "validation"], "--split goes with a dataset SOURCE"),
    (["SOURCE"], "give a dataset SOURCE (with --out and its flags) or --config, not both"),
])
def test_prepare_refuses_flags_the_way_it_is_called_would_ignore(corpus, tmp_path, capsys, extra, message):
    """`prepare -c CONFIG --revision X` (or --tokenizer, --column, --split) prepared the config's datasets as
    they are, and `prepare SOURCE -c CONFIG` prepared SOURCE alone, each ignoring the rest without a word."""
    from trainer.config import _set_dotted

    tree: dict = {}
    for k, v in tiny_overrides(tmp_path / "run", tmp_path / "cache", corpus["tok"], [(corpus["wiki"], 1.0)]).items():
        _set_dotted(tree, k, v, "test")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    if extra == ["SOURCE"]:
        extra = [str(corpus["wiki"]), "--out", str(tmp_path / "tok"), "--tokenizer", str(corpus["tok"])]
    assert main(["prepare", "-c", str(cfg), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "tok").exists()  # nothing prepared


def test_generate_says_it_waits_for_a_prompt_on_a_terminal(run, monkeypatch, capsys):
    """`generate CKPT` without -p reads the prompt from stdin: on a terminal it sat silent, looking hung."""
    import io

    capsys.readouterr()
    terminal = io.StringIO("The history of")
    terminal.isatty = lambda: True
    monkeypatch.setattr("sys.stdin", terminal)
    assert main(["generate", str(run), "--max-new-tokens", "2", "--seed", "0", "--device", "cpu"]) == 0
    said = capsys.readouterr()
    assert said.err == "reading the prompt from stdin: type it, then Ctrl-D (or give -p PROMPT)\n", said.err
    assert said.out.startswith("The history of")
    monkeypatch.setattr("sys.stdin", io.StringIO("The history of"))  # a pipe: nothing to say
    assert main(["generate", str(run), "--max-new-tokens", "2", "--seed", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().err == ""

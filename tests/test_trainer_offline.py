"""Without network the trainer's Hub look-ups (the default gpt2-codegen tokenizer, a Hub tokenizer id,
train.init_from a Hub model, a Hub dataset to prepare) fail after one try, quietly, in one line that names
the option to use instead; the HF cache serves what it holds; with a Hub there, downloads go on as before."""

from __future__ import annotations

import io
import logging
import socket

import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants

from textbookgen.testing.fakehub import FakeHub
from trainer.cli import main
from trainer.data import prepare
from trainer.pretrained import InitError, load_initial
from trainer.tokenizer import GPT2_REPO, load_tokenizer

HUB_NAMES = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}  # GPT-2's files on the Hub -> OpenAI's


def closed_port() -> int:
    """A local port nothing listens on: connections are refused at once, as on a machine with no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """`hub_at(endpoint)` points huggingface_hub at `endpoint` with an empty cache and HF_HUB_OFFLINE unset;
    returns the list of HTTP requests the process sends from then on."""
    sent: list[str] = []
    send = httpx2.Client.send

    def counted(self, request, *a, **k):
        sent.append(f"{request.method} {request.url}")
        return send(self, request, *a, **k)

    def point(endpoint: str) -> list[str]:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # HfApi's; file URLs come from the template
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(httpx2.Client, "send", counted)
        return sent

    return point


def one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_default_tokenizer_offline_fails_at_once_naming_the_option(hub_at, tmp_path, capsys, caplog):
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["hello world"] * 4}), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    sent = hub_at(endpoint)
    with caplog.at_level(logging.WARNING, logger="huggingface_hub"):
        err = one_line_error(["prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "tokens"), "--workers", "1"],
                             capsys)
    assert len(sent) == 1 and sent[0].startswith(f"HEAD {endpoint}/"), sent  # one try, not 6 over ~24 s
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # no "Retrying in 8s" lines
    for said in ("no network", "not in the HF cache", "--tokenizer", "data.tokenizer", "vocab.json + merges.txt",
                 "encoder.json + vocab.bpe"):
        assert said in err, err
    assert not (tmp_path / "tokens").exists()


def test_hf_hub_offline_sends_nothing(hub_at, monkeypatch, capsys):
    sent = hub_at(f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"\(HF_HUB_OFFLINE is set\) and they are not in the HF cache: give --tokenizer"):
        load_tokenizer("gpt2-codegen")
    with pytest.raises(ValueError, match=r"'someone/tok': no such path here.*HF_HUB_OFFLINE is set.*--tokenizer"):
        load_tokenizer("someone/tok")
    assert sent == []


def test_hub_tokenizer_id_offline_fails_at_once(hub_at):
    sent = hub_at(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ValueError) as err:
        load_tokenizer("someone/tok")
    assert len(sent) == 1 and "\n" not in str(err.value) and "no network" in str(err.value)
    assert "data.tokenizer" in str(err.value)


def test_init_from_hub_offline_is_one_line(hub_at, monkeypatch):
    sent = hub_at(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(InitError) as err:
        load_initial("someone/model")
    said = str(err.value)
    assert "\n" not in said and said.startswith("train.init_from someone/model: cannot reach the Hub") and len(sent) == 1
    assert "not in the HF cache: give a local folder" in said
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InitError, match=r"\(HF_HUB_OFFLINE is set\) and the model is not in the HF cache"):
        load_initial("someone/model")


def test_hub_download_then_offline_from_the_cache(hub_at, shared_data):
    """Online: the files come from the Hub as before (and land in the HF cache); offline later: the cache
    serves them after one refused try, quietly."""
    tok_dir = shared_data / "tokenizer_gpt2"
    files = {hub: (tok_dir / ours).read_bytes() for hub, ours in HUB_NAMES.items()}
    with FakeHub() as hub:
        hub.add_repo(GPT2_REPO, repo_type="model")
        hub.commit_files(GPT2_REPO, files, repo_type="model")
        sent = hub_at(hub.endpoint)
        online = load_tokenizer("gpt2-codegen")
    assert sum("/resolve/main/" in s for s in sent) >= 2  # the downloads themselves (a HEAD probe first)
    code = "def f(x):\n        return x\n"
    assert online.encode(code).ids == load_tokenizer(tok_dir).encode(code).ids
    sent = hub_at(f"http://127.0.0.1:{closed_port()}")
    sent.clear()
    assert load_tokenizer("gpt2-codegen").encode(code).ids == online.encode(code).ids
    assert len(sent) == 1


def test_hub_tokenizer_id_from_the_cache_offline(hub_at, tmp_path):
    """A Hub tokenizer id the HF cache holds loads offline after one try."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with FakeHub() as hub:
        hub.add_repo("someone/tok", repo_type="model")
        hub.commit_files("someone/tok", {"tokenizer.json": (tmp_path / "tokenizer.json").read_bytes()},
                         repo_type="model")
        hub_at(hub.endpoint)
        load_tokenizer("someone/tok")
    sent = hub_at(f"http://127.0.0.1:{closed_port()}")
    sent.clear()
    assert load_tokenizer("someone/tok").get_vocab_size() == 0 and len(sent) == 1


def test_bad_hub_id_is_named_not_called_offline():
    with pytest.raises(ValueError, match="cannot load tokenizer 'a b' from the Hub"):
        load_tokenizer("a b")



def test_hub_dataset_offline_is_one_line_naming_what_to_give(hub_at, tmp_path, capsys, caplog, monkeypatch):
    """huggingface_hub's two-line "An error happened while trying to locate the files..." became one line."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    sent = hub_at(endpoint)
    argv = ["prepare", "someone/ds", "--out", str(tmp_path / "tokens")]
    with caplog.at_level(logging.WARNING, logger="huggingface_hub"):
        err = one_line_error(argv, capsys)
    assert err.startswith("error: cannot reach the Hub for dataset 'someone/ds' (") and err.endswith(
        ") and it is not in the HF cache: give a local folder, or run prepare where the Hub is reachable"), err
    assert len(sent) == 1 and sent[0].startswith(f"GET {endpoint}/api/datasets/someone/ds/"), sent
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    sent.clear()
    mirror = f"http://127.0.0.1:{closed_port()}"  # --endpoint (data.datasets.N.endpoint): the one asked
    assert one_line_error([*argv, "--endpoint", mirror], capsys).startswith("error: cannot reach the Hub for dataset")
    assert len(sent) == 1 and sent[0].startswith(f"GET {mirror}/"), sent
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub refuses its request before sending
    assert "(HF_HUB_OFFLINE is set) and it is not in the HF cache: give a local folder" in one_line_error(argv, capsys)
    assert not (tmp_path / "tokens").exists()


def test_hub_dataset_prepared_offline_from_the_cache(hub_at, tmp_path, shared_data):
    """A Hub dataset downloaded once is prepared offline from the HF cache, after one refused try."""
    parquet = io.BytesIO()
    pq.write_table(pa.table({"text": ["hello world", "def f(x):\n        return x\n"] * 4}), parquet)
    tok = shared_data / "tokenizer_gpt2"
    with FakeHub() as hub:
        hub.add_repo("someone/ds")
        hub.commit_files("someone/ds", {"data/train-00000-of-00001.parquet": parquet.getvalue()})
        hub_at(hub.endpoint)
        online = prepare("someone/ds", tmp_path / "online", tok, num_workers=1, progress=False)
    sent = hub_at(f"http://127.0.0.1:{closed_port()}")
    sent.clear()
    offline = prepare("someone/ds", tmp_path / "offline", tok, num_workers=1, progress=False)
    assert offline["total_tokens"] == online["total_tokens"] > 0 and len(sent) == 1


def test_eval_of_a_mistyped_local_folder_offline_is_one_line_saying_there_is_none(hub_at, tmp_path, capsys,
                                                                                   monkeypatch):
    """`out/nope` (with `out/` here) reads as a Hub id; transformers' two-line "couldn't connect" hid the typo."""
    hub_at(f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    err = one_line_error(["eval", "out/nope", "--tasks", "arc_easy"], capsys)
    assert err.startswith("error: out/nope: cannot load it as a Hub model") and "no local file or folder 'out/nope'" in err

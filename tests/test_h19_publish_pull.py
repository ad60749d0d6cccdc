"""Publishing audit: a pull into a folder holding another build's shards, and `textbookgen push --revision`."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import disable_progress_bars
from test_dataset import sample_documents
from test_hub import REPO, build
from typer.testing import CliRunner

from textbookgen.dataset import check_rows, split_rows, write_dataset
from textbookgen.hub import hub_errors, pull, push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


def test_a_pull_into_a_folder_with_another_builds_shards_is_refused_before_downloading(hub, tmp_path):
    """The pulled train shard sat beside a local 3-shard build's: the folder read as one train split of
    60 + 90 rows, silently."""
    push(build(tmp_path / "b"), REPO, token=hub.token, endpoint=hub.endpoint)
    docs = sample_documents(90, seed=5)
    mine = tmp_path / "mine"
    write_dataset(docs, mine, max_shard_bytes=check_rows(docs.lazy())[1] // 3 + 1)
    before = sorted(p.name for p in mine.rglob("*"))
    with pytest.raises(ValueError, match=r"mine/data holds shards tester/quickstart does not have .*"
                                         r"train-00000-of-00003\.parquet.*pull into an empty folder"):
        pull(REPO, mine, token=hub.token, endpoint=hub.endpoint)
    assert sorted(p.name for p in mine.rglob("*")) == before and split_rows(mine) == {"train": 90}


def test_a_repull_of_a_smaller_revision_still_replaces_the_shards_a_pull_wrote(hub, tmp_path):
    """Shards an earlier pull wrote are not foreign: a re-pull replaces them (`_drop_stale`)."""
    push(build(tmp_path / "a", shards=3), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "p", token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "b", n=20, seed=7), REPO, token=hub.token, endpoint=hub.endpoint)
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert split_rows(out) == {"train": 20, "test": 10}


def test_cli_push_revision_commits_to_that_branch_and_leaves_main_alone(hub, tmp_path, monkeypatch):
    """`textbookgen push` had no --revision: a team could not push a candidate to a branch from the CLI."""
    from textbookgen.cli import app

    monkeypatch.setenv("HF_TOKEN", hub.token)
    folder = build(tmp_path / "build")
    runner = CliRunner()
    assert runner.invoke(app, ["push", str(folder), REPO, "--endpoint", hub.endpoint]).exit_code == 0
    main = hub.commits(REPO)[-1]
    build(folder, n=25, seed=4)
    res = runner.invoke(app, ["push", str(folder), REPO, "--revision", "candidate", "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert hub.commits(REPO)[-1] == main and hub.commits(REPO, branch="candidate")[-1].oid in res.output
    res = runner.invoke(app, ["pull", REPO, "--revision", "candidate", "-o", str(tmp_path / "p"),
                              "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert split_rows(tmp_path / "p")["train"] == 25 and hub.token not in res.output


def test_cli_push_and_pull_take_the_token_from_the_variable_token_env_names(hub, tmp_path, monkeypatch):
    """A write token kept apart from HF_TOKEN (a CI secret): push and pull had no way to be given it."""
    from textbookgen.cli import app

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no `hf auth login` token either
    monkeypatch.setenv("HF_WRITE_TOKEN", hub.token)
    runner = CliRunner()
    folder = build(tmp_path / "build")
    res = runner.invoke(app, ["push", str(folder), REPO, "--private", "--token-env", "HF_WRITE_TOKEN",
                              "--endpoint", hub.endpoint])
    assert res.exit_code == 0 and hub.commits(REPO)[-1].oid in res.output, res.output
    res = runner.invoke(app, ["pull", REPO, "--token-env", "HF_WRITE_TOKEN", "-o", str(tmp_path / "p"),
                              "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "README.md").read_bytes() != b"" and hub.token not in res.output
    res = runner.invoke(app, ["pull", REPO, "--token-env", "HF_READ_TOKEN", "-o", str(tmp_path / "q"),
                              "--endpoint", hub.endpoint])
    assert res.exit_code == 1 and "--token-env: environment variable HF_READ_TOKEN is not set" in res.output
    res = runner.invoke(app, ["push", str(folder), REPO, "--token-env", hub.token, "--endpoint", hub.endpoint])
    assert res.exit_code == 1 and "not the token itself" in res.output and hub.token not in res.output
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("repo_id", ["https://huggingface.co/datasets/me/corpus", "corpus", "me/corpus/extra"])
def test_publish_refuses_a_repo_id_that_names_no_repo(tmp_path, repo_id):
    """`--repo-id` went into the card's `load_dataset("...")` line as given: a URL or bare name there fails to load."""
    import polars as pl

    from textbookgen.publish import publish

    pl.DataFrame({"text": ["one two three"] * 3}).write_parquet(tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"--repo-id: repo id must look like 'user/name'"):
        publish(tmp_path / "c.parquet", tmp_path / "out", repo_id=repo_id)
    assert not (tmp_path / "out").exists()
    readme = publish(tmp_path / "c.parquet", tmp_path / "out", repo_id="me/corpus")
    assert 'load_dataset("me/corpus"' in readme.read_text("utf-8")


@pytest.mark.parametrize("revision", ["0123456789abcdef0123456789abcdef01234567", "refs/tags/v1", "refs/pr/x", "",
                                      "dev..x", "a b"])
def test_push_refuses_a_revision_that_is_no_branch_before_any_request(hub, tmp_path, revision):
    """A commit id got "error: Bad request:" from the Hub; a ref became a branch of that name (fake Hub). (A pull
    request's refs/pr/N is pushed onto: test_s13c_pull_requests.)"""
    folder = build(tmp_path / "build")
    with pytest.raises(ValueError, match=r"a push commits to a branch"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, revision=revision)
    assert hub.requests == []


def test_a_request_the_hub_refuses_is_one_line_giving_its_reason(hub, tmp_path, monkeypatch):
    """A 400 from the Hub printed `error: Bad request:`, the client's first line, without the Hub's reason."""
    from textbookgen.cli import app

    monkeypatch.setenv("HF_TOKEN", hub.token)
    folder = build(tmp_path / "build")
    hub.inject("POST", r"/commit/", 422)
    res = CliRunner().invoke(app, ["push", str(folder), REPO, "--endpoint", hub.endpoint])
    assert res.exit_code == 1
    assert res.output.splitlines()[-1] == (f"error: the Hub at {hub.endpoint} refused a request of {REPO} (422): "
                                           "injected fault")
    sha = hub.commits(REPO)[-1].oid  # the repo the push created; its commit was refused
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    with pytest.raises(OSError, match=rf"refused a request of {REPO} \(400\): Invalid branch name: '{sha}'$"):
        with hub_errors(REPO, hub.endpoint):
            api.create_branch(REPO, branch=sha, repo_type="dataset")


def test_a_push_over_a_config_marked_default_leaves_the_repo_one_default_config(hub, tmp_path, caplog):
    """A repo whose card marks another config `default: true` (datasets.push_to_hub(set_default=True)) got ours,
    named `default`, beside it: load_dataset refused the repo ("several default configs")."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    card = ("---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/train-*\n"
            "  default: true\n---\n# theirs\n")
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO, repo_type="dataset")
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=REPO, repo_type="dataset")
    push(build(tmp_path / "build"), REPO, token=hub.token, endpoint=hub.endpoint)
    data = DatasetCard(hub.read(REPO, "README.md").decode()).data
    assert MetadataConfigs.from_dataset_card_data(data).get_default_config_name() == "default"
    assert data.to_dict()["configs"][1] == {"config_name": "en", "data_files": [{"split": "train",
                                                                                 "path": "en/train-*"}]}
    assert "config 'en' was the repo's default" in caplog.text


def test_a_token_read_with_its_newline_is_sent_without_it_and_never_shown(hub, tmp_path, monkeypatch, caplog):
    """`export HF_WRITE_TOKEN=$(cat token)` style values with a newline: the header was refused, and the error
    line quoted it, the token in full (CLI and Python)."""
    from textbookgen.cli import app

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    folder = build(tmp_path / "build")
    url = push(folder, REPO, token=hub.token + "\n", endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "p", token=f" {hub.token}\n", endpoint=hub.endpoint)
    assert url.endswith(hub.commits(REPO)[-1].oid) and (out / "README.md").is_file()
    assert hub.token not in caplog.text
    monkeypatch.setenv("HF_WRITE_TOKEN", hub.token + "\n")
    build(folder, n=25, seed=4)
    res = CliRunner().invoke(app, ["push", str(folder), REPO, "--token-env", "HF_WRITE_TOKEN",
                                   "--endpoint", hub.endpoint])
    assert res.exit_code == 0 and hub.commits(REPO)[-1].oid in res.output, res.output


def test_a_header_the_client_refuses_is_reported_without_the_token(hub, tmp_path):
    """httpx quotes a refused header in full; the push's one line named it, Bearer token and all."""
    bad = hub.token + "\x00"
    with pytest.raises(ConnectionError, match=r"Illegal header value b'Bearer <token>'") as caught:
        push(build(tmp_path / "build"), REPO, token=bad, endpoint=hub.endpoint)
    assert hub.token not in str(caught.value) and caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_dropped_connection_asked_of_the_fake_logs_no_server_traceback(hub, caplog):
    """aiohttp logged "Error handling request" with the fault's traceback: it was printed amid the output of the
    command under test (a CLI push's one error line came after 20 lines of the fake's traceback)."""
    import logging

    caplog.set_level(logging.ERROR)
    hub.inject("GET", r"^/api/whoami-v2$", None, times=10)
    with pytest.raises(Exception, match="Server disconnected without sending a response"):
        HfApi(endpoint=hub.endpoint, token=hub.token).whoami()
    assert hub.requests and all(status == 0 for *_, status in hub.requests)  # each one dropped, as asked
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]

"""Ctrl-C during a push or pull whose transfer stalls: the command stops at once, commits nothing, says so in one
line and exits 130. A `textbookgen` process and the real client against the fake Hub, which leaves a request
unanswered; SIGINT is sent once the fake holds it."""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_hub import REPO, build, published

import textbookgen
from textbookgen.curation.corpus_io import corpus_files
from textbookgen.dataset import read_dataset
from textbookgen.hub import HubInterrupted, publishable_files, pull, push
from textbookgen.testing.fakehub import FakeHub
from trainer.data import find_parquet_files

ROOT = Path(textbookgen.__file__).resolve().parents[1]
# SIGINT as a terminal's Ctrl-C delivers it, even where this test runs with SIGINT ignored (a job started with `&`
# by a script): Python then leaves it ignored, as it did in the walkthrough where the push went on and committed.
CLI = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from textbookgen.cli import app; app()"
NO_ANSWER_S = "600"  # the Hub's silence outlasts the test: only the interrupt can end the command in time


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


def start(hub: FakeHub, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.Popen([sys.executable, "-c", CLI, *args, "--timeout", NO_ANSWER_S], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def interrupt_when_stalled(hub: FakeHub, proc: subprocess.Popen, method: str) -> tuple[str, str]:
    """SIGINT once the fake holds a `method` request unanswered; the output of the process, which must be gone
    within seconds (the stalled request would hold it for minutes). The faults not used up are dropped."""
    deadline = time.monotonic() + 60
    while not any(m == method and s == 0 for m, _, s in hub.requests):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the transfer never reached the fake Hub"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    hub.clear_faults()
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 20 s after Ctrl-C; stderr: {err[-2000:]}")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_ctrl_c_during_a_stalled_upload_stops_the_push_at_once_and_commits_nothing(hub, tmp_path):
    folder = build(tmp_path / "build", shards=2)
    hub.inject("PUT", r"^/_lfs/upload/", "hang", times=100)
    proc = start(hub, tmp_path, "push", str(folder), REPO)
    out, err = interrupt_when_stalled(hub, proc, "PUT")
    assert proc.returncode == 130, err
    assert lines(err) == [f"interrupted: nothing was committed to {REPO}; rerun the push to publish it (files "
                          "already uploaded are not sent again)"] and out == ""  # fmt: skip
    assert [c.title for c in hub.commits(REPO)] == ["initial commit"]
    assert not any(m == "POST" and "/commit/" in p for m, p, _ in hub.requests)
    url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint)  # the rerun publishes it, in one commit
    assert len(hub.commits(REPO)) == 2 and url.endswith(hub.commits(REPO)[-1].oid)


def test_ctrl_c_during_a_stalled_download_stops_the_pull_at_once_leaving_no_partial_file(hub, tmp_path):
    folder = build(tmp_path / "build", shards=2)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    hub.inject("GET", r"/resolve/[0-9a-f]{40}/data/train-", "hang", times=2)
    out_dir = tmp_path / "pulled"
    proc = start(hub, tmp_path, "pull", REPO, "--out", str(out_dir))
    out, err = interrupt_when_stalled(hub, proc, "GET")
    assert proc.returncode == 130, err
    assert lines(err) == [f"interrupted: the pull into {out_dir} did not finish; rerun it to complete the folder "
                          "(files already downloaded are not fetched again)"] and out == ""  # fmt: skip
    stalled = {p.partition("/resolve/")[2].partition("/")[2] for m, p, s in hub.requests if m == "GET" and s == 0}
    written = published(out_dir) if out_dir.exists() else {}
    assert stalled and not stalled & set(written)  # the stalled shards are not there, not even in part
    assert all(data == hub.read(REPO, p) for p, data in written.items())  # what is there is whole
    # but not all of it is there: every reader of dataset folders refuses the folder rather than take it as smaller
    for read in (read_dataset, lambda d: find_parquet_files(d, "train"), corpus_files,
                 lambda d: push(d, REPO, token=hub.token, endpoint=hub.endpoint)):
        with pytest.raises(ValueError, match="an interrupted `textbookgen pull` left it with files missing"):
            read(out_dir)
    pull(REPO, out_dir, token=hub.token, endpoint=hub.endpoint)  # the rerun completes the folder
    assert published(out_dir) == published(folder) and read_dataset(out_dir).height == read_dataset(folder).height


def test_an_upload_the_hub_never_answers_is_one_line_not_the_clients_traceback(hub, tmp_path, monkeypatch):
    """The client's upload threads wrap the timeout in RuntimeError("Error while uploading ..."), which went
    through as a many-screen traceback once its retries were spent."""
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda s: None))  # the client's backoff (23 s) skipped
    hub.inject("PUT", r"^/_lfs/upload/", "hang", times=100)
    with pytest.raises(ConnectionError, match=r"did not answer within 0\.2 s \(ReadTimeout\); nothing is half-pub"):
        push(build(tmp_path / "build"), REPO, token=hub.token, endpoint=hub.endpoint, timeout=0.2)
    assert len(hub.commits(REPO)) == 1


def test_ctrl_c_while_the_commit_goes_unanswered_says_it_may_have_landed(hub, tmp_path):
    folder = build(tmp_path / "build")
    hub.inject("POST", r"/commit/", "hang")
    proc = start(hub, tmp_path, "push", str(folder), REPO)
    out, err = interrupt_when_stalled(hub, proc, "POST")
    assert proc.returncode == 130, err
    assert lines(err) == [f"interrupted while committing to {REPO}: the commit may have landed; rerun the push to "
                          "make sure (it makes no second commit)"] and out == ""  # fmt: skip
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert len(hub.commits(REPO)) == 2


def interrupt_this_thread_when_stalled(hub: FakeHub, method: str) -> None:
    """Ctrl-C in the calling thread (as a terminal's reaches a library caller) once the fake holds a `method`
    request unanswered."""
    def watch() -> None:
        while not any(m == method and s == 0 for m, _, s in hub.requests):
            time.sleep(0.01)
        _thread.interrupt_main()

    threading.Thread(target=watch, daemon=True).start()


def transfer_threads(before: set[int]) -> list[str]:
    """The threads started since `before` (idents) that run the client's transfers, or wait for them."""
    return [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()
            and (t.name == "textbookgen-hub" or t.name.startswith("ThreadPoolExecutor"))]


def test_a_library_callers_ctrl_c_during_a_push_leaves_no_upload_running(hub, tmp_path):
    """HubInterrupted gave control back while the client's upload threads went on: blocked on the stalled
    requests until they timed out, then retrying them, and uploading the files not yet sent (through a client
    without the push's timeout, which was gone). They are stopped before it is raised now."""
    folder = build(tmp_path / "build", n=200, shards=12)
    hub.inject("PUT", r"^/_lfs/upload/", "hang", times=100)
    before = {t.ident for t in threading.enumerate()}
    interrupt_this_thread_when_stalled(hub, "PUT")
    with pytest.raises(HubInterrupted, match=f"nothing was committed to {REPO}"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, timeout=600)
    assert transfer_threads(before) == []  # none left to upload, retry or start an upload
    puts = [p for m, p, _ in hub.requests if m == "PUT"]
    assert 0 < len(puts) <= 5 < len(publishable_files(folder))  # the client's 5 threads' stalled ones only
    assert [c.title for c in hub.commits(REPO)] == ["initial commit"]
    hub.clear_faults()
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)  # the same process pushes it again, whole
    assert len(hub.commits(REPO)) == 2


def test_a_library_callers_ctrl_c_during_a_pull_leaves_no_download_writing(hub, tmp_path):
    folder = build(tmp_path / "build", shards=3)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    hub.inject("GET", r"/resolve/[0-9a-f]{40}/data/train-", "hang", times=2)
    out_dir = tmp_path / "pulled"
    before = {t.ident for t in threading.enumerate()}
    interrupt_this_thread_when_stalled(hub, "GET")
    with pytest.raises(HubInterrupted, match="did not finish"):
        pull(REPO, out_dir, token=hub.token, endpoint=hub.endpoint, timeout=600)
    assert transfer_threads(before) == []  # nothing downloads on into the folder
    stalled = {p.partition("/resolve/")[2].partition("/")[2] for m, p, s in hub.requests if m == "GET" and s == 0}
    assert stalled and not stalled & set(published(out_dir))
    hub.clear_faults()
    pull(REPO, out_dir, token=hub.token, endpoint=hub.endpoint)
    assert published(out_dir) == published(folder)

"""Publish a built dataset folder to the Hugging Face Hub in one atomic commit, and pull it back.

`push` makes exactly one `HfApi.create_commit`, with `parent_commit` set to the head it read: if anyone
else commits in between, the Hub answers 412 and nothing of ours lands (no half-updated dataset, no
silent overwrite). An existing card's metadata is merged, not replaced, so a license, gating or
`viewer:` setting added on the Hub survives a re-push: only what the recipe sets explicitly and what
describes the data (configs, features, sizes) replace the Hub's values. Shards the new build no longer
has are deleted in the same commit, so `data/train-*` never mixes two builds. Large files go through
the client's normal upload path (Xet or LFS, whichever the Hub offers). The token comes from `token=`, `HF_TOKEN` or the
user's `hf auth login`, and is never logged or written. Every request has a finite timeout (`timeout=`,
`$TEXTBOOKGEN_HUB_TIMEOUT`): the client sends its own without one, so a Hub that took the connection and
never answered would hang a push forever. Ctrl-C stops a push or pull at once (HubInterrupted), even while
the client's transfer threads wait on a stalled request, and a push interrupted before its commit commits
nothing. Those threads stop with it: no upload or download goes on, or starts, after HubInterrupted.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, wait
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from textbookgen.dataset import PULL_INCOMPLETE, SHARD_RE, existing_shards, split_rows, splits_of

log = logging.getLogger(__name__)
T = TypeVar("T")
_USAGE_RE = re.compile(r'(load_dataset\()"[^"\n]*"')
#: `namespace/name` as the Hub accepts it: word characters, '-' and '.', not at either end of the name.
REPO_ID_RE = re.compile(r"[\w\-.]{1,96}/(?![.\-])[\w\-.]{1,96}(?<![.\-])")
#: A pull request's ref: a push commits onto it while the pull request is open.
PR_REF_RE = re.compile(r"refs/pr/([1-9][0-9]*)")
#: Environment variables whose values are secrets that must never be published (HF_TOKEN, *_API_KEY ...).
SECRET_ENV_RE = re.compile(r"(?i)(api_?key|access_?key|secret|password|(^|_)token)$")

#: An Authorization header's credential, as an error may quote it.
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")

#: Seconds a Hub request may wait to connect, or for the next bytes sent or received: never a total, so a
#: large upload that keeps moving is not cut. `$TEXTBOOKGEN_HUB_TIMEOUT` or `timeout=` changes it.
DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "TEXTBOOKGEN_HUB_TIMEOUT"

#: The repo a folder's last pull was of (its files the client's metadata names are that repo's): a re-pull of it
#: may replace them, not files the user put there.
PULL_RECORD = ".cache/textbookgen-pull"
#: The line of a push's commit description above its rows record: a line `{split} {rows_digest} {shards_digest}`
#: per split (`_rows_record`), which a later push compares its rows with.
ROWS_MARK = "textbookgen rows (split, rows digest, shards digest), which a later push compares its rows with:"
_ROWS_LINE_RE = re.compile(r"^(\S+) ([0-9a-f]{64}) ([0-9a-f]{64})$", re.M)
#: Files of a built folder that are published, beside README.md, data/ and assets/.
PROVENANCE_FILES = ("recipe.yaml", "manifest.json", "journal_summary.json")
TEXT_SUFFIXES = (".md", ".yaml", ".yml", ".json", ".txt")


class PushConflictError(RuntimeError):
    """Someone committed to the repo between our read of its head and our commit; nothing was pushed."""


class HubInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a push or pull; the message (one line) says what was left and that a rerun finishes it.

    A KeyboardInterrupt, so that callers that handle Ctrl-C (`build`, typer) still do.
    """


def check_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it names a repo (`namespace/name`), else raise one line saying what is wrong.

    Checked before any request: the client would create `<you>/name` from a bare name, then fail.
    """
    if not isinstance(repo_id, str) or not REPO_ID_RE.fullmatch(repo_id):
        raise ValueError(f"repo id must look like 'user/name' or 'org/name', got {repo_id!r}")
    return repo_id


def check_branch(revision: str) -> str:
    """Return `revision` if a push can commit to it: a branch name (created where missing), or a pull request's
    `refs/pr/N` (`push` checks that it is open). A commit id, another ref (`refs/tags/...`), or a name git
    refuses, is refused before any request: creating a branch named after a commit was answered 400, printed
    as a bare "Bad request:"."""
    if PR_REF_RE.fullmatch(revision or ""):
        return revision
    bad = (not revision or revision.startswith(("refs/", "-", "/", ".")) or revision.endswith(("/", ".", ".lock"))
           or ".." in revision or "//" in revision or not re.fullmatch(r"[\w.\-/]+", revision)
           or re.fullmatch(r"[0-9a-f]{40}", revision))
    if bad:
        raise ValueError(f"revision {revision!r}: a push commits to a branch (e.g. main, dev), created from main "
                         "where missing, or onto an open pull request (refs/pr/N); not a commit id, another ref "
                         "such as refs/tags/v1, or a name git refuses")
    return revision


def clean_token(token: str | None) -> str | None:
    """`token` without the whitespace around it (a file's newline, read into a variable), None where that leaves
    nothing; the client strips HF_TOKEN so, not a token given: its header was refused, quoting the token."""
    return token.strip() or None if token else None


def hub_timeout(timeout: float | None = None) -> float:
    """Seconds of the per-request timeout: `timeout`, else `$TEXTBOOKGEN_HUB_TIMEOUT`, else the default."""
    source, value = ("timeout", timeout) if timeout is not None else (f"${TIMEOUT_ENV}", os.environ.get(TIMEOUT_ENV))
    if value is None or value == "":
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{source} must be a positive number of seconds, got {value!r}")
    return seconds


class TransfersStopped(Exception):
    """A request refused or cut because its push or pull was interrupted (never retried by the client)."""


class Transfers:
    """The client's requests inside `request_timeout`, which `stop` ends: a request not sent yet is refused,
    and those in flight are cut by shutting down their connections' sockets (a thread blocked reading a
    stalled answer wakes at once). The client's transfer threads then fail fast instead of uploading or
    downloading on, or retrying, after Ctrl-C has returned control to the caller."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # httpcore network streams opened
        self._lock = threading.Lock()

    def hook(self, request: Any) -> None:
        """A request event hook: refuse the request once stopped, else trace its connection and phases."""
        if self.stopped.is_set():
            raise TransfersStopped("interrupted")
        theirs = request.extensions.get("trace")
        request.extensions["trace"] = lambda name, info: self._trace(name, info, theirs)

    def _trace(self, name: str, info: dict[str, Any], theirs: Callable[[str, dict], Any] | None) -> None:
        """httpcore's trace of a request: keep each connection it opens; once stopped, fail at its next phase
        (a failure of the cut connection becomes TransfersStopped, which the client does not retry)."""
        if theirs is not None:
            theirs(name, info)
        opened = info.get("return_value") if name.endswith((".connect_tcp.complete", ".start_tls.complete")) else None
        if opened is not None:
            with self._lock:
                self._connections.add(opened)
        if self.stopped.is_set():
            if opened is not None:
                _shut(opened)
            raise TransfersStopped("interrupted")

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)


def _shut(connection: Any) -> None:
    """Shut down a connection's socket both ways: a read or write blocked on it, in any thread, fails now (a
    close would leave it blocked). The socket's own method, so that a TLS socket keeps its state for the error."""
    with suppress(OSError, AttributeError, TypeError):
        socket.socket.shutdown(connection.get_extra_info("socket"), socket.SHUT_RDWR)


@contextmanager
def request_timeout(seconds: float) -> Iterator[Transfers]:
    """Give each request `huggingface_hub` sends inside the block a timeout of `seconds`; yield the
    `Transfers` that can stop them.

    The client's default session and calls such as `repo_info` (also inside `snapshot_download`) send
    `timeout=None`, so a request hook of the session sets every phase (connect, the wait for the next
    bytes read or written, a pool slot) to `seconds`, the client's own 10 s for downloads included, so
    that the error can say what the limit was. httpx has no total timeout: an upload that keeps sending
    is never cut. The session is rebuilt from the factory in use (a user's proxy settings stay) and
    the factory is restored afterwards. Xet transfers (hf_xet's own HTTP stack) are outside its reach.
    """
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    transfers = Transfers()

    def bound(request: Any) -> None:
        request.extensions["timeout"] = dict.fromkeys(("connect", "read", "write", "pool"), seconds)

    def factory() -> Any:
        client = previous()
        hooks = [*client.event_hooks["request"], bound, transfers.hook]
        client.event_hooks = {**client.event_hooks, "request": hooks}
        return client

    set_client_factory(factory)
    try:
        yield transfers
    finally:
        set_client_factory(previous)


#: Seconds an interrupted push or pull waits at most for the client's threads to end once their requests are
#: cut (they take milliseconds; an Xet transfer, hf_xet's own HTTP stack, cannot be cut and is not waited for
#: longer); a second Ctrl-C waits no more.
STOP_WAIT_S = 2.0


def _in_background(work: Callable[[], T], transfers: Transfers) -> T:
    """`work()`, run in a daemon thread while this one waits for it, so that Ctrl-C is raised here at once.

    The client uploads and downloads through a thread pool that, when Ctrl-C reaches the thread that called
    it, first waits for its threads: a stalled request held the interrupt until it had timed out and been
    retried (minutes). On Ctrl-C `transfers` are stopped, which ends the pool's requests at once, and the
    work is given `STOP_WAIT_S` to end, so that no thread of it uploads, downloads or writes a file after
    this raises. Its requests cannot commit (the commit is a request of ours, never sent after this
    raises), and a download cut short stays `.incomplete`. An Xet transfer cannot be cut, and Python's exit
    would wait for it: the CLI leaves with `os._exit` after an interrupt.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as err:  # handed to the waiting thread
            future.set_exception(err)

    threading.Thread(target=run, name="textbookgen-hub", daemon=True).start()
    try:
        _wait(future)
    except KeyboardInterrupt:
        transfers.stop()
        with suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
            _wait(future, STOP_WAIT_S)
        raise
    return future.result()


def _wait(future: Future[Any], timeout: float = float("inf")) -> None:
    """Wait for `future` up to `timeout` seconds, in short waits, so that Ctrl-C is seen between two on any
    platform. Not Thread.join: Ctrl-C inside it marks a running thread as finished (CPython 3.11)."""
    deadline = time.monotonic() + timeout
    while not wait([future], timeout=0.1).done and time.monotonic() < deadline:
        pass


def _not_found(err: Any, repo_id: str, endpoint: str, revision: str | None) -> str | None:
    """The line for a repo, revision or file the Hub says is missing (None for another error). The client's
    own first line is only "404 Client Error.". The Hub answers a private repo as a missing one (401 to
    no token, 404 to a token without access), so the line says what a token would change."""
    from huggingface_hub.errors import (
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = err.response.status_code if isinstance(err, RepositoryNotFoundError) else None
    if status in (401, 404):  # not a gated repo's 403, whose terms are not accepted yet
        token = "authorization" in err.response.request.headers
        hint = ("if it is private, the token has no access to it" if token else
                "if it is private or gated, a token may be needed: set HF_TOKEN or run `hf auth login`")
        return f"dataset repo {repo_id} not found at {endpoint}; {hint}"
    if isinstance(err, RevisionNotFoundError):
        return (f"dataset repo {repo_id} has no revision {revision or 'main'!r} at {endpoint} (give a branch, tag "
                "or commit it has)")
    if isinstance(err, RemoteEntryNotFoundError):  # a download's URL ends /resolve/<revision>/<path>
        rev, _, path = err.response.url.path.partition("/resolve/")[2].partition("/")
        where = f"file {path} not found at revision {rev}" if path else f"a file is missing ({err.server_message})"
        return f"dataset repo {repo_id}: {where} on {endpoint}"
    return None


def _transport_errors() -> tuple[type[Exception], type[Exception]]:
    """The timeout and transport errors of the HTTP library the installed client speaks: httpx2 from
    huggingface_hub 2, httpx before. Not whichever imports: httpx2 installed beside huggingface_hub 1 (another
    SDK's) let its timeouts through as tracebacks."""
    from huggingface_hub.utils import _http

    http = getattr(_http, "httpx2", None) or _http.httpx
    return http.TimeoutException, http.TransportError


@contextmanager
def hub_errors(repo_id: str, endpoint: str, write: bool = True, timeout: float | None = None,
               revision: str | None = None) -> Iterator[None]:
    """Turn the client's HTTP and network errors into one line that says what to do.

    A missing repo, revision (`revision`) or file becomes FileNotFoundError naming it; auth problems
    PermissionError; an unreachable or failing Hub (network, timeouts, 429, 5xx) ConnectionError; another
    refusal (a 400 or 422) an OSError giving the Hub's reason. All are OSError, as the client's own errors are.
    A push is one atomic commit, so whatever broke, nothing is half-published, and a rerun resends no uploaded
    file. No line quotes the token (httpx quotes a header it refuses, the Authorization one included).
    """
    from huggingface_hub.errors import HfHubHTTPError

    TimeoutException, TransportError = _transport_errors()  # noqa: N806  (exception classes)
    rerun = ("nothing is half-published; rerun the push (files already uploaded are not sent again)" if write
             else "rerun the pull (files already downloaded are not fetched again)")
    try:
        try:
            yield
        except RuntimeError as err:  # the client's "Error while uploading 'x' to the Hub." wraps what failed
            if type(err) is RuntimeError and isinstance(err.__cause__, (HfHubHTTPError, TransportError)):
                raise err.__cause__ from None
            raise
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        missing = _not_found(err, repo_id, endpoint, revision)
        if missing:
            raise FileNotFoundError(missing) from err
        if status == 401:
            raise PermissionError(
                f"the Hub at {endpoint} refused the token (401): set HF_TOKEN to a valid token or run `hf auth login`"
            ) from err
        if status == 403 and not write:
            raise PermissionError(f"no access to {repo_id} (403): if it is gated, accept its terms on the Hub") from err
        if status == 403 and PR_REF_RE.fullmatch(revision or ""):
            raise PermissionError(
                f"no write access to {revision} of {repo_id} (403): a pull request takes commits from its author "
                "and the repo's writers; open your own with create_pr (--create-pr)"
            ) from err
        if status == 403:
            raise PermissionError(
                f"no write access to {repo_id} (403): push to your own namespace or an organization you write "
                "to, with a token that has write permission"
            ) from err
        if status is not None and (status in (408, 429) or status >= 500):
            raise ConnectionError(f"the Hub at {endpoint} answered {status}: {rerun}") from err
        if status is not None:  # the client's first line is only "Bad request:" (400) or the URL (others)
            why = " ".join((err.server_message or str(err)).split())
            raise OSError(f"the Hub at {endpoint} refused a request of {repo_id} ({status}): {why}") from err
        raise
    except TimeoutException as err:
        limit = f"{timeout:g} s" if timeout is not None else "its timeout"
        raise ConnectionError(
            f"the Hub at {endpoint} did not answer within {limit} ({type(err).__name__}); {rerun}, or allow more "
            f"time with ${TIMEOUT_ENV} or timeout="
        ) from err
    except TransportError as err:  # a header refused by httpx is quoted in full: the token's too
        why = _BEARER_RE.sub(r"\1<token>", str(err))
        raise ConnectionError(f"cannot reach the Hub at {endpoint} ({type(err).__name__}: {why}); {rerun}") from (
            err if why == str(err) else None)  # a traceback would show the error it quotes


def publishable_files(out_dir: Path) -> list[Path]:
    """Files of `out_dir` that belong on the Hub: the card, shards, plots and provenance files."""
    files = [p for p in (out_dir / "data").glob("*.parquet") if SHARD_RE.match(p.name)]
    assets = out_dir / "assets"
    if assets.is_dir():
        files += [p for p in assets.rglob("*") if p.is_file() and not p.name.startswith(".")]
    files += [out_dir / n for n in ("README.md", *PROVENANCE_FILES) if (out_dir / n).is_file()]
    return sorted(files)


def _card_repo(out_dir: Path) -> str | None:
    """The repo id the card's `load_dataset("...")` line names, None for none or the `<user>/` placeholder."""
    m = _USAGE_RE.search((out_dir / "README.md").read_text("utf-8"))
    name = m[0].split('"')[1] if m else ""
    return name if REPO_ID_RE.fullmatch(name) else None


def usage_for(repo_id: str, card_text: str) -> str:
    """The card with its `load_dataset("...")` usage naming the repo it is pushed to (a build without
    `hub.repo_id` renders a `<user>/name` placeholder there, and a folder may be pushed elsewhere). The
    card's own usage is its first `load_dataset`; a later one loading another dataset (a template's
    example) is left as it is."""
    first = _USAGE_RE.search(card_text)
    if first is None:
        return card_text
    return _USAGE_RE.sub(lambda m: f'{m[1]}"{repo_id}"' if m[0] == first[0] else m[0], card_text)


def merge_card(new_text: str, old_text: str | None, defaults: Mapping[str, Any] | None = None) -> str:
    """`new_text` with the metadata of `old_text` kept where the new card does not choose otherwise.

    `defaults` ({key: value}, see `textbookgen.card.card_defaults`) are the new card's values that
    textbookgen filled in rather than the user: where the old card has such a key, its value stays
    (a license set on the Hub beats the recipe's default one). Other keys of the new card win;
    `configs` and `dataset_info` merge by config name (others' configs stay, less a `default: true` mark:
    `_one_default`); `tags` are the union.
    The body is the new card's: it is generated from the data.
    """
    from huggingface_hub import DatasetCard

    if not old_text:
        return new_text
    new = DatasetCard(new_text)
    try:
        old = DatasetCard(old_text, ignore_metadata_errors=True).data.to_dict()
    except Exception as err:  # an unparsable remote card: say so, keep ours
        log.warning("existing README.md metadata does not parse (%s); replacing it", err)
        return new_text
    ours = new.data.to_dict()
    defaults = defaults or {}
    merged: dict[str, Any] = dict(old)
    for key, value in ours.items():
        if key == "configs":
            merged[key] = _one_default(_merge_named(old.get(key), value, "config_name"))
        elif key == "dataset_info":
            merged[key] = _merge_dataset_info(old.get(key), value)
        elif key == "tags" and isinstance(old.get(key), list):
            merged[key] = list(dict.fromkeys([*value, *old[key]]))
        elif key in old and key in defaults and defaults[key] == value:
            continue  # a default of ours never replaces a value someone chose
        else:
            merged[key] = value
    new.data = type(new.data)(**merged)
    return str(new)


def _merge_named(old: Any, new: list[dict], key: str) -> list[dict]:
    if not isinstance(old, list):
        return new
    names = {c.get(key, "default") for c in new}
    return [*new, *(c for c in old if isinstance(c, Mapping) and c.get(key, "default") not in names)]


def _one_default(configs: list[Any]) -> list[Any]:
    """`configs` where the one named `default` (ours: the card's usage loads it) is the only default: another
    config marked `default: true` (`datasets.push_to_hub(config_name=..., set_default=True)`) loses the mark, said
    in one warning line. With both, `load_dataset` refused the repo ("several default configs")."""
    if not any(isinstance(c, Mapping) and c.get("config_name", "default") == "default" for c in configs):
        return configs
    kept = []
    for config in configs:
        if isinstance(config, Mapping) and config.get("config_name", "default") != "default" and config.get("default"):
            log.warning("the Hub card's config %r was the repo's default; the pushed `default` config is the default "
                        "now (load %r by its name)", config.get("config_name"), config.get("config_name"))
            config = {k: v for k, v in config.items() if k != "default"}
        kept.append(config)
    return kept


def _merge_dataset_info(old: Any, new: Any) -> Any:
    """Ours replaces the info of our config; infos of other configs are kept: a list of them, or the one
    mapping that names another config (what `datasets.push_to_hub(config_name=...)` writes to a new repo)."""
    if isinstance(old, Mapping) and old.get("config_name", "default") != "default":
        old = [old]
    if not isinstance(old, list):
        return new
    ours = [new] if isinstance(new, Mapping) else list(new)
    return _merge_named(old, [{"config_name": "default", **i} for i in ours], "config_name")


def secrets_to_withhold(token: str) -> dict[str, str]:
    """{what it is: value} of the secrets a push must not publish: the token, and the values of secret
    environment variables (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY` ...) a recipe or manifest may have caught."""
    found = {f"the value of ${k}": v for k, v in os.environ.items() if SECRET_ENV_RE.search(k) and len(v) >= 8}
    return {"your Hugging Face token": token, **found}


def _check_no_secret(files: list[Path], secrets: Mapping[str, str], commit_message: str) -> None:
    """Refuse to publish a text file, or a commit message, that contains a secret; name it, never its value."""
    for what, value in secrets.items():
        if value and value in commit_message:
            raise ValueError(f"the commit message contains {what}; remove it before pushing")
    for path in files:
        if path.suffix in TEXT_SUFFIXES and path.stat().st_size < 50 * 1024**2:
            text = path.read_text("utf-8", errors="replace")
            what = next((w for w, v in secrets.items() if v and v in text), None)
            if what:
                raise ValueError(f"{path} contains {what}; remove it before pushing")


def card_rows(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """{split: rows} a card's metadata describes (its default config's `dataset_info`); {} where it has none."""
    infos = metadata.get("dataset_info")
    infos = [infos] if isinstance(infos, Mapping) else infos or []
    info = next((i for i in infos if isinstance(i, Mapping) and i.get("config_name", "default") == "default"), {})
    return {s["name"]: s.get("num_examples") for s in info.get("splits") or [] if isinstance(s, Mapping)}


def check_card_matches_data(out_dir: Path, card_text: str) -> None:
    """Refuse a card whose splits or row counts differ from the shards (`load_dataset` would fail).

    Happens when data is rewritten after the card was rendered; the fix is to render the card again.
    """
    from textbookgen.card import validate_card_text

    described = card_rows(validate_card_text(card_text).data.to_dict())
    rows = split_rows(out_dir)
    if described:
        if described != rows:
            raise ValueError(
                f"{out_dir}/README.md describes splits {described} but data/ holds {rows}; "
                "render the card again after writing the data"
            )


def push(
    out_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    *,
    commit_message: str | None = None,
    revision: str = "main",
    timeout: float | None = None,
    create_pr: bool = False,
) -> str:
    """Create `repo_id` (a dataset repo) if needed and commit the built folder in one commit; return its URL.

    `create_pr=True` commits to a new pull request against main instead, which needs only read access (an
    org's repo you cannot write to), and returns the pull request's URL (an open one of this user's, opened from
    main's current head, that holds exactly these files already, opened by a push whose answer was lost, is
    returned instead: `_proposing_pull`);
    `revision="refs/pr/N"` pushes onto that pull request while it is open. Both go to an existing repo, compare with the head they commit on
    (main's, the pull request's), and cannot change the repo's visibility (`private`).

    `private=True` makes the repo private, a new one or an existing public one (before anything is
    committed); `private=False` never makes an existing private repo public: that is for its owner to do
    on the Hub. A `revision` other than main is created from main if missing. A push that changes
    nothing makes no commit and returns the head's URL. Raises PushConflictError when the repo moved
    during the push (rerun to merge with the new head), ValueError for a bad repo id or a folder with
    nothing to publish (no shards, or a split with no rows, which `load_dataset` cannot load) or a `revision`
    that is no branch name (`check_branch`),
    PermissionError for a missing or refused token or a repo you cannot write, and ConnectionError when
    the Hub cannot be reached, fails, or leaves a request unanswered for `timeout` seconds (default
    `$TEXTBOOKGEN_HUB_TIMEOUT` or 60; rerun: uploaded files are not sent again), OSError (one line, the Hub's
    reason) for another request it refuses, and HubInterrupted on
    Ctrl-C (at once, even mid-upload; before the commit, nothing is committed).

    Files are uploaded first (`preupload_lfs_files`, in the background: see `_in_background`), then the
    commit is sent on its own, so Ctrl-C during the uploads cannot be followed by a commit. Without
    `commit_message`, the message says what changed since the repo's head (`_what_changed`).
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    check_repo_id(repo_id)
    check_branch(revision)
    _check_proposal(revision, create_pr, private)
    seconds = hub_timeout(timeout)
    out_dir = Path(out_dir)
    splits = splits_of(out_dir)
    if not splits:
        hint = (f"; it is a build folder: push its dataset folder, {out_dir / 'dataset'}"
                if splits_of(out_dir / "dataset") else "")
        raise ValueError(f"{out_dir} has no data/{{split}}-NNNNN-of-NNNNN.parquet shards to push{hint}")
    empty = [split for split, n in split_rows(out_dir).items() if not n]
    if empty:
        raise ValueError(f"{out_dir}: split(s) {empty} have no rows; load_dataset cannot load an empty split")
    if not (out_dir / "README.md").is_file():
        raise ValueError(f"{out_dir} has no README.md; render the card first (textbookgen.card.render_card)")
    secret = clean_token(token) or get_token()
    if not secret:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    files = publishable_files(out_dir)
    _check_no_secret(files, secrets_to_withhold(secret), commit_message or "")
    check_card_matches_data(out_dir, (out_dir / "README.md").read_text("utf-8"))
    _warn_incomplete(out_dir, repo_id)

    api = HfApi(endpoint=endpoint, token=secret)
    committing = False
    try:
        with request_timeout(seconds) as transfers, hub_errors(repo_id, api.endpoint, timeout=seconds,
                                                               revision=revision):
            info = _open_repo(api, repo_id, private, revision, out_dir, _card_repo(out_dir), create_pr)
            operations, old_card = _operations(api, repo_id, out_dir, files, set(splits), info)
            additions = [op for op in operations if isinstance(op, CommitOperationAdd)]
            opened = _proposing_pull(api, repo_id, info, operations) if create_pr else None
            if opened is not None:
                return opened
            log.info("pushing %d file(s), deleting %d, to %s@%s (parent %s)%s", len(additions),
                     len(operations) - len(additions), repo_id, revision, info.sha,
                     ", as a new pull request" if create_pr else "")  # fmt: skip
            _in_background(lambda: api.preupload_lfs_files(repo_id, additions, repo_type="dataset", revision=revision,
                                                           create_pr=create_pr, free_memory=False), transfers)
            # after the uploads, which hashed the shards (an Xet upload hashes as it sends): no second read
            records = _RowRecords(api, repo_id, info.sha)  # read once, if asked
            message = commit_message or _what_changed(api, repo_id, info, out_dir, old_card, additions, records)
            record = _rows_record(out_dir, additions, records, _same_shards(info, additions))
            committing = True
            url = _commit(api, repo_id, operations, message, revision, info.sha, create_pr, record)
    except KeyboardInterrupt:
        raise HubInterrupted(
            f"interrupted while opening a pull request on {repo_id}: it may have been opened; a rerun finds it "
            "(and prints its URL) rather than opening another, while it is open and opened from main's current head"
            if committing and create_pr else
            f"interrupted while committing to {repo_id}: the commit may have landed; rerun the push to make sure "
            "(it makes no second commit)" if committing else
            f"interrupted: nothing was committed to {repo_id}; rerun the push to publish it (files already "
            "uploaded are not sent again)"
        ) from None
    log.info("pushed %s", url)
    return url


def _check_proposal(revision: str, create_pr: bool, private: bool) -> None:
    """Refuse, before any request, what a pull request cannot do: target another branch than main (the client's
    `create_pr` opens it against the revision's branch, main by default), or change the repo's visibility."""
    if create_pr and revision != "main":
        raise ValueError(f"revision {revision!r}: create_pr opens a new pull request against main; push onto an "
                         "open one with revision='refs/pr/N' (--revision) instead")
    if private and (create_pr or PR_REF_RE.fullmatch(revision)):
        raise ValueError("private: a pull request cannot change the repo's visibility; its owner does that on the Hub")


def _proposing_pull(api: Any, repo_id: str, info: Any, operations: list[Any]) -> str | None:
    """The URL of an open pull request of this push's user against main, opened from main's current head `info`,
    whose head holds exactly the files `operations` would commit onto it (`_holds_tree`), said in one warning line;
    None where none does. A `create_pr` push whose answer was lost (the Hub opened the pull request, the client saw
    an error) opened a second one, with the same files, on every rerun. One opened from an older main is not taken:
    merged, it keeps main's newer version of a file this push sends, or conflicts. Another user's pull request is
    not taken either, and not read (`author=`, from `whoami`; all open ones where that fails). Open pull requests
    with other files are named in one line: a new one is opened, as asked, and `refs/pr/N` would push onto one."""
    from huggingface_hub import CommitOperationAdd

    adds = {op.path_in_repo: op for op in operations if isinstance(op, CommitOperationAdd)}
    gone = {op.path_in_repo for op in operations if not isinstance(op, CommitOperationAdd)}
    base = {s.rfilename: s for s in info.siblings or [] if s.rfilename not in gone}
    if _holds_tree(info, base, adds):  # main holds them: the client opens none (`_commit` says so)
        return None
    user = _user_name(api)
    others = []
    for pull in api.get_repo_discussions(repo_id, author=user, repo_type="dataset", discussion_type="pull_request",
                                         discussion_status="open"):
        if user is not None and pull.author != user:  # a Hub that ignores `author=`
            continue
        head = api.repo_info(repo_id, repo_type="dataset", revision=pull.git_reference, files_metadata=True)
        if _holds_tree(head, base, adds) and _proposes_onto(api, repo_id, pull, info.sha):
            log.warning("pull request #%d of %s (%s) already holds these files: none opened, nothing pushed",
                        pull.num, repo_id, pull.url)
            return pull.url
        others.append(f"#{pull.num}")
    if others:
        log.info("open pull request(s) %s of %s hold other files or were opened from an older main; opening a new "
                 "one (push onto one with revision='refs/pr/N', --revision)", ", ".join(others), repo_id)
    return None


def _user_name(api: Any) -> str | None:
    """The token's user name, which filters `_proposing_pull`'s pull requests; None (no filter) where `whoami`
    fails: the push does not need it."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return api.whoami()["name"]
    except (HfHubHTTPError, KeyError, TypeError) as err:
        log.debug("whoami failed (%s): open pull requests of any author are read", err)
        return None


def _proposes_onto(api: Any, repo_id: str, pull: Any, head: str) -> bool:
    """Whether `pull` targets main and main's head commit `head` is in its history (it was opened from, or
    brought up to, main's current head). The history is read up to the page holding `head`, near its top."""
    details = api.get_discussion_details(repo_id, pull.num, repo_type="dataset")
    if details.target_branch not in ("refs/heads/main", "main"):
        return False
    return any(commit["id"] == head for commit in _history(api, repo_id, pull.git_reference))


def _history(api: Any, repo_id: str, revision: str) -> Iterator[dict[str, Any]]:
    """The commits of `revision`'s history, newest first, as the Hub lists them (`id`, `message`, ...), a page
    (50 commits) requested only when the caller reaches it: `HfApi.list_repo_commits` requests every page
    before it returns, a request per 50 commits of a long-lived repo on each push. The same URL, headers and
    retries, through the client's public `paginate`, which follows the `Link: <...>; rel="next"` header."""
    from huggingface_hub.utils import build_hf_headers, paginate

    headers = build_hf_headers(token=api.token, library_name=api.library_name,
                               library_version=api.library_version, user_agent=api.user_agent, headers=api.headers)
    url = f"{api.endpoint}/api/datasets/{repo_id}/commits/{quote(revision, safe='')}"
    return paginate(url, params={}, headers=headers)


def _holds_tree(head: Any, base: Mapping[str, Any], adds: Mapping[str, Any]) -> bool:
    """Whether the files of `head` (a `repo_info(files_metadata=True)`) are `adds` (uploads) and, for every other
    path, `base`'s files (the same git blob): the tree a commit of `adds` onto `base` makes, no file more or less."""
    files = {s.rfilename: s for s in head.siblings or []}
    if files.keys() != base.keys() | adds.keys():
        return False
    return all(_same_file(adds[path], sibling) if path in adds else
               sibling.blob_id is not None and sibling.blob_id == base[path].blob_id
               for path, sibling in files.items())


def _operations(api: Any, repo_id: str, out_dir: Path, files: list[Path], splits: set[str],
                info: Any) -> tuple[list[Any], str | None]:
    """The commit's additions (the card merged with the Hub's) and deletions of the shards it replaces, and the
    Hub's card (None where the repo has none)."""
    from huggingface_hub import CommitOperationAdd

    from textbookgen.card import card_defaults

    remote = {s.rfilename for s in info.siblings or []}
    old_card = _read_file(api, repo_id, info.sha, "README.md") if "README.md" in remote else None
    card = merge_card(usage_for(repo_id, (out_dir / "README.md").read_text("utf-8")), old_card, card_defaults(out_dir))
    operations: list[Any] = []
    for path in files:
        rel = path.relative_to(out_dir).as_posix()
        content: Any = card.encode("utf-8") if rel == "README.md" else str(path)
        operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content))
    return operations + stale_deletions(remote, {op.path_in_repo for op in operations}, splits, old_card), old_card


def _rows_record(out_dir: Path, additions: list[Any], records: _RowRecords, same: set[str]) -> str:
    """The commit description that records each split's rows: `ROWS_MARK`, then `{split} {rows_digest}
    {shards_digest}` lines (`_shards_digest` of the shards' sha256, which the uploads computed). It lets a later
    push tell the same rows in other bytes (another parquet writer) from new rows without downloading a shard,
    and changes no file: a pull gives back the very files pushed. A split whose shards are the head's (`same`:
    `_same_shards`) and were recorded by a commit of its history (`records`: `_RowRecords`), takes that
    record's rows digest: its shards are not decoded again (a push over the same shards, a card or recipe change,
    decoded every one). New shards are decoded without reading the history."""
    shards: dict[str, dict[str, str]] = {}
    for op in additions:
        split = _shard_split(op.path_in_repo)
        if split:
            shards.setdefault(split, {})[op.path_in_repo] = op.upload_info.sha256.hex()
    lines = []
    for split, files in sorted(shards.items()):
        digest = _shards_digest(files)
        recorded = records.get((split, digest)) if split in same else None
        lines.append(f"{split} {recorded or _split_digest(out_dir, split)} {digest}")
    return "\n".join([ROWS_MARK, *lines])


class _RowRecords:
    """The rows records (`_rows_record`) of a head's history, {(split, shards digest): rows digest}, read as they
    are asked for: those of its commits (`_recorded_rows`), newest first, a page of the history at a time until
    one holds the key (the newest record of a key is on the first page that holds it: a later page cannot change
    it); then, for a key none of them holds, those of the pull requests merged into it (`_merged_into`, which
    needs every commit id of the history: it is read to its end by then), newest first, one at a time until one
    holds the key. A merge commit
    carries no record, and the pull request's own commits, which do, are not in main's history: the same rows as a
    merged pull request's, in other bytes, were called changed. A record names the shards it describes by their
    sha256: one read from a pull request's ref applies only where the head holds those very shards. Such records
    come from any pull request's author, not only from pushes of this user's: matched by the shards' sha256, they
    only word the commit message (`same rows`), and a wrong one changes no file. Where the pull requests cannot be
    read (a Hub or mirror without discussions, a refused listing), there is no such record, and a merged one whose
    `refs/pr/N` is missing holds none (older ones are still read): the push does not need one."""

    def __init__(self, api: Any, repo_id: str, head: str) -> None:
        self.api, self.repo_id, self.head = api, repo_id, head
        self.commits: set[str] = set()
        self.history: dict[tuple[str, str], str] = {}
        self.unread: Iterator[tuple[tuple[str, str], str]] | None = None  # the history's records not read yet
        self.merged: dict[tuple[str, str], str] = {}
        self.pulls: Iterator[int] | None = None

    def get(self, key: tuple[str, str | None]) -> str | None:
        if not key[1]:  # shards kept in git: no record names them
            return None
        if self.unread is None:
            self.unread = _recorded_rows(self.api, self.repo_id, self.head, self.commits)
        try:
            while key not in self.history and (record := next(self.unread, None)) is not None:
                self.history.setdefault(*record)  # newest first: a key keeps its newest record
        except BaseException:
            self.unread = None  # a failed page ends the generator: the next ask reads the history again from its top
            raise
        if key in self.history:
            return self.history[key]
        if self.pulls is None:
            self.pulls = _merged_into(self.api, self.repo_id, self.commits)
        while key not in self.merged and self._read_next_pull():
            pass
        return self.merged.get(key)

    def _read_next_pull(self) -> bool:
        """Add the records of the next pull request merged into the head to `merged`; False where none is left or
        the pull requests cannot be read (logged at debug level: the records only word the commit message). One
        whose `refs/pr/N` is missing (`_missing_ref`) holds no record, and older ones are still read."""
        from huggingface_hub.errors import HfHubHTTPError

        num = None
        try:
            num = next(self.pulls, None)
            if num is None:
                return False
            found = list(_recorded_rows(self.api, self.repo_id, f"refs/pr/{num}", set()))
        except HfHubHTTPError as err:
            if num is not None and _missing_ref(err):
                log.debug("pull request #%d of %s has no readable refs/pr/%d, so no rows record: %s", num,
                          self.repo_id, num, " ".join(str(err).split()))
                return True
            log.debug("the rows records of pull requests merged into %s of %s cannot be read: %s", self.head,
                      self.repo_id, " ".join(str(err).split()))
            self.pulls = iter(())
            return False
        for key, rows in found:
            self.merged.setdefault(key, rows)
        return True


def _missing_ref(err: Exception) -> bool:
    """Whether a Hub error says the revision read is not there (a 404, `RevisionNotFoundError` among them)."""
    from huggingface_hub.errors import RevisionNotFoundError

    response = getattr(err, "response", None)
    return isinstance(err, RevisionNotFoundError) or getattr(response, "status_code", None) == 404


#: Merged pull requests `_merged_into` looks at, newest first, for a rows record (one request each).
MERGED_PULLS_READ = 32


def _merged_into(api: Any, repo_id: str, commits: set[str]) -> Iterator[int]:
    """The numbers of the pull requests merged by one of `commits` (their merge commit's id), newest first, of
    the newest `MERGED_PULLS_READ` merged ones: pages of the list and one request per merged pull request for its
    merge commit, each when the caller asks for the next number."""
    pulls = api.get_repo_discussions(repo_id, repo_type="dataset", discussion_type="pull_request")  # no "merged"
    for pull in itertools.islice((p for p in pulls if p.status == "merged"), MERGED_PULLS_READ):
        if api.get_discussion_details(repo_id, pull.num, repo_type="dataset").merge_commit_oid in commits:
            yield pull.num


def _recorded_rows(api: Any, repo_id: str, head: str, commits: set[str]) -> Iterator[tuple[tuple[str, str], str]]:
    """((split, shards digest), rows digest) of each record (`_rows_record`) of `head`'s history, newest commit
    first, read a page of the history at a time as the caller asks for more (`_history`); the id of each commit
    read is added to `commits`."""
    for commit in _history(api, repo_id, head):
        commits.add(commit["id"])
        message = commit.get("message") or ""
        if ROWS_MARK in message:
            for split, rows, shards in _ROWS_LINE_RE.findall(message.split(ROWS_MARK, 1)[1]):
                yield (split, shards), rows


def _shards_digest(files: Mapping[str, str | None]) -> str | None:
    """One sha256 of a split's shards, {path: sha256 of its bytes}; None where one has no sha256 (a file the Hub
    keeps in git, not LFS, is described by its git blob id only)."""
    if not files or None in files.values():
        return None
    return hashlib.sha256("".join(f"{path} {sha}\n" for path, sha in sorted(files.items())).encode()).hexdigest()


def _split_digest(out_dir: Path, split: str) -> str:
    """`rows_digest` of a split's shards, read once per push (the record and the message both want it)."""
    shards = existing_shards(out_dir, split)
    return _digest_of(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in shards))


@functools.lru_cache(maxsize=16)
def _digest_of(files: tuple[tuple[str, int, int], ...]) -> str:
    """`rows_digest` of files named with their size and mtime: a rewritten file is another key."""
    return rows_digest([Path(name) for name, _, _ in files])


def rows_digest(paths: list[Path]) -> str:
    """A sha256 of the rows of parquet files read in order: the same for the same rows (values, column names and
    types, order) however they are cut into files, row groups and pages, and whichever writer wrote them (a
    string column is the same stored as string or large_string). Each column is hashed as streams that batches
    only append to (`_ColumnHash`), so where a batch ends changes nothing, and the rows are read a few MiB at a
    time (`_batches`)."""
    columns: dict[str, _ColumnHash] = {}
    rows = 0
    for path in paths:
        for batch in _batches(path):
            rows += batch.num_rows
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                columns.setdefault(name, _ColumnHash()).update(column)
    digest = hashlib.sha256(f"{rows}\n".encode())
    for name, column in columns.items():
        digest.update(json.dumps([name, *column.hexdigests()]).encode("utf-8"))
    return digest.hexdigest()


#: Bytes of rows, decoded, that `rows_digest` holds at a time.
DIGEST_BATCH_BYTES = 8 * 1024**2
#: Rows of a row group's first batch, which `_batch_rows` decodes to learn its rows' decoded size.
PROBE_ROWS = 256
#: Most rows `rows_digest` decodes at a time, whatever their size looks like: a row group's first rows may be short
#: and its later ones long (256 short rows, then 200,000 copies of one 4 KB text: in 65,536-row batches of 268 MB, a
#: 93 KB file's digest peaked at 1.03 GB RSS; 218 MB at 4,096, and 100 MB shards of short or long texts took as long).
DIGEST_BATCH_ROWS = 4096


def _batches(path: Path) -> Iterator[Any]:
    """The rows of a parquet file as record batches of about `DIGEST_BATCH_BYTES` decoded each (`_batch_rows`),
    cut row group by row group (row sizes differ between groups): batches of 65,536 rows held a whole row group of
    long documents, and a push's digest of 1 GB of shards peaked at 1.45 GB RSS. Column chunks are read through a
    1 MiB buffer, not whole."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, buffer_size=1 << 20) as parquet:
        for i in range(parquet.metadata.num_row_groups):
            yield from parquet.iter_batches(batch_size=_batch_rows(parquet, i), row_groups=[i])


def _batch_rows(parquet: Any, group: int) -> int:
    """Rows per batch of row group `group`: the fewest of `DIGEST_BATCH_ROWS`, the footer's estimate (its pages'
    uncompressed bytes per row) and what the decoded bytes per row of its first `PROBE_ROWS` rows give. The footer
    alone undercounts a dictionary-encoded column: 200,000 copies of one 4 KB text are a few KB of pages, and
    decoded in 65,536-row batches (268 MB each) an 89 KB file peaked at 1.74 GB RSS."""
    meta = parquet.metadata.row_group(group)
    rows = min(max(DIGEST_BATCH_BYTES * meta.num_rows // max(meta.total_byte_size, 1), 1), DIGEST_BATCH_ROWS)
    probe = next(parquet.iter_batches(batch_size=min(rows, PROBE_ROWS), row_groups=[group]), None)
    if probe is None or probe.num_rows == 0:
        return rows
    per_row = max(_decoded_bytes(probe) / probe.num_rows, 1.0)
    return max(min(rows, int(DIGEST_BATCH_BYTES / per_row)), 1)


def _decoded_bytes(batch: Any) -> int:
    """Bytes of `batch` once its dictionary columns are decoded, as `_ColumnHash` decodes them."""
    import pyarrow as pa

    return sum(c.dictionary_decode().nbytes if pa.types.is_dictionary(c.type) else c.nbytes for c in batch.columns)


class _ColumnHash:
    """One column's rows as three hashed byte streams: its null mask, then its values (fixed-width ones, or each
    string's length), then the bytes of its strings; a value whose type has no such layout (a list, a struct,
    a decimal) is its JSON line. Nulls hash as zero values in the values stream (the mask tells them apart):
    what a reader leaves in a null slot is not part of the rows."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.streams = [hashlib.sha256() for _ in range(3)]

    def update(self, column: Any) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        kind = _kind(column.type)
        if kind not in self.kinds:
            self.kinds.append(kind)
        mask, values, data = self.streams
        mask.update(pc.is_null(column).to_numpy(zero_copy_only=False).tobytes())
        if kind in ("string", "binary"):
            filled = pc.fill_null(column.cast(pa.large_binary()), b"")
            offsets = np.frombuffer(filled.buffers()[1], "<i8", len(filled) + 1, 8 * filled.offset)
            values.update(np.diff(offsets).astype("<i8").tobytes())
            if offsets[-1] > offsets[0]:
                data.update(memoryview(filled.buffers()[2])[offsets[0]:offsets[-1]])
        elif kind != "json":
            zero = pa.scalar(False if kind == "bool" else 0, column.type)
            filled = pc.fill_null(column, zero).to_numpy(zero_copy_only=False)
            values.update(filled.astype(filled.dtype.newbyteorder("<")).tobytes())
        else:
            for value in column.to_pylist():
                data.update(json.dumps(value, default=str, ensure_ascii=False).encode("utf-8") + b"\n")

    def hexdigests(self) -> list[str]:
        return ["/".join(self.kinds), *(stream.hexdigest() for stream in self.streams)]


def _kind(dtype: Any) -> str:
    """How `_ColumnHash` reads a column of arrow type `dtype`: `string` / `binary` (any offset width or view),
    the name of a number or bool type, or `json` for any other (its values' JSON, whatever its offset width)."""
    import pyarrow as pa

    t = pa.types
    if t.is_string(dtype) or t.is_large_string(dtype) or t.is_string_view(dtype):
        return "string"
    if t.is_binary(dtype) or t.is_large_binary(dtype) or t.is_binary_view(dtype) or t.is_fixed_size_binary(dtype):
        return "binary"
    if t.is_boolean(dtype) or t.is_integer(dtype) or t.is_floating(dtype):
        return str(dtype)
    return "json"


def _what_changed(api: Any, repo_id: str, info: Any, out_dir: Path, old_card: str | None,
                  additions: list[Any], records: _RowRecords) -> str:
    """The push's default commit message: what a data team reading the repo's history wants to know. Against
    the Hub's head: rows added or removed per split (from its card), rows changed where a split's count is the
    same but its shards are not the head's byte for byte (`_same_shards`) and hold other rows (`_same_rows`:
    the same rows in other bytes are "shards rewritten"), and the recipe fields whose value
    changed (named, never their values: a value could be a secret); on a first push, or over a card that gives
    no rows (a README written on the Hub), the splits and rows."""
    from huggingface_hub import DatasetCard

    rows = split_rows(out_dir)
    listed = ", ".join(f"{s} {n:,} rows" for s, n in rows.items())
    if old_card is None:
        return f"textbookgen: first upload, {listed}"
    try:
        before = card_rows(DatasetCard(old_card, ignore_metadata_errors=True).data.to_dict())
    except Exception:  # an unparsable remote card: merge_card already warned
        before = {}
    if before:
        same = _same_shards(info, additions)
        rewritten = {s for s in rows if s not in same and before.get(s) == rows[s]}
        same_rows = _same_rows(info, out_dir, rewritten, records) if rewritten else set()
        parts = [_row_change(s, before.get(s), rows.get(s), s in same, s in same_rows)
                 for s in dict.fromkeys([*rows, *before])]
    else:
        parts = [listed]
    remote = {s.rfilename for s in info.siblings or []}
    if "recipe.yaml" in remote and (out_dir / "recipe.yaml").is_file():
        fields = changed_fields(_read_file(api, repo_id, info.sha, "recipe.yaml"),
                                (out_dir / "recipe.yaml").read_text("utf-8"))
        if fields:
            more = f" and {len(fields) - 4} more" if len(fields) > 4 else ""
            parts.append(f"recipe: {', '.join(fields[:4])}{more} changed")
    parts = [p for p in parts if p]
    return "textbookgen: " + ("; ".join(parts) if parts else "same rows and recipe, card and files updated")


def _same_shards(info: Any, additions: list[Any]) -> set[str]:
    """The splits whose shards are the head's, byte for byte: the same paths, each the same file (`_same_file`,
    from `info`: `repo_info(files_metadata=True)`, which describes every file in its one request)."""
    remote: dict[str, dict[str, Any]] = {}
    for sibling in info.siblings or []:
        shard = _shard_split(sibling.rfilename)
        if shard:
            remote.setdefault(shard, {})[sibling.rfilename] = sibling
    local: dict[str, dict[str, Any]] = {}
    for op in additions:
        shard = _shard_split(op.path_in_repo)
        if shard:
            local.setdefault(shard, {})[op.path_in_repo] = op
    return {s for s, ops in local.items() if ops.keys() == remote.get(s, {}).keys()
            and all(_same_file(op, remote[s][path]) for path, op in ops.items())}


def _same_file(op: Any, sibling: Any) -> bool:
    """Whether an upload's content is the head's file: by the sha256 of its LFS (or Xet) object, or, for a file
    kept in git itself (a repo whose .gitattributes sends no parquet to LFS), by git's blob id of the same size.
    (Comparing by sha256 alone called such a file's unchanged rows changed.) A file the Hub describes by neither
    counts as changed: a commit message must not claim the same rows on a guess."""
    if sibling.lfs:
        return sibling.lfs.sha256 == op.upload_info.sha256.hex()
    content = op.path_or_fileobj
    if isinstance(content, bytes):  # the merged card
        return sibling.blob_id == hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    return _holds(Path(content), sibling)  # its size, then its blob id (read in chunks)


def _same_rows(info: Any, out_dir: Path, splits: set[str], recorded: _RowRecords) -> set[str]:
    """Of `splits` (shards other than the head's), those whose rows are the head's: a commit of the head's
    history, or a pull request merged into it, recorded (`_rows_record`, `recorded`: `_RowRecords`) the digest of
    the head's very shards (`_shards_digest`, by the LFS sha256 `info` gives), and it is the local rows'
    `rows_digest`. No shard is downloaded; a head whose shards no push recorded (committed otherwise, or by an
    older textbookgen) tells nothing, and its rows count as changed."""
    same = set()
    for split in sorted(splits):
        heads = {s.rfilename: s.lfs.sha256 if s.lfs else None for s in info.siblings or []
                 if _shard_split(s.rfilename) == split}
        rows = recorded.get((split, _shards_digest(heads) or ""))
        if rows is not None and rows == _split_digest(out_dir, split):
            same.add(split)
    return same


def _shard_split(path: str) -> str | None:
    """The split of a repo path `data/{split}-NNNNN-of-NNNNN.parquet`; None for any other file."""
    shard = SHARD_RE.match(path[len("data/"):]) if path.startswith("data/") else None
    return shard["split"] if shard else None


def _row_change(split: str, before: int | None, after: int | None, same_shards: bool,
                same_rows: bool = False) -> str | None:
    """`train +1,200 rows (11,200)`, `train rows changed, same count (11,200)` where only the shards tell, or
    `train same rows, shards rewritten (11,200)` where their rows are the head's (`same_rows`) in other bytes;
    None where the split's shards are the head's (`same_shards`)."""
    if before == after:
        if same_rows:
            return f"{split} same rows, shards rewritten ({after:,})"
        return None if same_shards else f"{split} rows changed, same count ({after:,})"
    if after is None:
        return f"{split} removed ({before:,} rows)"
    if before is None:
        return f"{split} added ({after:,} rows)"
    return f"{split} {after - before:+,} rows ({after:,})"


def changed_fields(old_yaml: str, new_yaml: str) -> list[str]:
    """The dotted names of the fields whose value differs between two recipes (added and removed ones too);
    [] where the old one is not a YAML mapping."""
    import yaml

    try:
        old, new = yaml.safe_load(old_yaml), yaml.safe_load(new_yaml)
    except yaml.YAMLError:
        return []
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return []
    return _differing(old, new, "")


def _differing(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [name for key in dict.fromkeys([*old, *new])
                for name in _differing(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def _open_repo(api: Any, repo_id: str, private: bool, revision: str, folder: Path | None = None,
               card_repo: str | None = None, create_pr: bool = False) -> Any:
    """The repo's info at `revision` (each file's size and LFS sha256 too), after creating the repo and the
    branch where missing; a pull request's (`create_pr`, or `revision` `refs/pr/N`, which must be open) goes
    to an existing repo, whose head it compares with: main's for a new one, the pull request's for `refs/pr/N`.

    Read first, create only when missing: an existing repo you may read but not write (someone
    else's) then fails at the first write with a 403, before anything is uploaded. `card_repo`: the repo
    the card of `folder` was rendered for; pushing elsewhere is said in one warning line.
    """
    from huggingface_hub.errors import RepositoryNotFoundError

    created = False
    pull = PR_REF_RE.fullmatch(revision)
    try:
        info = api.repo_info(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        if create_pr or pull:  # hub_errors: "not found", with what a token would change
            raise
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.repo_info(repo_id, repo_type="dataset")
        created = True
    if card_repo and card_repo != repo_id:  # a mistyped id, or another dataset's repo about to be replaced
        log.warning("%s's card names %s (the recipe's hub.repo_id), not %s%s; pushing there as asked, with the "
                    "card's load_dataset line naming %s", folder, card_repo, repo_id,
                    ", which did not exist: created it" if created else ", an existing repo", repo_id)
    if private and not info.private:  # an existing repo keeps its visibility unless we change it
        log.warning("%s is public; making it private, as asked", repo_id)
        api.update_repo_settings(repo_id, repo_type="dataset", private=True)
    if pull:
        _check_open_pull(api, repo_id, int(pull[1]))
    elif revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    return api.repo_info(repo_id, repo_type="dataset", revision=revision, files_metadata=True)


def _check_open_pull(api: Any, repo_id: str, num: int) -> None:
    """Refuse a push onto pull request `num` unless it is one and open (or a draft): a merged one's commits
    would land nowhere anyone reviews; a missing one is a FileNotFoundError naming it."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        pull = api.get_discussion_details(repo_id, num, repo_type="dataset")
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 404:
            raise FileNotFoundError(f"dataset repo {repo_id} has no pull request #{num} (refs/pr/{num}); open one "
                                    "with create_pr (--create-pr)") from None
        raise
    if not pull.is_pull_request:
        raise ValueError(f"{repo_id} #{num} is a discussion, not a pull request: refs/pr/{num} takes no commits")
    if pull.status not in ("open", "draft"):
        raise ValueError(f"pull request #{num} of {repo_id} is {pull.status}; open a new one with create_pr "
                         "(--create-pr)")


def _read_file(api: Any, repo_id: str, head: str, name: str) -> str:
    """A text file of the repo at `head`."""
    with tempfile.TemporaryDirectory(prefix="textbookgen-card-") as tmp:
        path = api.hf_hub_download(repo_id, name, repo_type="dataset", revision=head, cache_dir=tmp)
        return Path(path).read_text("utf-8", errors="replace")


def stale_deletions(remote: set[str], local: set[str], splits: set[str], old_card: str | None) -> list[Any]:
    """Deletions of the remote shards and plots the new build no longer has.

    A shard is ours to replace when its split is one of the build's, or one the Hub card's default
    config named (our previous push): that config is replaced by the new card's, so a split dropped
    from the build must not linger as unlisted stale data. Shards of other configs are left alone, and
    so are images under assets/ other than the card's plots (the owner's own).
    """
    from huggingface_hub import CommitOperationDelete

    from textbookgen.card import ASSETS_DIR, PLOTS

    ours = splits | _default_config_splits(old_card)
    plots = {f"{ASSETS_DIR}/{name}.png" for name in PLOTS}
    deletions = []
    for rel in sorted(remote - local):
        if _shard_split(rel) in ours or rel in plots:
            deletions.append(CommitOperationDelete(path_in_repo=rel))
    return deletions


def _default_config_splits(card_text: str | None) -> set[str]:
    """Split names of the `default` config of a card's `configs:` (none when absent or unparsable)."""
    from huggingface_hub import DatasetCard

    if not card_text:
        return set()
    try:
        configs = DatasetCard(card_text, ignore_metadata_errors=True).data.to_dict().get("configs") or []
    except Exception:  # an unparsable remote card: merge_card already warned
        return set()
    default = next((c for c in configs if isinstance(c, Mapping) and c.get("config_name") == "default"), {})
    files = default.get("data_files")
    entries = files if isinstance(files, list) else []
    return {e["split"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("split"), str)}


def _commit(api: Any, repo_id: str, operations: list[Any], message: str, revision: str, head: str,
            create_pr: bool = False, description: str = "") -> str:
    """One `create_commit` on top of `head`, or a new pull request from it (`create_pr`: its URL is returned),
    described by `description`; a concurrent commit raises PushConflictError."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description=description,
            repo_type="dataset",
            revision=revision,
            parent_commit=head,
            create_pr=create_pr,
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (409, 412):
            raise PushConflictError(
                f"{repo_id} changed while pushing (its head is no longer {head[:10]}); nothing was committed. "
                "Run the push again to merge with the new head."
            ) from err
        raise
    if create_pr and commit.pr_url is None:  # the client made no commit: every file is main's already
        log.warning("nothing differs from %s's main (%s): no pull request opened", repo_id, head[:12])
    return commit.pr_url or commit.commit_url


def pull_folder(repo_id: str) -> Path:
    """Where `pull` writes a repo by default: `./<name>`, the repo id's last part."""
    return Path(repo_id.rstrip("/").split("/")[-1])


def pull(
    repo_id: str,
    local_dir: str | Path | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    *,
    timeout: float | None = None,
    force: bool = False,
) -> Path:
    """Download a dataset repo (all files, at `revision`) into `local_dir` (default: `./<name>`); a request
    left unanswered for `timeout` seconds (as for `push`) is a ConnectionError; a missing (or private) repo,
    revision or file a FileNotFoundError naming it; Ctrl-C a HubInterrupted at once (files are written whole
    or not at all: one in flight is `.incomplete` under `local_dir/.cache`). Until every file is there the
    folder holds `dataset.PULL_INCOMPLETE`, and the readers of dataset folders (push, the trainer, the curation
    commands) refuse it: a pull cut short would otherwise pass for a smaller dataset. A folder whose data/ holds
    shards the repo lacks and no pull wrote is refused before any download (ValueError), and so is one holding a
    file of the repo's name with other content that no earlier pull of this repo wrote (the user's own, which
    the client would overwrite), or a file a pull wrote and the user edited since (overwritten, or deleted where
    the revision lacks it), unless `force` (`_check_no_overwrite`); a forced pull replaces an edited file the
    client would keep by its mtime too (`_outdate_edited`).

    The head is read first: `snapshot_download` turns a timeout or a 5xx into a many-line "cannot find
    the snapshot" error, or quietly returns what an earlier pull left in `local_dir`.
    """
    from huggingface_hub import HfApi, snapshot_download

    check_repo_id(repo_id)
    token = clean_token(token)
    seconds = hub_timeout(timeout)
    local_dir = Path(local_dir) if local_dir is not None else pull_folder(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with (request_timeout(seconds) as transfers,
              hub_errors(repo_id, api.endpoint, write=False, timeout=seconds, revision=revision)):
            info = api.repo_info(repo_id, repo_type="dataset", revision=revision, files_metadata=True)
            head, files = info.sha, {s.rfilename for s in info.siblings or []}
            _check_no_foreign_shards(local_dir, files, repo_id)
            if force:
                _outdate_edited(local_dir, info)
            else:
                _check_no_overwrite(api, local_dir, info, repo_id)
            (local_dir / PULL_RECORD).parent.mkdir(parents=True, exist_ok=True)
            (local_dir / PULL_RECORD).write_text(f"{repo_id}\n", encoding="utf-8")  # the files pulled are its
            mark = local_dir / PULL_INCOMPLETE  # until every file is there; readers of the folder refuse it
            mark.write_text(f"{repo_id}@{head}\n", encoding="utf-8")
            path = _in_background(lambda: snapshot_download(repo_id, repo_type="dataset", revision=head,
                                                            local_dir=local_dir, token=token, endpoint=endpoint),
                                  transfers)
            stale = _drop_stale(local_dir, files)
            mark.unlink()
    except KeyboardInterrupt:
        raise HubInterrupted(f"interrupted: the pull into {local_dir} did not finish; rerun it to complete the folder "
                             "(files already downloaded are not fetched again)") from None
    if stale:
        log.warning("removed %d file(s) an earlier pull left in %s that %s@%s does not have: %s", len(stale),
                    local_dir, repo_id, head[:12], ", ".join(stale[:5]) + (", ..." if len(stale) > 5 else ""))
    log.info("pulled %s into %s", repo_id, path)
    return Path(path)


def _warn_incomplete(out_dir: Path, repo_id: str) -> None:
    """One warning line when the build's manifest says requests gave no document: `build` holds such a dataset
    back unless asked (--push-incomplete), and a plain `textbookgen push` of its folder should not publish it
    unremarked (its card says it is incomplete)."""
    try:
        incomplete = json.loads((out_dir / "manifest.json").read_text("utf-8")).get("incomplete")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(incomplete, dict):
        log.warning("pushing an incomplete dataset to %s: %s of %s requests gave no document (its card says so); "
                    "finish the build (rerun `textbookgen build`) to publish it whole", repo_id,
                    incomplete.get("missing", "?"), incomplete.get("requests", "?"))


def _check_no_foreign_shards(local_dir: Path, files: set[str], repo_id: str) -> None:
    """Refuse, before any download, a pull into a folder whose data/ holds shards the repo lacks and no earlier
    pull wrote (another build's, written there by hand): the pulled shards would sit beside them, and every
    reader of the folder would take both for one dataset (rows added up, and no error)."""
    pulled = local_dir / ".cache" / "huggingface" / "download"
    foreign = [p.name for p in existing_shards(local_dir)
               if f"data/{p.name}" not in files and not (pulled / "data" / f"{p.name}.metadata").is_file()]
    if foreign:
        raise ValueError(f"{local_dir}/data holds shards {repo_id} does not have and no pull wrote ("
                         f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): they would be read "
                         "with the pulled ones as one dataset; pull into an empty folder, or remove them")


def _check_no_overwrite(api: Any, local_dir: Path, info: Any, repo_id: str) -> None:
    """Refuse, before any download, a pull that would overwrite or delete a file of `local_dir` the user wrote.

    The client replaces a file of a repo file's name, whatever wrote it, and `_drop_stale` deletes the pulled
    files the head lacks. A file is the pull's to replace only where an earlier pull of `repo_id` wrote it (the
    client's metadata of it, and the folder's `PULL_RECORD` naming the repo; in a folder pulled before that
    record existed, the commit the metadata names being one of `repo_id`'s) and it still holds the bytes that
    pull wrote (`_unedited`), or where it holds the repo's bytes already (`_holds`), or where the client keeps it
    (`_kept`): nothing is lost. A pulled file the head lacks is the pull's to delete only while unedited (its
    metadata readable: else what a pull wrote is not known, and it is refused as such).
    `info`: the head's `repo_info(files_metadata=True)`."""
    record = local_dir / PULL_RECORD
    recorded = record.read_text("utf-8").strip() if record.is_file() else None
    meta_root = local_dir / ".cache" / "huggingface" / "download"
    commits: dict[str, bool] = {}
    foreign, edited = [], []
    for sibling in info.siblings or []:
        path, meta = local_dir / sibling.rfilename, meta_root / f"{sibling.rfilename}.metadata"
        if not path.is_file() or _kept(path, meta, sibling, info.sha) or _holds(path, sibling):
            continue
        if not _pulled(api, repo_id, recorded, meta, commits):
            foreign.append(sibling.rfilename)
        elif not _unedited(path, meta):
            edited.append(sibling.rfilename)
    files = {s.rfilename for s in info.siblings or []}
    gone = [(rel, meta) for rel, meta in _pulled_files(local_dir) if rel not in files and (local_dir / rel).is_file()]
    unreadable = [rel for rel, meta in gone if _download_metadata(meta) is None]  # what a pull wrote is not known
    stale = [rel for rel, meta in gone if rel not in unreadable and not _unedited(local_dir / rel, meta)]
    head = f"{repo_id}@{info.sha[:12]}"
    reasons = [f"{_names(foreign)}, which no pull of {repo_id} wrote: the pull would overwrite {_them(foreign)} "
               "with the repo's" if foreign else "",
               f"{_names(edited)}, edited since a pull wrote {_them(edited)}: the pull would overwrite "
               f"{_them(edited)} with the repo's" if edited else "",
               f"{_names(stale)}, edited since a pull wrote {_them(stale)}: the pull would delete {_them(stale)} "
               f"({head} lacks {_them(stale)})" if stale else "",
               f"{_names(unreadable)}, whose download metadata (in {meta_root}) cannot be read: the pull would "
               f"delete {_them(unreadable)} ({head} lacks {_them(unreadable)})" if unreadable else ""]
    if any(reasons):
        raise ValueError(f"{local_dir} holds {'; and '.join(r for r in reasons if r)}; move them away, pull into "
                         "another folder, or pass --force (force=True)")


def _outdate_edited(local_dir: Path, info: Any) -> None:
    """For a forced pull: date each file the client would keep (`_kept`) though its bytes are not those its metadata
    records (`_unedited`: an edit that left an old mtime, by `cp -p`, `mv` or a restore) past that metadata, so
    the client, by its own rule, fetches it again and `force` gives the repo's bytes it promises. The metadata
    stays: a forced pull cut short leaves the file known as pulled and edited (deleted, the rerun took it for the
    user's own). Reads every such file once."""
    meta_root = local_dir / ".cache" / "huggingface" / "download"
    for sibling in info.siblings or []:
        path, meta = local_dir / sibling.rfilename, meta_root / f"{sibling.rfilename}.metadata"
        found = _download_metadata(meta)  # None: the client keeps nothing by it
        if found is not None and path.is_file() and _kept(path, meta, sibling, info.sha) and not _unedited(path, meta):
            os.utime(path, (path.stat().st_atime, found[2] + 2))  # past the client's 1 s of slack


def _names(paths: list[str]) -> str:
    return f"{', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}"


def _them(paths: list[str]) -> str:
    return "them" if len(paths) > 1 else "it"


def _download_metadata(meta: Path) -> tuple[str, str, float] | None:
    """(commit, etag, timestamp) of the client's download metadata of a file (`huggingface_hub._local_folder`'s
    format, read without its lock file: a refused pull writes nothing); None where missing or unreadable."""
    try:
        commit, etag, stamp = meta.read_text("utf-8").splitlines()[:3]
        return commit.strip(), etag.strip(), float(stamp)
    except (OSError, ValueError):
        return None


def _kept(path: Path, meta: Path, sibling: Any, head: str) -> bool:
    """Whether the client leaves the file `path` as it is (by its own rule: metadata no older than the file,
    with 1 s of slack, naming the pulled commit or the repo file's etag): a file it keeps is not overwritten,
    and is not read here (a re-pull of an unchanged folder reads no shard)."""
    found = _download_metadata(meta)
    if found is None or path.stat().st_mtime - 1 > found[2]:
        return False
    etag = sibling.lfs.sha256 if sibling.lfs else sibling.blob_id
    return found[0] == head or found[1] == etag


def _unedited(path: Path, meta: Path) -> bool:
    """Whether `path` holds the bytes its download metadata records: the etag there is the LFS sha256 (64 hex
    digits) or git's blob id (40). Its mtime cannot tell: a copy may keep an old one, and an edit within a
    second of the pull passes the client's own check."""
    found = _download_metadata(meta)
    if found is None:
        return False
    return _file_hash(path, "sha256" if len(found[1]) == 64 else "git") == found[1]


def _file_hash(path: Path, kind: str) -> str:
    """The sha256 of a file's bytes, or (`kind` "git") git's blob id of them, read in chunks."""
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pulled_files(local_dir: Path) -> list[tuple[str, Path]]:
    """(repo path, client metadata) of each file an earlier pull downloaded into `local_dir`: files only (a
    repo folder `x.metadata/` is a directory there, not the metadata of a pulled `x`)."""
    meta_root = local_dir / ".cache" / "huggingface" / "download"
    return [(meta.relative_to(meta_root).as_posix().removesuffix(".metadata"), meta)
            for meta in sorted(meta_root.rglob("*.metadata")) if meta.is_file()]


def _pulled(api: Any, repo_id: str, recorded: str | None, meta: Path, commits: dict[str, bool]) -> bool:
    """Whether a pull of `repo_id` wrote the file whose client metadata is `meta`: the folder's `PULL_RECORD`
    names the repo (`recorded`), or, in a folder without one (pulled by a textbookgen older than the record), the
    commit the metadata names is one of `repo_id`'s (one request per commit, remembered in `commits`). Without
    that, every re-pull of such a folder was refused, saying no pull of the repo wrote the files it had pulled.
    Metadata the client cannot read (it drops it) tells nothing."""
    found = _download_metadata(meta)
    if found is None:
        return False
    if recorded is not None:
        return recorded == repo_id
    commit = found[0]
    if commit not in commits:
        commits[commit] = re.fullmatch(r"[0-9a-f]{40}", commit) is not None and _has_commit(api, repo_id, commit)
    return commits[commit]


def _has_commit(api: Any, repo_id: str, commit: str) -> bool:
    """Whether `commit` (an id) is one of `repo_id`'s: the Hub answers another repo's commit id 404."""
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        api.repo_info(repo_id, repo_type="dataset", revision=commit)
    except RevisionNotFoundError:
        return False
    return True


def _holds(path: Path, sibling: Any) -> bool:
    """Whether the file `path` has the repo file's bytes (its size first: no file is read for nothing)."""
    if sibling.size is None or path.stat().st_size != sibling.size:
        return False
    if sibling.lfs:
        return _file_hash(path, "sha256") == sibling.lfs.sha256
    return sibling.blob_id is not None and _file_hash(path, "git") == sibling.blob_id


def _drop_stale(local_dir: Path, keep: set[str]) -> list[str]:
    """Delete the files an earlier pull downloaded into `local_dir` (huggingface_hub's metadata under
    .cache/huggingface/download names them) that are not in `keep`, the repo's files at the pulled head: a
    shard left from an older revision or another repo would be read along with the new ones. Files the user
    put there themselves have no such metadata and stay; a pulled one edited since was refused before the
    download (`_check_no_overwrite`) unless forced. Returns the repo paths removed."""
    removed = []
    for rel, meta in _pulled_files(local_dir):
        if rel in keep:
            continue
        (local_dir / rel).unlink(missing_ok=True)
        meta.with_suffix(".lock").unlink(missing_ok=True)
        meta.unlink()
        removed.append(rel)
    return removed

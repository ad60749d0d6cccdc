"""A local fake of the Hugging Face Hub's HTTP API, for testing pushes and pulls without network.

The real `huggingface_hub` client talks to it (pass `endpoint=hub.endpoint` or set `HF_ENDPOINT`
before importing the client): repo create / info / delete / visibility, branches, preupload
(honouring .gitignore rules), the Git LFS batch API with the basic transfer (PUT + verify), YAML
validation, NDJSON commits to any branch (a stale `parentCommit` is answered 412, as the Hub does),
pull requests (a commit with `?create_pr=1` opens one at `refs/pr/N`, which takes further commits while open;
details, list, close/reopen and merge: the discussion endpoints `HfApi` uses for them),
refs, commit history, tree listing, paths-info, whoami and file resolve with the headers
`hf_hub_download` reads (`X-Repo-Commit`, `ETag`, `X-Linked-Etag`, `X-Linked-Size`, ranges). Xet is
switched off in the client while the fake runs, so large files take the LFS path.

Listings are paged as the Hub pages them: the commit history by page index (`p`, `limit`; a `Link: <...>;
rel="next"` header and `X-Total-Count`), the tree by an opaque `cursor` in the `Link` header, pull requests by
`p` (`count`/`start` in the body). `FakeHub(page_size=3)` makes every page that small, so a test meets many.

Permissions follow the Hub's: the token's user writes to its own namespace and its `orgs`; a repo of
someone else's (`hub.add_repo("them/data")`) is readable but answers writes 403, and is not found
(404) when private; any signed-in reader may open a pull request on it and commit onto their own.
`hub.inject(...)` fails requests (an HTTP status, a dropped connection, no answer ever, a commit that lands
but whose answer is lost); `hub.before(...)` runs a concurrent writer.

    with FakeHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("alice/data", repo_type="dataset")
        hub.commits("alice/data")        # [Commit, ...] newest last

State lives in memory and in a temporary folder (LFS objects), and is gone when the context exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import json
import logging
import mimetypes
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from aiohttp import web

DEFAULT_TOKEN = "hf_fakehubtoken0000000000000000000000"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
#: Files the Hub stores in LFS whatever their content (its default .gitattributes patterns, abridged).
LFS_PATTERNS = (
    "*.parquet", "*.arrow", "*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx",
    "*.npy", "*.npz", "*.pkl", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.wav", "*.mp3",
    "*.gz", "*.zip", "*.zst", "*.tar", "*.7z", "*.model", "*.msgpack", "*tfevents*",
)  # fmt: skip
LFS_SIZE = 10 * 1024 * 1024  # larger files go to LFS whatever their name
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")
#: The Hub's page sizes: commits (`limit` asks up to COMMITS_LIMIT_MAX), tree entries (fewer with
#: `expand=true`), discussions (a guess: the client follows `count`/`start` and never names a size).
COMMITS_PAGE, COMMITS_LIMIT_MAX = 50, 1000
TREE_PAGE, TREE_EXPAND_PAGE = 1000, 50
DISCUSSIONS_PAGE = 50


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a blob (what the Hub reports as `oid`/`blobId` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def gitignored(path: str, gitignore: str) -> bool:
    """Whether a .gitignore's rules exclude the file `path`, in git's semantics for the common cases.

    Supported: comments, `!` negation (the last matching rule wins), `dir/` (directories only; a file
    under an excluded directory stays excluded), a leading or inner `/` anchoring a rule to the root,
    `**` for any number of directories, and `*`, `?`, `[...]` within one path component. Backslash
    escapes are not.
    """
    rules = [line.rstrip() for line in gitignore.splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    parts = path.split("/")
    folders = ("/".join(parts[:depth]) for depth in range(1, len(parts)))
    in_excluded_folder = any(_excluded(rules, folder, is_dir=True) for folder in folders)
    return in_excluded_folder or _excluded(rules, path, is_dir=False)


def _excluded(rules: list[str], path: str, is_dir: bool) -> bool:
    """The verdict of the last of `rules` that matches `path` (not excluded when none does)."""
    verdict = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!")
        if pattern.endswith("/") and not is_dir:
            continue
        pattern = pattern.rstrip("/")
        anchored = "/" in pattern
        segments = pattern.lstrip("/").split("/")
        if _glob_match(segments if anchored else ["**", *segments], path.split("/")):
            verdict = not negated
    return verdict


def _glob_match(segments: list[str], parts: list[str]) -> bool:
    """Whether path components match glob segments, `**` standing for zero or more components."""
    if not segments:
        return not parts
    if segments[0] == "**":
        return any(_glob_match(segments[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], segments[0]) and _glob_match(segments[1:], parts[1:])


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree."""

    size: int
    sha256: str  # key of the content in the object store
    blob_id: str  # git oid: of the content (regular) or of the LFS pointer (LFS)
    lfs: bool

    @property
    def pointer_size(self) -> int:
        """Length of the file's LFS pointer (what the Hub reports as `pointerSize`)."""
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]
    operations: list[dict] = field(default_factory=list)  # what the commit did: [{key, path}]


@dataclass
class PullRequest:
    """A pull request: its commits go to the ref `refs/pr/{num}`, branched from `base_oid` of `target`."""

    num: int
    title: str
    author: str
    target: str  # the branch it would merge into
    base_oid: str  # the commit it was opened from
    created: str
    status: str = "open"  # open | closed | merged
    merge_commit: str | None = None
    events: list[dict] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # also each pull request's `refs/pr/N`
    pulls: dict[int, PullRequest] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)

    def pull_at(self, rev: str) -> PullRequest | None:
        """The pull request whose ref `rev` is (`refs/pr/N`), None for any other revision."""
        match = re.fullmatch(r"refs/pr/(\d+)", rev)
        return self.pulls.get(int(match[1])) if match else None


class InjectedDrop(ConnectionResetError):
    """Ends a request `inject(status=None | "hang")` answers with no answer."""


def _not_injected(record: logging.LogRecord) -> bool:
    """A filter of aiohttp's server log: its "Error handling request" traceback of an InjectedDrop (a fault asked
    for) is dropped; it was printed amid the output of the command under test."""
    return not (record.exc_info and isinstance(record.exc_info[1], InjectedDrop))


class FakeHubError(web.HTTPException):
    """An HTTP error in the Hub's format: JSON `{"error": ...}` plus the `X-Error-Code` header."""

    def __init__(self, status: int, message: str, code: str | None = None, **body: Any):
        self.status_code = status
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        text = json.dumps({"error": message, **body})
        super().__init__(headers=headers, text=text, content_type="application/json")


class FakeHub:
    """The fake Hub server, running on 127.0.0.1 in a background thread (a context manager).

    `token`/`user`: the one valid write token and its user name; requests with another token get 401,
    and writes without a token get 401. `orgs`: namespaces the user may also write to. `port`: 0 picks
    a free one. `page_size`: the entries on a page of every paged listing (commits, tree, pull requests),
    so that tests meet many pages; None: the Hub's own sizes.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, user: str = "tester", orgs: tuple[str, ...] = ("team",),
                 port: int = 0, page_size: int | None = None):  # fmt: skip
        if page_size is not None and page_size < 1:
            raise ValueError(f"page_size {page_size}: a page holds at least one entry")
        self._port = port
        self.page_size = page_size
        self.token = token
        self.user = user
        self.orgs = tuple(orgs)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), never headers or bodies
        self._faults: list[dict] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._objects: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._counter = 0
        self._saved_env: dict[str, str | None] = {}
        self._closing = False  # set on exit: ends injected hangs so the server can stop
        self.port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeHub is not running; use it as a context manager")
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeHub:
        self._closing = False
        self._tmp = tempfile.TemporaryDirectory(prefix="fakehub-")
        self._objects = Path(self._tmp.name) / "objects"
        self._objects.mkdir()
        self._disable_xet()
        logging.getLogger("aiohttp.server").addFilter(_not_injected)
        started = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as err:  # report start failures to the caller's thread
                errors.append(err)
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fakehub", daemon=True)
        self._thread.start()
        started.wait(30)
        if errors:
            raise RuntimeError(f"FakeHub failed to start: {errors[0]}") from errors[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(30)
        self._restore_xet()
        logging.getLogger("aiohttp.server").removeFilter(_not_injected)
        if self._tmp is not None:
            self._tmp.cleanup()
        self.port = None

    def _disable_xet(self) -> None:
        """Make the client use the LFS protocol: `hf_xet` talks to a CAS service that we do not fake."""
        from huggingface_hub import constants

        self._saved_env = {"HF_HUB_DISABLE_XET": os.environ.get("HF_HUB_DISABLE_XET")}
        self._saved_const = constants.HF_HUB_DISABLE_XET
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        constants.HF_HUB_DISABLE_XET = True

    def _restore_xet(self) -> None:
        from huggingface_hub import constants

        constants.HF_HUB_DISABLE_XET = self._saved_const
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    async def _start(self) -> None:
        app = web.Application(client_max_size=1024**4, middlewares=[self._middleware])
        app.add_routes(self._routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    # ---- test helpers ----------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def commits(self, repo_id: str, repo_type: str = "dataset", branch: str = "main") -> list[Commit]:
        """The branch's history, oldest first."""
        repo = self.repo(repo_id, repo_type)
        out, oid = [], repo.branches.get(branch)
        while oid:
            out.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return out[::-1]

    def read(self, repo_id: str, path: str, repo_type: str = "dataset", revision: str = "main") -> bytes:
        """Bytes of a file at a revision, straight from the store."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        if commit is None or path not in commit.files:
            raise KeyError(f"{path} not in {repo_id}@{revision}")
        return (self._objects / commit.files[path].sha256).read_bytes()

    def inject(self, method: str, path_regex: str, status: int | Literal["hang"] | None = 500, times: int = 1, *,
               after: bool = False) -> None:  # fmt: skip
        """Fail the next `times` requests matching method and path (to test retries and recovery).

        `status`: answer it instead of handling the request; None drops the connection without an
        answer (the client sees a network error, as after a timeout); "hang" reads the request and
        never answers (only a client timeout ends it; the request is not handled). `after=True`
        handles the request first and then fails: a commit lands but its answer is lost, as when a
        proxy times out.
        """
        self._faults.append({"method": method.upper(), "re": re.compile(path_regex), "status": status, "n": times,
                             "after": after})  # fmt: skip

    def before(self, method: str, path_regex: str, callback: Any, times: int = 1) -> None:
        """Run `callback(hub)` in the server before the next `times` matching requests are handled.

        E.g. `hub.before("POST", "/commit/", lambda h: h.commit_files(repo, {...}))` makes another writer
        commit between a client's read of the head and its own commit.
        """
        self._faults.append({"method": method.upper(), "re": re.compile(path_regex), "call": callback, "n": times})

    def clear_faults(self) -> None:
        """Drop what `inject` and `before` set up and no request used up yet (e.g. before a rerun that must pass)."""
        self._faults.clear()

    def commit_files(self, repo_id: str, files: dict[str, bytes], title: str = "concurrent commit",
                     repo_type: str = "dataset", branch: str = "main") -> str:  # fmt: skip
        """Commit `files` to `branch` directly in the server's state (another writer); return the new oid."""
        repo = self.repo(repo_id, repo_type)
        head = repo.commits[repo.branches[branch]]
        tree = dict(head.files)
        for path, data in files.items():
            tree[path] = FileEntry(len(data), self._store(data), git_blob_sha1(data), False)
        ops = [{"key": "file", "path": p} for p in files]
        return self._new_commit(repo, head, tree, title, "", "someone-else", ops, branch).oid

    def add_repo(self, repo_id: str, repo_type: str = "dataset", private: bool = False,
                 author: str | None = None) -> Repo:  # fmt: skip
        """Create a repo in any namespace, as its owner would (e.g. someone else's, to test a 403)."""
        if (repo_type, repo_id) in self.repos:
            raise ValueError(f"{repo_type} repo {repo_id} exists")
        repo = Repo(repo_type, repo_id, private)
        self.repos[(repo_type, repo_id)] = repo
        entry = FileEntry(len(GITATTRIBUTES), self._store(GITATTRIBUTES.encode()),
                          git_blob_sha1(GITATTRIBUTES.encode()), False)  # fmt: skip
        self._new_commit(repo, None, {".gitattributes": entry}, "initial commit", "", author or repo_id.split("/")[0],
                         [{"key": "file", "path": ".gitattributes"}])  # fmt: skip
        return repo

    # ---- plumbing --------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        failure = None
        for fault in self._faults:
            if fault["n"] > 0 and fault["method"] == request.method and fault["re"].search(request.path):
                fault["n"] -= 1
                if "call" in fault:
                    fault["call"](self)
                    continue
                failure = fault
                break
        if failure is None:
            try:
                response = await handler(request)
            except web.HTTPException as err:
                self.requests.append((request.method, request.path, err.status))
                raise
            self.requests.append((request.method, request.path, response.status))
            return response
        if failure["after"]:  # the request takes effect; only its answer is replaced
            with contextlib.suppress(web.HTTPException):
                await handler(request)
        self.requests.append((request.method, request.path, failure["status"] if isinstance(failure["status"], int) else 0))
        if failure["status"] is None:  # no answer at all: the client's connection breaks
            await request.read()
            request.transport.abort()
            raise InjectedDrop("injected dropped connection")
        if failure["status"] == "hang":  # the connection stays open, silent, until the client leaves
            await request.read()
            while request.transport is not None and not request.transport.is_closing() and not self._closing:
                await asyncio.sleep(0.01)
            raise InjectedDrop("injected hang: the client gave up")
        return web.json_response({"error": "injected fault"}, status=failure["status"])

    def _auth(self, request: web.Request, required: bool) -> str | None:
        """The user making the request (None when anonymous); 401 for a bad token or a missing one."""
        header = request.headers.get("Authorization", "")
        if not header:
            if required:
                raise FakeHubError(401, "Invalid username or password.")
            return None
        if header != f"Bearer {self.token}":
            raise FakeHubError(401, "Invalid credentials in Authorization header")
        return self.user

    def _repo(self, request: web.Request, write: bool = False) -> Repo:
        kind = REPO_TYPES.get(request.match_info.get("type", "models"), "model")
        repo_id = f"{request.match_info['ns']}/{request.match_info['name']}"
        user = self._auth(request, required=write)
        repo = self.repos.get((kind, repo_id))
        member = user is not None and repo_id.split("/")[0] in (self.user, *self.orgs)
        if repo is None or (repo.private and not member):
            # the Hub answers anonymous readers 401, signed-in ones 404 (a private repo of someone else's
            # too: its existence is not revealed); the client reads both as not found
            raise FakeHubError(404 if user else 401, "Repository not found", "RepoNotFound")
        if write and not member and not self._proposes(request, repo, user):
            raise FakeHubError(403, "You don't have the rights to write to this repository")
        return repo

    @staticmethod
    def _proposes(request: web.Request, repo: Repo, user: str | None) -> bool:
        """Whether a write of a reader is one the Hub lets anyone signed in make: opening a pull request
        (`?create_pr=1`), or a commit onto their own pull request's `refs/pr/N`."""
        if user is None:
            return False
        pull = repo.pull_at(request.match_info.get("rev", ""))
        return request.query.get("create_pr") == "1" or (pull is not None and pull.author == user)

    def _commit_at(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise FakeHubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self._objects / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def _new_commit(self, repo: Repo, parent: Commit | None, files: dict[str, FileEntry], title: str,
                    message: str, author: str, operations: list[dict], branch: str = "main") -> Commit:  # fmt: skip
        self._counter += 1
        seed = json.dumps([parent.oid if parent else None, sorted((p, f.blob_id) for p, f in files.items()),
                           title, message, self._counter, time.time_ns()])  # fmt: skip
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent.oid if parent else None,
            title=title,
            message=message,
            author=author,
            date=_now(),
            files=files,
            operations=operations,
        )
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    # ---- routes ----------------------------------------------------------------------------------
    def _routes(self) -> list[web.RouteDef]:
        t = "{type:models|datasets|spaces}"
        repo = "{ns}/{name}"
        return [
            web.get("/api/whoami-v2", self.whoami),
            web.post("/api/repos/create", self.create_repo),
            web.delete("/api/repos/delete", self.delete_repo),
            web.post("/api/validate-yaml", self.validate_yaml),
            web.get(f"/api/{t}/{repo}", self.repo_info),
            web.get(f"/api/{t}/{repo}/revision/{{rev}}", self.repo_info),
            web.put(f"/api/{t}/{repo}/settings", self.update_settings),
            web.post(f"/api/{t}/{repo}/preupload/{{rev}}", self.preupload),
            web.post(f"/api/{t}/{repo}/commit/{{rev}}", self.commit),
            web.get(f"/api/{t}/{repo}/refs", self.refs),
            web.post(f"/api/{t}/{repo}/branch/{{branch}}", self.create_branch),
            web.get(f"/api/{t}/{repo}/commits/{{rev}}", self.list_commits),
            web.get(f"/api/{t}/{repo}/discussions", self.list_discussions),
            web.get(f"/api/{t}/{repo}/discussions/{{num:\\d+}}", self.discussion),
            web.post(f"/api/{t}/{repo}/discussions/{{num:\\d+}}/status", self.discussion_status),
            web.post(f"/api/{t}/{repo}/discussions/{{num:\\d+}}/merge", self.merge),
            web.get(f"/api/{t}/{repo}/tree/{{rev}}", self.tree),
            web.get(f"/api/{t}/{repo}/tree/{{rev}}/{{path:.*}}", self.tree),
            web.post(f"/api/{t}/{repo}/paths-info/{{rev}}", self.paths_info),
            web.post("/{type:datasets|spaces}/{ns}/{name:[^/]+}.git/info/lfs/objects/batch", self.lfs_batch),
            web.post("/{ns}/{name:[^/]+}.git/info/lfs/objects/batch", self.lfs_batch),
            web.put("/_lfs/upload/{oid}/{size}", self.lfs_upload),
            web.post("/_lfs/verify", self.lfs_verify),
            web.route("*", "/{type:datasets|spaces}/{ns}/{name}/resolve/{rev}/{path:.+}", self.resolve),
            web.route("*", "/{ns}/{name}/resolve/{rev}/{path:.+}", self.resolve),
        ]

    async def whoami(self, request: web.Request) -> web.Response:
        user = self._auth(request, required=True)
        return web.json_response({
            "type": "user", "name": user, "fullname": user, "email": None,
            "orgs": [{"type": "org", "name": o, "fullname": o} for o in self.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fakehub", "role": "write"}},
        })  # fmt: skip

    async def create_repo(self, request: web.Request) -> web.Response:
        user = self._auth(request, required=True)
        body = await request.json()
        kind = body.get("type") or "model"
        namespace = body.get("organization") or user
        if namespace not in (self.user, *self.orgs):
            raise FakeHubError(403, f"You don't have the rights to create a repository under '{namespace}'")
        name = body.get("name") or ""
        if not re.fullmatch(r"[\w.\-]{1,96}", name) or name.startswith((".", "-")):
            raise FakeHubError(400, f"Invalid repository name: {name!r}")
        repo_id = f"{namespace}/{name}"
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        if (kind, repo_id) in self.repos:
            url = self._url(self.repos[(kind, repo_id)])
            raise FakeHubError(409, f"You already created this {kind} repo", url=url)
        repo = self.add_repo(repo_id, kind, private, author=user)
        return web.json_response({"url": self._url(repo), "name": repo_id, "id": repo_id})

    async def delete_repo(self, request: web.Request) -> web.Response:
        self._auth(request, required=True)
        body = await request.json()
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        if self.repos.pop((body.get("type") or "model", repo_id), None) is None:
            raise FakeHubError(404, "Repository not found", "RepoNotFound")
        return web.json_response({})

    async def update_settings(self, request: web.Request) -> web.Response:
        """`HfApi.update_repo_settings`: `{"visibility": "private"|"public"}`, or `{"private": bool}` as
        older clients send it. Gating is not faked: answered 400 rather than silently ignored."""
        repo = self._repo(request, write=True)
        body = await request.json()
        unknown = sorted(set(body) - {"visibility", "private"})
        if unknown or not body:
            raise FakeHubError(400, f"FakeHub implements only the visibility setting, got {sorted(body)}")
        visibility = body["visibility"] if "visibility" in body else "private" if body["private"] else "public"
        if visibility not in ("public", "private"):
            raise FakeHubError(400, f"Invalid visibility for a {repo.repo_type} repo: {visibility!r}")
        repo.private = visibility == "private"
        return web.json_response({})

    async def validate_yaml(self, request: web.Request) -> web.Response:
        body = await request.json()
        errors = card_metadata_errors(body.get("content", ""), body.get("repoType", "model"))
        return web.json_response({"errors": [{"message": e} for e in errors], "warnings": []},
                                 status=400 if errors else 200)  # fmt: skip

    async def repo_info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        commit = self._commit_at(repo, request.match_info.get("rev", "main"))
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=entry.size, blobId=entry.blob_id)
                if entry.lfs:
                    sib["lfs"] = {"size": entry.size, "sha256": entry.sha256,
                                  "pointerSize": entry.pointer_size}  # fmt: skip
            siblings.append(sib)
        card = {}
        if "README.md" in commit.files:
            card = front_matter((self._objects / commit.files["README.md"].sha256).read_text("utf-8"))[0] or {}
        return web.json_response({
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.oid, "lastModified": commit.date,
            "createdAt": self.commits(repo.repo_id, repo.repo_type)[0].date, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "cardData": card, "siblings": siblings, "usedStorage": sum(e.size for e in commit.files.values()),
        })  # fmt: skip

    async def preupload(self, request: web.Request) -> web.Response:
        repo = self._repo(request, write=True)
        commit = self._commit_at(repo, request.match_info["rev"])
        body = await request.json()
        gitignore = body.get("gitIgnore", "")  # sent when the commit adds a .gitignore, else the repo's
        if "gitIgnore" not in body and ".gitignore" in commit.files:
            gitignore = (self._objects / commit.files[".gitignore"].sha256).read_text("utf-8", "replace")
        files = []
        for f in body.get("files", []):
            path, size = f["path"], int(f["size"])
            sample = base64.b64decode(f.get("sample", ""))
            lfs = size >= LFS_SIZE or b"\0" in sample or any(fnmatch.fnmatch(path, p) or
                                                             fnmatch.fnmatch(PurePosixPath(path).name, p)
                                                             for p in LFS_PATTERNS)  # fmt: skip
            existing = commit.files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.blob_id
            mode = "lfs" if lfs else "regular"
            ignored = gitignored(path, gitignore)
            files.append({"path": path, "uploadMode": mode, "shouldIgnore": ignored, "oid": oid})
        return web.json_response({"files": files, "commitOid": commit.oid})

    async def lfs_batch(self, request: web.Request) -> web.Response:
        repo = self._repo(request)  # model repos' URL has no type: `_repo` defaults to models
        body = await request.json()
        ref = (body.get("ref") or {}).get("name")
        user = self._auth(request, required=True)
        pull = repo.pull_at(ref) if ref else None
        # a member writes; a reader uploads for a pull request: its own (`refs/pr/N`), or one it opens (no ref)
        if repo.repo_id.split("/")[0] not in (self.user, *self.orgs) and ref and (pull is None or pull.author != user):
            raise FakeHubError(403, "You don't have the rights to write to this repository")
        if body.get("operation") != "upload":
            raise FakeHubError(400, "FakeHub only implements LFS uploads")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not (self._objects / oid).exists():
                item["actions"] = {
                    "upload": {"href": f"{self.endpoint}/_lfs/upload/{oid}/{size}", "expires_in": 3600},
                    "verify": {"href": f"{self.endpoint}/_lfs/verify", "expires_in": 3600},
                }
            objects.append(item)
        return web.json_response({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                                 content_type="application/vnd.git-lfs+json")  # fmt: skip

    async def lfs_upload(self, request: web.Request) -> web.Response:
        """Basic transfer: the object's bytes in one PUT, checked against the announced oid and size."""
        oid, size = request.match_info["oid"], int(request.match_info["size"])
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise FakeHubError(400, f"bad LFS oid {oid!r}")
        digest, n = hashlib.sha256(), 0
        tmp = self._objects / f".{oid}.part"
        with tmp.open("wb") as out:
            async for chunk in request.content.iter_chunked(1 << 20):
                digest.update(chunk)
                n += len(chunk)
                out.write(chunk)
        if digest.hexdigest() != oid or n != size:
            tmp.unlink()
            raise FakeHubError(400, f"LFS upload does not match: oid {oid} size {size}, got {digest.hexdigest()} {n}")
        tmp.replace(self._objects / oid)
        return web.Response(status=200)

    async def lfs_verify(self, request: web.Request) -> web.Response:
        body = await request.json()
        path = self._objects / body.get("oid", "")
        if not path.is_file() or path.stat().st_size != int(body.get("size", -1)):
            raise FakeHubError(404, f"LFS object {body.get('oid')} not found")
        return web.json_response({})

    async def commit(self, request: web.Request) -> web.Response:
        repo = self._repo(request, write=True)
        create_pr = request.query.get("create_pr") == "1"
        if not request.content_type.startswith("application/x-ndjson"):
            raise FakeHubError(400, f"commit payload must be application/x-ndjson, got {request.content_type}")
        lines = [json.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        # Everything below runs without awaiting, so concurrent commits are serialised like on the Hub.
        if not lines or lines[0].get("key") != "header":
            raise FakeHubError(400, "first line of the commit payload must be the header")
        header = lines[0]["value"]
        rev = request.match_info["rev"]
        if rev not in repo.branches:
            raise FakeHubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        head = repo.commits[repo.branches[rev]]
        parent = header.get("parentCommit")
        pull = repo.pull_at(rev)
        if pull is not None and pull.status != "open":
            raise FakeHubError(400, f"Pull request #{pull.num} is {pull.status}: it takes no more commits")
        if create_pr:  # the pull request starts from `parentCommit` where given, else the branch's head
            if pull is not None:
                raise FakeHubError(400, f"Cannot open a pull request against {rev}: not a branch")
            head = self._commit_at(repo, parent) if parent is not None else head
        elif parent is not None and parent != head.oid:
            raise FakeHubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        operations = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise FakeHubError(400, f"unsupported encoding for {path}")
                data = base64.b64decode(value["content"])
                files[path] = FileEntry(len(data), self._store(data), git_blob_sha1(data), False)
            elif key == "lfsFile":
                oid = value["oid"]
                obj = self._objects / oid
                if not obj.is_file():
                    raise FakeHubError(422, f"LFS object {oid} for {path} was never uploaded")
                size = obj.stat().st_size
                files[path] = FileEntry(size, oid, git_blob_sha1(lfs_pointer(oid, size)), True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise FakeHubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    raise FakeHubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise FakeHubError(400, f"unknown commit operation {key!r}")
            operations.append({"key": key, "path": path})
        if "README.md" in files and files["README.md"] != head.files.get("README.md"):
            text = (self._objects / files["README.md"].sha256).read_text("utf-8", errors="replace")
            errors = card_metadata_errors(text, repo.repo_type)
            if errors:
                raise FakeHubError(400, "Invalid metadata in README.md: " + "; ".join(errors))
        user = self._auth(request, required=True)
        summary = header.get("summary", "")
        if create_pr:
            pull = PullRequest(len(repo.pulls) + 1, summary, user, rev, head.oid, _now())
            repo.pulls[pull.num] = pull
            rev = pull.ref
        new = self._new_commit(repo, head, files, summary, header.get("description", ""), user, operations, rev)
        url = f"{self._url(repo)}/commit/{new.oid}"
        answer = {"success": True, "commitOid": new.oid, "commitUrl": url, "hookOutput": ""}
        if pull is not None:
            pull.events.append(self._event(pull, "commit", user, {"subject": summary, "oid": new.oid}))
        if create_pr:
            answer["pullRequestUrl"] = f"{self._url(repo)}/discussions/{pull.num}"
        return web.json_response(answer)

    def _event(self, pull: PullRequest, kind: str, user: str, data: dict) -> dict:
        """A pull request's event as the discussion API gives it."""
        return {"id": f"{pull.num:04x}{len(pull.events):020x}", "type": kind, "createdAt": _now(),
                "author": {"name": user}, "data": data}

    def _pull(self, request: web.Request, repo: Repo) -> PullRequest:
        pull = repo.pulls.get(int(request.match_info["num"]))
        if pull is None:
            raise FakeHubError(404, f"Discussion #{request.match_info['num']} not found")
        return pull

    def _pull_json(self, repo: Repo, pull: PullRequest) -> dict:
        return {"num": pull.num, "title": pull.title, "status": pull.status, "isPullRequest": True,
                "createdAt": pull.created, "author": {"name": pull.author}, "pinned": False, "numComments": 0,
                "repo": {"name": repo.repo_id, "type": repo.repo_type}}

    async def list_discussions(self, request: web.Request) -> web.Response:
        """`HfApi.get_repo_discussions`: the pull requests, newest first, page `p` of them (the fake opens no
        plain discussions); `count` and `start` tell the client whether another page follows."""
        repo = self._repo(request)
        pulls = [self._pull_json(repo, p) for p in sorted(repo.pulls.values(), key=lambda p: -p.num)
                 if request.query.get("status") in (None, p.status) and request.query.get("type") != "discussion"]
        size = self.page_size or DISCUSSIONS_PAGE
        start = _query_int(request, "p", 0) * size
        return web.json_response({"discussions": pulls[start:start + size], "count": len(pulls), "start": start})

    async def discussion(self, request: web.Request) -> web.Response:
        """`HfApi.get_discussion_details` of a pull request: its status, target branch and events."""
        repo = self._repo(request)
        pull = self._pull(request, repo)
        changes: dict[str, Any] = {"base": f"refs/heads/{pull.target}"}
        if pull.merge_commit:
            changes["mergeCommitId"] = pull.merge_commit
        return web.json_response({**self._pull_json(repo, pull), "events": pull.events, "changes": changes,
                                  "filesWithConflicts": self._conflicts(repo, pull)})

    async def discussion_status(self, request: web.Request) -> web.Response:
        """`HfApi.change_discussion_status`: close or reopen (its author or a member)."""
        repo = self._repo(request)
        pull = self._pull(request, repo)
        user = self._auth(request, required=True)
        status = (await request.json()).get("status")
        if status not in ("open", "closed") or pull.status == "merged":
            raise FakeHubError(400, f"Cannot set pull request #{pull.num} ({pull.status}) to {status!r}")
        if user != pull.author and repo.repo_id.split("/")[0] not in (self.user, *self.orgs):
            raise FakeHubError(403, "You don't have the rights to change this pull request")
        pull.status = status
        pull.events.append(self._event(pull, "status-change", user, {"status": status}))
        return web.json_response({"newStatus": pull.events[-1]})

    async def merge(self, request: web.Request) -> web.Response:
        """`HfApi.merge_pull_request` (members only): the pull request's changes since it was opened are
        committed onto its target branch; a path the branch changed too is a conflict (409)."""
        repo = self._repo(request, write=True)
        pull = self._pull(request, repo)
        if pull.status != "open":
            raise FakeHubError(400, f"Pull request #{pull.num} is {pull.status}")
        if self._conflicts(repo, pull):
            raise FakeHubError(409, f"Pull request #{pull.num} has conflicts: {', '.join(self._conflicts(repo, pull))}")
        base, ours = repo.commits[pull.base_oid].files, repo.resolve(pull.ref).files
        target = repo.resolve(pull.target)
        files = {p: f for p, f in target.files.items() if not (p in base and p not in ours)}
        files.update({p: f for p, f in ours.items() if base.get(p) != f})
        ops = [{"key": "file", "path": p} for p in ours if base.get(p) != ours[p]]
        user = self._auth(request, required=True)
        new = self._new_commit(repo, target, files, f"Merge pull request #{pull.num}", "", user,
                               ops + [{"key": "deletedFile", "path": p} for p in base if p not in ours], pull.target)
        pull.status, pull.merge_commit = "merged", new.oid
        pull.events.append(self._event(pull, "status-change", user, {"status": "merged"}))
        return web.json_response({})

    @staticmethod
    def _conflicts(repo: Repo, pull: PullRequest) -> list[str]:
        """Paths both the pull request and its target branch changed, differently, since it was opened."""
        base, ours = repo.commits[pull.base_oid].files, repo.resolve(pull.ref).files
        theirs = repo.resolve(pull.target).files if pull.status == "open" else base
        return sorted(p for p in {*base, *ours, *theirs}
                      if base.get(p) != ours.get(p) and base.get(p) != theirs.get(p) and ours.get(p) != theirs.get(p))

    async def create_branch(self, request: web.Request) -> web.Response:
        """`HfApi.create_branch`: a new branch at `startingPoint` (a branch or commit; default main)."""
        repo = self._repo(request, write=True)
        branch = request.match_info["branch"]
        body = await request.json() if request.can_read_body else {}
        start = self._commit_at(repo, (body or {}).get("startingPoint") or "main")
        if branch.startswith("refs/"):
            raise FakeHubError(400, f"Invalid branch name: {branch!r} (refs/ names the Hub's own refs)")
        if branch in repo.branches:
            raise FakeHubError(409, f"Reference already exists: refs/heads/{branch}")
        if not re.fullmatch(r"[\w.\-/]+", branch) or re.fullmatch(r"[0-9a-f]{40}", branch):
            raise FakeHubError(400, f"Invalid branch name: {branch!r}")
        repo.branches[branch] = start.oid
        return web.json_response({})

    async def refs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()
                    if not b.startswith("refs/")]
        pulls = [{"name": p.ref, "ref": p.ref, "targetCommit": repo.branches[p.ref]} for p in repo.pulls.values()]
        return web.json_response({"branches": branches, "converts": [], "tags": [], "pullRequests": pulls})

    async def list_commits(self, request: web.Request) -> web.Response:
        """`HfApi.list_repo_commits`: the history of `rev`, newest first, page `p` of `limit` commits (the Hub's
        50 by default), with the Hub's `Link: <...>; rel="next"` to the next page and `X-Total-Count`."""
        repo = self._repo(request)
        commit = self._commit_at(repo, request.match_info["rev"])
        size = min(_query_int(request, "limit", self.page_size or COMMITS_PAGE), COMMITS_LIMIT_MAX)
        if size < 1:
            raise FakeHubError(400, f"limit {size}: must be at least 1")
        page = _query_int(request, "p", 0)
        out = []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                        "authors": [{"user": commit.author}], "date": commit.date})  # fmt: skip
            commit = repo.commits.get(commit.parent) if commit.parent else None
        headers = {"X-Total-Count": str(len(out))}
        if (page + 1) * size < len(out):
            headers["Link"] = f'<{request.url.update_query(p=page + 1, limit=size)}>; rel="next"'
        return web.json_response(out[page * size:(page + 1) * size], headers=headers)

    def _entry_json(self, path: str, entry: FileEntry) -> dict:
        item: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        return item

    def _folder_json(self, files: dict[str, FileEntry], folder: str) -> dict:
        inside = sorted((p, f.blob_id) for p, f in files.items() if p.startswith(folder + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(), "size": 0,
                "path": folder}  # fmt: skip

    async def tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        commit = self._commit_at(repo, request.match_info["rev"])
        base = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        prefix = base + "/" if base else ""
        if base and base in commit.files:
            return web.json_response([self._entry_json(base, commit.files[base])])
        under = {p: f for p, f in commit.files.items() if p.startswith(prefix)}
        if base and not under:
            raise FakeHubError(404, f"{base} does not exist on {request.match_info['rev']}", "EntryNotFound")
        out, folders = [], set()
        for path in sorted(under):
            parts = PurePosixPath(path[len(prefix):]).parts
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if folder not in folders and (recursive or depth == 1):
                    folders.add(folder)
                    out.append(self._folder_json(commit.files, folder))
            if recursive or len(parts) == 1:
                out.append(self._entry_json(path, under[path]))
        return self._tree_page(request, out)

    def _tree_page(self, request: web.Request, entries: list[dict]) -> web.Response:
        """The page of a tree listing that the query's `cursor` (opaque to the client: here the index of its first
        entry) starts, with a `Link: <...>; rel="next"` header carrying the next page's cursor, as the Hub pages
        `list_repo_tree` (1000 entries a page, 50 with `expand=true`)."""
        expand = request.query.get("expand", "").lower() in ("1", "true")
        size = self.page_size or (TREE_EXPAND_PAGE if expand else TREE_PAGE)
        cursor = request.query.get("cursor")
        try:
            start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
        except ValueError as err:
            raise FakeHubError(400, f"Invalid cursor {cursor!r}") from err
        if start < 0:
            raise FakeHubError(400, f"Invalid cursor {cursor!r}")
        headers = {}
        if start + size < len(entries):
            token = base64.urlsafe_b64encode(str(start + size).encode()).decode()
            headers["Link"] = f'<{request.url.update_query(cursor=token)}>; rel="next"'
        return web.json_response(entries[start:start + size], headers=headers)

    async def paths_info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        commit = self._commit_at(repo, request.match_info["rev"])
        if request.content_type == "application/json":
            paths = (await request.json()).get("paths", [])
        else:
            paths = (await request.post()).getall("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(self._entry_json(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(self._folder_json(commit.files, path))
        return web.json_response(out)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        repo = self._repo(request)
        commit = self._commit_at(repo, request.match_info["rev"])
        path = request.match_info["path"]
        entry = commit.files.get(path)
        if entry is None:
            err = FakeHubError(404, f"Entry not found: {path}", "EntryNotFound")
            err.headers["X-Repo-Commit"] = commit.oid
            raise err
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.blob_id}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{PurePosixPath(path).name}"',
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return ranged_response(request, (self._objects / entry.sha256).read_bytes(), headers, content_type)


def _query_int(request: web.Request, name: str, default: int) -> int:
    """The query parameter `name` as a non-negative integer (a page index or size); a 400 naming it otherwise."""
    value = request.query.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]+", value):
        raise FakeHubError(400, f"Invalid query parameter {name}={value!r}: expected a non-negative integer")
    return int(value)


def _now() -> str:
    """The time now as the Hub writes it (ISO 8601, UTC, `Z`)."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ranged_response(request: web.Request, data: bytes, headers: dict[str, str],
                    content_type: str) -> web.Response:  # fmt: skip
    """`data`, or the part a single `Range` asks for (206; 416 when it lies outside).

    Not a `web.FileResponse`: that replaces our content `ETag`, which `hf_hub_download` names its cache
    blob after, with one made of the file's mtime and size.
    """
    if "Range" not in request.headers:
        return web.Response(body=data, headers=headers, content_type=content_type)
    try:
        start, stop, _ = request.http_range.indices(len(data))
    except ValueError:  # a malformed Range
        start = stop = 0
    if start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{len(data)}"})
    headers = {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}
    return web.Response(status=206, body=data[start:stop], headers=headers, content_type=content_type)


def front_matter(text: str) -> tuple[dict | None, str | None]:
    """(metadata, error) of a README: the YAML between the leading `---` lines, if any."""
    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", text, re.DOTALL)
    if not match:
        return None, None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return None, f"YAML does not parse: {err}"
    if data is not None and not isinstance(data, dict):
        return None, "metadata must be a YAML mapping"
    return data or {}, None


def card_metadata_errors(text: str, repo_type: str) -> list[str]:
    """The checks the Hub applies to README metadata that a textbookgen card can get wrong."""
    data, error = front_matter(text)
    if error:
        return [error]
    if not data:
        return []
    errors = []
    for key in ("license", "language", "tags", "task_categories", "size_categories"):
        value = data.get(key)
        if value is not None and not (isinstance(value, str) or
                                      (isinstance(value, list) and all(isinstance(v, str) for v in value))):  # fmt: skip
            errors.append(f'"{key}" must be a string or a list of strings')
    configs = data.get("configs")
    if repo_type == "dataset" and configs is not None:
        if not isinstance(configs, list):
            errors.append('"configs" must be a list')
        else:
            for i, config in enumerate(configs):
                if not isinstance(config, dict) or "config_name" not in config:
                    errors.append(f'"configs[{i}]" must have a config_name')
                    continue
                for entry in _as_list(config.get("data_files")):
                    if isinstance(entry, dict):
                        if not SPLIT_RE.match(str(entry.get("split", ""))) or not entry.get("path"):
                            errors.append(f'"configs[{i}].data_files": bad entry {entry}')
                    elif not isinstance(entry, str):
                        errors.append(f'"configs[{i}].data_files": bad entry {entry}')
    return errors


def _as_list(value: Any) -> Iterator[Any]:
    if value is None:
        return iter(())
    return iter(value if isinstance(value, list) else [value])


def main() -> None:  # pragma: no cover - manual use
    """`python -m textbookgen.testing.fakehub [PORT]`: run the fake for trying `textbookgen push` by hand."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m textbookgen.testing.fakehub",
                                 description="A fake Hugging Face Hub on 127.0.0.1 for trying pushes by hand.")
    ap.add_argument("port", nargs="?", type=int, default=0, help="port to listen on (default: a free one)")
    with FakeHub(port=ap.parse_args().port) as hub:
        print(f"FakeHub at {hub.endpoint}  token={hub.token}  user={hub.user}")
        print(f"  HF_ENDPOINT={hub.endpoint} HF_TOKEN={hub.token} HF_HUB_DISABLE_XET=1 textbookgen push DIR REPO_ID")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()

"""The fake Hub speaks the protocol the real `huggingface_hub` client uses (no mocking of the client)."""

from __future__ import annotations

import hashlib
import os

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import disable_progress_bars, get_session

from textbookgen.testing.fakehub import FakeHub, git_blob_sha1, gitignored, lfs_pointer

disable_progress_bars()


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture()
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=hub.token)


def test_xet_disabled_only_while_running():
    before = constants.HF_HUB_DISABLE_XET
    with FakeHub():
        assert constants.HF_HUB_DISABLE_XET is True
    assert constants.HF_HUB_DISABLE_XET == before


def test_whoami_and_auth(hub, api):
    assert api.whoami()["name"] == "tester"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.endpoint, token="hf_wrong").whoami()
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.endpoint, token=False).create_repo("tester/x", repo_type="dataset")


def test_create_info_commit_tree_download(hub, api, tmp_path):
    url = api.create_repo("tester/d", repo_type="dataset")
    assert url.repo_id == "tester/d" and url.repo_type == "dataset"
    assert api.create_repo("tester/d", repo_type="dataset", exist_ok=True).repo_id == "tester/d"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("tester/d", repo_type="dataset")
    assert err.value.response.status_code == 409
    head = api.repo_info("tester/d", repo_type="dataset").sha
    big = bytes(range(256)) * 4096  # binary: goes through preupload -> LFS batch -> PUT -> verify
    info = api.create_commit(
        "tester/d",
        [CommitOperationAdd("notes/a.txt", b"hello\n"), CommitOperationAdd("blob.bin", big)],
        commit_message="add two files",
        repo_type="dataset",
        parent_commit=head,
    )
    commits = hub.commits("tester/d")
    assert [c.oid for c in commits][-1] == info.oid and commits[-1].parent == head
    assert {(o["key"], o["path"]) for o in commits[-1].operations} == {("file", "notes/a.txt"), ("lfsFile", "blob.bin")}
    assert any(r[0] == "PUT" and r[1].startswith("/_lfs/upload/") for r in hub.requests)

    assert api.repo_info("tester/d", repo_type="dataset").sha == info.oid
    assert api.list_repo_files("tester/d", repo_type="dataset") == [".gitattributes", "blob.bin", "notes/a.txt"]
    top = {e.path: e for e in api.list_repo_tree("tester/d", repo_type="dataset")}
    assert set(top) == {".gitattributes", "blob.bin", "notes"}
    assert top["blob.bin"].lfs.sha256 == hashlib.sha256(big).hexdigest() and top["blob.bin"].size == len(big)
    assert top["notes"].__class__.__name__ == "RepoFolder"
    (a,) = api.get_paths_info("tester/d", ["notes/a.txt"], repo_type="dataset")
    assert a.blob_id == git_blob_sha1(b"hello\n")
    assert api.file_exists("tester/d", "blob.bin", repo_type="dataset")
    assert not api.file_exists("tester/d", "missing.txt", repo_type="dataset")

    path = hf_hub_download("tester/d", "blob.bin", repo_type="dataset", endpoint=hub.endpoint,
                           token=hub.token, cache_dir=tmp_path / "cache")  # fmt: skip
    assert open(path, "rb").read() == big
    old = hf_hub_download("tester/d", ".gitattributes", repo_type="dataset", revision=head,
                          endpoint=hub.endpoint, token=hub.token, local_dir=tmp_path / "old")  # fmt: skip
    assert "*.parquet filter=lfs" in open(old).read()
    log = [c.title for c in api.list_repo_commits("tester/d", repo_type="dataset")]
    assert log == ["add two files", "initial commit"]
    assert api.list_repo_refs("tester/d", repo_type="dataset").branches[0].target_commit == info.oid


def test_stale_parent_commit_answered_412(hub, api):
    api.create_repo("tester/d", repo_type="dataset")
    stale = api.repo_info("tester/d", repo_type="dataset").sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id="tester/d", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit("tester/d", [CommitOperationAdd("two.txt", b"2")], commit_message="late",
                          repo_type="dataset", parent_commit=stale)  # fmt: skip
    assert err.value.response.status_code == 412
    assert [c.title for c in hub.commits("tester/d")][-1] != "late"


def test_invalid_card_metadata_refused(hub, api):
    api.create_repo("tester/d", repo_type="dataset")
    bad = b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train-x\n    path: data/*\n---\n"
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=bad, path_in_repo="README.md", repo_id="tester/d", repo_type="dataset")
    assert len(hub.commits("tester/d")) == 1


def test_private_repo_hidden_from_anonymous(hub, api, tmp_path):
    api.create_repo("tester/secret", repo_type="dataset", private=True)
    assert api.repo_info("tester/secret", repo_type="dataset").private is True
    anon = HfApi(endpoint=hub.endpoint, token=False)
    for repo_id in ("tester/secret", "tester/missing"):  # the Hub answers anonymous readers 401 for both
        with pytest.raises(RepositoryNotFoundError) as err:
            anon.repo_info(repo_id, repo_type="dataset")
        assert err.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/secret", ".gitattributes", repo_type="dataset", endpoint=hub.endpoint,
                        token=False, cache_dir=tmp_path)  # fmt: skip
    with pytest.raises(RepositoryNotFoundError) as err:  # a signed-in reader gets 404
        api.repo_info("tester/missing", repo_type="dataset")
    assert err.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("tester/secret", repo_type="dataset", revision="nope")


def test_download_cache_blob_is_named_by_content_etag(hub, api, tmp_path):
    api.create_repo("tester/d", repo_type="dataset")
    data = os.urandom(100)
    ops = [CommitOperationAdd("notes.txt", b"hello"), CommitOperationAdd("x.parquet", data)]
    api.create_commit("tester/d", ops, commit_message="add", repo_type="dataset")
    etags = {"notes.txt": git_blob_sha1(b"hello"), "x.parquet": hashlib.sha256(data).hexdigest()}
    for name, etag in etags.items():
        path = hf_hub_download("tester/d", name, repo_type="dataset", endpoint=hub.endpoint, token=hub.token,
                               cache_dir=tmp_path)  # fmt: skip
        assert os.path.basename(os.path.realpath(path)) == etag
    url = f"{hub.endpoint}/datasets/tester/d/resolve/main/notes.txt"
    part = get_session().get(url, headers={"Range": "bytes=1-"})
    assert (part.status_code, part.content, part.headers["Content-Range"]) == (206, b"ello", "bytes 1-4/5")
    assert get_session().get(url, headers={"Range": "bytes=9-"}).status_code == 416


def test_lfs_pointer_size_agrees_between_repo_info_and_tree(hub, api):
    api.create_repo("tester/d", repo_type="dataset")
    data = os.urandom(100)
    api.upload_file(path_or_fileobj=data, path_in_repo="x.parquet", repo_id="tester/d", repo_type="dataset")
    expected = len(lfs_pointer(hashlib.sha256(data).hexdigest(), len(data)))
    info = api.repo_info("tester/d", repo_type="dataset", files_metadata=True)
    assert [s.lfs.pointer_size for s in info.siblings if s.lfs] == [expected]
    tree = api.list_repo_tree("tester/d", repo_type="dataset")
    assert [e.lfs.pointer_size for e in tree if e.lfs] == [expected]


def test_preupload_honours_gitignore(hub, api):
    api.create_repo("tester/d", repo_type="dataset")
    gitignore = b"# build output\n*.log\n!keep.log\nbuild/\n/top.tmp\ndocs/**/*.md\n"
    names = ["debug.log", "keep.log", "build/x.txt", "src/build/y.txt", "top.tmp", "sub/top.tmp",
             "docs/a/b/c.md", "ok.txt"]  # fmt: skip
    ops = [CommitOperationAdd(".gitignore", gitignore)] + [CommitOperationAdd(n, b"x") for n in names]
    api.create_commit("tester/d", ops, commit_message="with it", repo_type="dataset")  # sent as gitIgnore
    kept = [".gitattributes", ".gitignore", "keep.log", "ok.txt", "sub/top.tmp"]
    assert api.list_repo_files("tester/d", repo_type="dataset") == kept
    later = [CommitOperationAdd("later.log", b"x"), CommitOperationAdd("later.txt", b"x")]
    api.create_commit("tester/d", later, commit_message="later", repo_type="dataset")  # the repo's .gitignore
    assert [op._should_ignore for op in later] == [True, False]
    assert api.list_repo_files("tester/d", repo_type="dataset") == sorted([*kept, "later.txt"])


@pytest.mark.parametrize(
    ("path", "rules", "ignored"),
    [
        ("a/b.log", "*.log", True),
        ("a/b.log", "*.log\n!b.log", False),
        ("dir/x", "dir/", True),
        ("dir", "dir/", False),  # a file, not a directory
        ("dir/x.log", "dir/\n!x.log", True),  # a file in an ignored directory cannot be re-included
        ("a/top", "/top", False),
        ("a/b/c", "a/**/c", True),
        ("a/c", "a/**/c", True),
        ("x1.txt", "x[0-9].txt", True),
        ("#x", "#x", False),
    ],
)
def test_gitignored(path, rules, ignored):
    assert gitignored(path, rules) is ignored


def test_update_repo_settings_changes_visibility(hub, api):
    from huggingface_hub.utils import get_session, hf_raise_for_status

    api.create_repo("tester/d", repo_type="dataset")
    api.update_repo_settings("tester/d", repo_type="dataset", private=True)
    assert api.repo_info("tester/d", repo_type="dataset").private is True
    with pytest.raises(RepositoryNotFoundError):  # private now: hidden from anonymous readers
        HfApi(endpoint=hub.endpoint, token=False).repo_info("tester/d", repo_type="dataset")
    url, auth = f"{hub.endpoint}/api/datasets/tester/d/settings", {"Authorization": f"Bearer {hub.token}"}
    hf_raise_for_status(get_session().put(url, headers=auth, json={"private": False}))  # older clients' form
    assert api.repo_info("tester/d", repo_type="dataset").private is False
    with pytest.raises(HfHubHTTPError, match="only the visibility"):
        api.update_repo_settings("tester/d", repo_type="dataset", gated="auto")
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.endpoint, token=False).update_repo_settings("tester/d", repo_type="dataset", private=True)
    assert hub.repo("tester/d").private is False


def test_transient_errors_are_retried_by_the_client(hub, api):
    api.create_repo("tester/d", repo_type="dataset")
    hub.inject("POST", r"/preupload/", 503, times=2)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="tester/d", repo_type="dataset")
    statuses = [s for m, p, s in hub.requests if "/preupload/" in p]
    assert statuses == [503, 503, 200]
    assert hub.read("tester/d", "x.txt") == b"x"


def test_commits_to_a_branch_leave_main_alone(hub, api):
    api.create_repo("tester/d", repo_type="dataset")
    main = api.repo_info("tester/d", repo_type="dataset").sha
    api.create_branch("tester/d", branch="dev", repo_type="dataset")
    api.create_branch("tester/d", branch="dev", repo_type="dataset", exist_ok=True)
    info = api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="tester/d", repo_type="dataset",
                           revision="dev")  # fmt: skip
    assert api.repo_info("tester/d", repo_type="dataset").sha == main
    assert api.repo_info("tester/d", repo_type="dataset", revision="dev").sha == info.oid
    assert [c.title for c in hub.commits("tester/d", branch="dev")][-1].startswith("Upload x.txt")
    refs = {b.name: b.target_commit for b in api.list_repo_refs("tester/d", repo_type="dataset").branches}
    assert refs == {"main": main, "dev": info.oid}
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="y.txt", repo_id="tester/d", repo_type="dataset",
                        revision="nope")  # fmt: skip


def test_repos_of_someone_else(hub, api):
    """Readable but not writable when public (403 on write); not even revealed when private (404)."""
    hub.add_repo("someone/open")
    hub.add_repo("someone/closed", private=True)
    assert api.repo_info("someone/open", repo_type="dataset").sha
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="someone/open", repo_type="dataset")
    assert err.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError) as err:
        api.repo_info("someone/closed", repo_type="dataset")
    assert err.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("someone/closed", repo_type="dataset", exist_ok=True)
    assert err.value.response.status_code == 403
    assert len(hub.commits("someone/open")) == 1


def test_injected_failures_dropped_connection_and_lost_answer(hub, api):
    api.create_repo("tester/d", repo_type="dataset")
    hub.inject("POST", r"/preupload/", None)  # a dropped connection: the client retries it
    api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id="tester/d", repo_type="dataset")
    assert [s for m, p, s in hub.requests if "/preupload/" in p] == [0, 200]
    hub.inject("POST", r"/commit/", 502, after=True)  # the commit lands, its answer is lost
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="two.txt", repo_id="tester/d", repo_type="dataset")
    assert err.value.response.status_code == 502
    assert hub.read("tester/d", "two.txt") == b"2"
    hub.inject("POST", r"/commit/", None)
    with pytest.raises(Exception, match="(?i)disconnect|connection"):
        api.upload_file(path_or_fileobj=b"3", path_in_repo="three.txt", repo_id="tester/d", repo_type="dataset")
    assert api.list_repo_files("tester/d", repo_type="dataset") == [".gitattributes", "one.txt", "two.txt"]


def test_injected_hang_reads_the_request_and_never_answers(hub, api):
    """`status="hang"`: only the client's timeout ends the request, which the Hub never handles."""
    import httpx2

    hub.inject("POST", r"/api/repos/create", "hang")
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(f"{hub.endpoint}/api/repos/create", json={"name": "d", "organization": "tester", "type": "dataset"},
                    headers={"Authorization": f"Bearer {hub.token}"}, timeout=0.5)  # fmt: skip
    assert hub.requests == [("POST", "/api/repos/create", 0)] and hub.repos == {}
    api.create_repo("tester/d", repo_type="dataset")  # the fault is spent: the next request is answered
    assert ("dataset", "tester/d") in hub.repos

"""push/pull against the fake Hub, through the real huggingface_hub client."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.utils import disable_progress_bars
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents
from typer.testing import CliRunner

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import check_rows, write_dataset
from textbookgen.hub import PushConflictError, merge_card, pull, push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()
REPO = "tester/quickstart"


def build(folder: Path, n: int = 60, shards: int = 1, seed: int = 0) -> Path:
    docs = sample_documents(n, seed=seed)
    write_dataset(docs, folder, max_shard_bytes=check_rows(docs.lazy())[1] // shards + 1)
    write_dataset(sample_documents(10, seed=seed + 100), folder, split="test")
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    return folder


def published(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")
    }


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


def test_push_lands_in_one_commit_and_pull_round_trips(hub, tmp_path):
    folder = build(tmp_path / "build", shards=2)
    url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    commits = hub.commits(REPO)
    assert [c.title for c in commits][0] == "initial commit" and len(commits) == 2
    assert url.endswith(commits[-1].oid)
    local = published(folder)
    assert {o["path"] for o in commits[-1].operations} == set(local)
    assert {o["key"] for o in commits[-1].operations if o["path"].endswith((".parquet", ".png"))} == {"lfsFile"}

    out = pull(REPO, tmp_path / "pulled", token=hub.token, endpoint=hub.endpoint)
    assert (out / ".gitattributes").is_file()
    assert published(out) == local  # byte-identical: shards, plots, card, recipe, manifest

    again = push(folder, REPO, token=hub.token, endpoint=hub.endpoint)  # unchanged build: no new commit
    assert len(hub.commits(REPO)) == 2 and again.endswith(commits[-1].oid)


def test_repush_with_fewer_shards_deletes_stale_ones_in_same_commit(hub, tmp_path):
    push(build(tmp_path / "a", shards=3), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "b", n=20, seed=7), REPO, token=hub.token, endpoint=hub.endpoint)
    last = hub.commits(REPO)[-1]
    deleted = sorted(o["path"] for o in last.operations if o["key"] == "deletedFile")
    assert deleted == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    files = HfApi(endpoint=hub.endpoint, token=hub.token).list_repo_files(REPO, repo_type="dataset")
    assert [f for f in files if f.startswith("data/")] == [
        "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]  # fmt: skip


def test_concurrent_push_is_refused_not_overwritten(hub, tmp_path):
    folder = build(tmp_path / "build")
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    build(folder, n=30, seed=3)  # a new build of the same folder
    # Another writer commits after our push read the head (our preupload is the next request).
    hub.before("POST", r"/preupload/", lambda h: h.commit_files(REPO, {"NOTES.md": b"theirs"}, "their commit"))
    with pytest.raises(PushConflictError, match="changed while pushing"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    titles = [c.title for c in hub.commits(REPO)]
    assert titles[-1] == "their commit" and len(titles) == 3  # ours did not land, theirs is intact
    assert hub.read(REPO, "NOTES.md") == b"theirs"
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)  # rerun merges on top of theirs
    assert hub.read(REPO, "NOTES.md") == b"theirs" and len(hub.commits(REPO)) == 4


def test_push_keeps_existing_card_metadata(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO, repo_type="dataset")
    existing = (
        "---\nlicense: mit\nviewer: true\nextra_gated_prompt: Agree to the terms.\ntags:\n- curated-by-hand\n"
        "configs:\n- config_name: raw\n  data_files: raw/*.jsonl\n---\n# Old body\n"
    )
    api.upload_file(path_or_fileobj=existing.encode(), path_in_repo="README.md", repo_id=REPO, repo_type="dataset")
    push(build(tmp_path / "build"), REPO, token=hub.token, endpoint=hub.endpoint)
    card = DatasetCard(hub.read(REPO, "README.md").decode())
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"  # the recipe's, which we set
    assert data["viewer"] is True and data["extra_gated_prompt"] == "Agree to the terms."  # kept
    assert {"curated-by-hand", "synthetic", "textbookgen"} <= set(data["tags"])
    assert [c["config_name"] for c in data["configs"]] == ["default", "raw"]
    assert "# Old body" not in card.text and "## Curation" in card.text


HUB_EDITED_CARD = (
    "---\nlicense: cc-by-4.0\nlanguage:\n- fr\npretty_name: My Curated Textbooks\n"
    "task_categories:\n- question-answering\nsize_categories:\n- 10K<n<100K\n---\n# Old body\n"
)


def load_tiny_recipe(folder: Path, **written: str):
    """A Recipe whose file sets only the required keys plus `written` (license, language...)."""
    from textbookgen.recipe import load_recipe

    folder.mkdir(parents=True, exist_ok=True)
    text = "name: tiny\nmodel: gpt-4o-mini\ntaxonomy: {source: 'builtin:commonsense'}\n"
    text += "mix: [{template: textbook_section}]\nsamples: 3\n"
    text += "".join(f"{key}: {value}\n" for key, value in written.items())
    (folder / "recipe.yaml").write_text(text)
    return load_recipe(folder / "recipe.yaml")


def push_over_hub_edited_card(hub, tmp_path: Path, recipe) -> dict:
    """Push a build rendered from `recipe` onto a repo whose card was edited on the Hub; the new metadata."""
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO, repo_type="dataset")
    api.upload_file(path_or_fileobj=HUB_EDITED_CARD.encode(), path_in_repo="README.md", repo_id=REPO,
                    repo_type="dataset")  # fmt: skip
    folder = tmp_path / "build"
    write_dataset(sample_documents(30), folder)
    render_card(folder, CARDS_DIR / "quickstart.md", recipe, {})
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    return DatasetCard(hub.read(REPO, "README.md").decode()).data.to_dict()


def test_push_keeps_hub_metadata_where_the_recipe_has_only_defaults(hub, tmp_path):
    """A recipe without `license:`/`language:` does not undo the owner's edits on the Hub; the data's
    own metadata (sizes, configs, features) is still the new build's."""
    data = push_over_hub_edited_card(hub, tmp_path, load_tiny_recipe(tmp_path / "recipe"))
    assert data["license"] == "cc-by-4.0" and data["language"] == ["fr"]
    assert data["pretty_name"] == "My Curated Textbooks" and data["task_categories"] == ["question-answering"]
    assert data["size_categories"] == ["n<1K"]
    assert data["configs"][0]["config_name"] == "default" and data["dataset_info"]["splits"][0]["num_examples"] == 30


def test_push_replaces_hub_metadata_the_recipe_sets(hub, tmp_path):
    recipe = load_tiny_recipe(tmp_path / "recipe", license="mit", language="German")
    data = push_over_hub_edited_card(hub, tmp_path, recipe)
    assert data["license"] == "mit" and data["language"] == ["de"]
    assert data["pretty_name"] == "My Curated Textbooks"  # the recipe's name is only a default title


def test_the_published_card_names_the_repo_it_was_pushed_to(hub, tmp_path):
    """A build without hub.repo_id renders `<user>/name` in the usage snippet; a folder may go elsewhere."""
    folder = tmp_path / "build"
    write_dataset(sample_documents(20), folder)
    render_card(folder, CARDS_DIR / "quickstart.md", {**RECIPE, "hub": {}}, MANIFEST)
    assert 'load_dataset("<user>/' in (folder / "README.md").read_text("utf-8")
    push(folder, "tester/elsewhere", token=hub.token, endpoint=hub.endpoint)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    card = Path(api.hf_hub_download("tester/elsewhere", "README.md", repo_type="dataset",
                                    cache_dir=tmp_path / "dl")).read_text("utf-8")
    assert 'load_dataset("tester/elsewhere", split="train")' in card and "<user>" not in card


#: The card `datasets.push_to_hub(repo, config_name="extra")` writes to a new repo: one config's info is a
#: mapping naming its config, not a list.
EXTRA_CONFIG_CARD = (
    "---\ndataset_info:\n  config_name: extra\n  features:\n  - name: text\n    dtype: string\n  splits:\n"
    "  - name: train\n    num_bytes: 18\n    num_examples: 2\n  download_size: 830\n  dataset_size: 18\n"
    "configs:\n- config_name: extra\n  data_files:\n  - split: train\n    path: extra/train-*\n---\n"
)


def test_push_keeps_the_dataset_info_of_a_config_pushed_by_datasets(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO, repo_type="dataset")
    api.upload_file(path_or_fileobj=EXTRA_CONFIG_CARD.encode(), path_in_repo="README.md", repo_id=REPO,
                    repo_type="dataset")  # fmt: skip
    push(build(tmp_path / "build"), REPO, token=hub.token, endpoint=hub.endpoint)
    data = DatasetCard(hub.read(REPO, "README.md").decode()).data.to_dict()
    assert [c["config_name"] for c in data["configs"]] == ["default", "extra"]
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    assert infos["extra"]["splits"] == [{"name": "train", "num_bytes": 18, "num_examples": 2}]
    assert {s["name"]: s["num_examples"] for s in infos["default"]["splits"]} == {"train": 60, "test": 10}


def test_a_repush_deletes_its_stale_plots_and_keeps_the_owners_images(hub, tmp_path):
    """The quality histogram of a build that no longer scores goes; an image the owner put under assets/ stays."""
    push(build(tmp_path / "scored"), REPO, token=hub.token, endpoint=hub.endpoint)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.upload_file(path_or_fileobj=b"\x89PNG logo", path_in_repo="assets/logo.png", repo_id=REPO, repo_type="dataset")
    folder = tmp_path / "unscored"
    write_dataset(sample_documents(30).with_columns(quality_score=None), folder)
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assets = {f for f in api.list_repo_files(REPO, repo_type="dataset") if f.startswith("assets/")}
    assert assets == {"assets/logo.png", "assets/length_histogram.png", "assets/topic_coverage.png"}


def test_the_published_card_keeps_the_other_datasets_its_template_loads(hub, tmp_path):
    """Only the card's own usage line is pointed at the repo pushed to; an example loading another dataset stays."""
    template = tmp_path / "mixed.md"
    template.write_text('{% extends "_base.md" %}\n{% block example %}\nMix it with web text:\n\n```python\n'
                        'web = load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train")\n```\n'
                        "{% endblock %}\n")  # fmt: skip
    folder = tmp_path / "build"
    write_dataset(sample_documents(20), folder)
    render_card(folder, template, {**RECIPE, "hub": {}}, MANIFEST)
    push(folder, "tester/mixed", token=hub.token, endpoint=hub.endpoint)
    card = hub.read("tester/mixed", "README.md").decode()
    assert 'load_dataset("tester/mixed", split="train")' in card
    assert 'web = load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT"' in card


def test_merge_card_keeps_a_default_edited_locally():
    """A default of `render_card` that the user changed in README.md before pushing is their choice."""
    new = "---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files: data/*\n---\nbody\n"
    old = "---\nlicense: cc-by-4.0\n---\nold\n"
    assert "license: cc-by-4.0" in merge_card(new, old, {"license": "mit"})
    assert "license: mit" in merge_card(new, old, {"license": "apache-2.0"})


def test_merge_card_without_old_card_is_identity():
    text = "---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files: data/*\n---\nbody\n"
    assert merge_card(text, None) == text


def test_token_never_written_or_logged(hub, tmp_path, monkeypatch, caplog, capsys):
    """Token from the environment; absent from every file we or the client wrote and from all logs."""
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    caplog.set_level(logging.DEBUG)
    folder = build(tmp_path / "build")
    push(folder, REPO, private=True, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "pulled", endpoint=hub.endpoint)
    assert (out / "README.md").is_file()
    assert HfApi(endpoint=hub.endpoint, token=hub.token).repo_info(REPO, repo_type="dataset").private
    written = [p for p in tmp_path.rglob("*") if p.is_file()] + [p for p in Path(hub._tmp.name).rglob("*")]
    assert len(written) > 15
    secret = hub.token.encode()
    for path in written:
        if path.is_file():
            assert secret not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert caplog.records and hub.token not in caplog.text
    assert hub.token not in captured.out + captured.err


def test_push_refuses_folder_with_token_inside(hub, tmp_path):
    folder = build(tmp_path / "build")
    (folder / "manifest.json").write_text(f'{{"oops": "{hub.token}"}}')
    with pytest.raises(ValueError, match="contains your Hugging Face token"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert ("dataset", REPO) not in hub.repos


def test_push_errors(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    with pytest.raises(ValueError, match="no data/"):
        push(tmp_path, REPO, token=hub.token, endpoint=hub.endpoint)
    folder = build(tmp_path / "build")
    with pytest.raises(PermissionError, match="HF_TOKEN"):
        push(folder, REPO, endpoint=hub.endpoint)
    (folder / "README.md").unlink()
    with pytest.raises(ValueError, match="README.md"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="user/name"):
        pull("not a repo", tmp_path / "x", endpoint=hub.endpoint)


def test_cli_push_and_pull(hub, tmp_path, monkeypatch):
    from textbookgen.cli import app

    monkeypatch.setenv("HF_TOKEN", hub.token)
    folder = build(tmp_path / "build")
    runner = CliRunner()
    res = runner.invoke(app, ["push", str(folder), REPO, "--private", "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert hub.commits(REPO)[-1].oid in res.output and hub.token not in res.output
    res = runner.invoke(app, ["pull", REPO, "--out", str(tmp_path / "p"), "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert published(tmp_path / "p")["README.md"] == (folder / "README.md").read_bytes()
    res = runner.invoke(app, ["push", str(tmp_path / "empty"), REPO, "--endpoint", hub.endpoint])
    assert res.exit_code != 0 and "no data/" in res.output
    assert os.environ["HF_TOKEN"] == hub.token
    hub.inject("GET", rf"^/api/datasets/{REPO}", "hang")
    res = runner.invoke(app, ["pull", REPO, "--out", str(tmp_path / "q"), "--endpoint", hub.endpoint, "--timeout", "0.5"])
    assert res.exit_code == 1 and "did not answer within 0.5 s" in res.output, res.output


def test_load_dataset_from_the_hub_after_push(hub, tmp_path, monkeypatch):
    """`datasets.load_dataset(repo_id)` reads what `push` committed, through the Hub API (HfFileSystem)."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.endpoint)
    push(build(tmp_path / "build", n=40, shards=2), REPO, private=True, endpoint=hub.endpoint)
    ds = datasets.load_dataset(REPO, cache_dir=str(tmp_path / "cache"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 40, "test": 10}
    assert ds["train"]["id"] == sample_documents(40)["id"].to_list()
    assert ds["train"].features["text"] == datasets.Value("string")


def test_push_private_makes_an_existing_public_repo_private_before_committing(hub, tmp_path):
    folder = build(tmp_path / "build")
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.repo(REPO).private is False
    write_dataset(sample_documents(20, seed=5), folder)  # a new build, now to be published privately
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    hub.requests.clear()
    push(folder, REPO, private=True, token=hub.token, endpoint=hub.endpoint)
    assert hub.repo(REPO).private is True
    writes = [p for _, p, _ in hub.requests if p.endswith("/settings") or "/commit/" in p]
    assert [p.endswith("/settings") for p in writes] == [True, False]  # private before the commit


def test_push_never_makes_a_private_repo_public(hub, tmp_path):
    HfApi(endpoint=hub.endpoint, token=hub.token).create_repo(REPO, repo_type="dataset", private=True)
    push(build(tmp_path / "build"), REPO, private=False, token=hub.token, endpoint=hub.endpoint)
    assert hub.repo(REPO).private is True


def test_push_refuses_a_split_with_no_rows(hub, tmp_path):
    """`write_dataset` refuses to write one; a shard written otherwise is refused here (load_dataset fails)."""
    import polars as pl

    from textbookgen.dataset import SCHEMA

    folder = build(tmp_path / "build")
    pl.DataFrame(schema=SCHEMA).write_parquet(folder / "data" / "test-00000-of-00001.parquet")
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    with pytest.raises(ValueError, match=rf"{folder}: split\(s\) \['test'\] have no rows"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert ("dataset", REPO) not in hub.repos


def test_push_refuses_card_out_of_date_with_data(hub, tmp_path):
    folder = build(tmp_path / "build")
    write_dataset(sample_documents(7, seed=42), folder)  # data rewritten after the card was rendered
    with pytest.raises(ValueError, match="render the card again"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert ("dataset", REPO) not in hub.repos


def test_cli_subprocess_reaches_the_fake_through_hf_endpoint(hub, tmp_path):
    """A fresh process configured only by environment (HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET)."""
    import subprocess
    import sys

    folder = build(tmp_path / "build", n=20)
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)
    exe = Path(sys.executable).parent / "textbookgen"
    if not exe.exists():
        pytest.skip("the textbookgen console script is not installed in this environment")
    cmd = [str(exe), "push", str(folder), REPO]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert hub.commits(REPO)[-1].oid in res.stdout
    assert hub.token not in res.stdout + res.stderr


def test_push_refuses_a_repo_id_without_namespace_before_any_request(hub, tmp_path):
    """The client would create `<you>/quickstart` from a bare name, then fail reading `quickstart`."""
    folder = build(tmp_path / "build")
    for bad in ("quickstart", "", "a b/c", "tester/-x", "tester/x/y"):
        with pytest.raises(ValueError, match="repo id must look like 'user/name'"):
            push(folder, bad, token=hub.token, endpoint=hub.endpoint)
    assert hub.repos == {} and hub.requests == []


def closed_port_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_push_errors_are_one_clear_line_without_the_token(hub, tmp_path, caplog):
    """Bad token, someone else's repo or namespace, Hub down: PermissionError/ConnectionError, one line each."""
    caplog.set_level(logging.DEBUG)
    folder = build(tmp_path / "build")
    hub.add_repo("someone/theirs")
    cases = [
        ("tester/x", {"token": "hf_" + "x" * 34}, PermissionError, r"refused the token \(401\).*HF_TOKEN"),
        ("someone/theirs", {}, PermissionError, r"no write access to someone/theirs \(403\)"),
        ("someone/new", {}, PermissionError, r"no write access to someone/new \(403\)"),
        ("tester/x", {"endpoint": closed_port_endpoint()}, ConnectionError, "cannot reach the Hub at http://127"),
    ]
    for repo_id, kwargs, error, message in cases:
        with pytest.raises(error, match=message) as err:
            push(folder, repo_id, **{"token": hub.token, "endpoint": hub.endpoint, **kwargs})
        assert "\n" not in str(err.value) and hub.token not in str(err.value)
    assert len(hub.commits("someone/theirs")) == 1 and ("dataset", "someone/new") not in hub.repos
    assert not [p for m, p, _ in hub.requests if m == "PUT"]  # refused before any upload
    assert hub.token not in caplog.text



def test_pull_of_a_missing_repo_revision_or_file_is_one_line_naming_it(hub, tmp_path, monkeypatch):
    """The client's RepositoryNotFoundError, RevisionNotFoundError and EntryNotFoundError say only "404 Client
    Error." on their first line; a private repo answers as a missing one (401 to no token, 404 to another user's)."""
    from textbookgen.cli import app

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no_token"))
    hub.add_repo("someone/secret", private=True)
    cases = [
        ("tester/nonexistent", {"token": hub.token}, r"^dataset repo tester/nonexistent not found at http://\S+; "
                                                     r"if it is private, the token has no access to it$"),
        ("tester/nonexistent", {}, r"^dataset repo tester/nonexistent not found at http://\S+; if it is private or "
                                   r"gated, a token may be needed: set HF_TOKEN or run `hf auth login`$"),
        ("someone/secret", {}, r"^dataset repo someone/secret not found .*a token may be needed"),
        ("someone/secret", {"token": hub.token}, r"^dataset repo someone/secret not found .*no access to it$"),
        ("someone/secret", {"token": hub.token, "revision": "v2"}, r"not found"),  # the repo, not the revision
    ]
    hub.add_repo("someone/open")
    cases.append(("someone/open", {"revision": "v2"}, r"^dataset repo someone/open has no revision 'v2' at http://"))
    for repo_id, kwargs, message in cases:
        with pytest.raises(FileNotFoundError, match=message):
            pull(repo_id, tmp_path / "out", endpoint=hub.endpoint, **kwargs)
    head = hub.repo("someone/open").branches["main"]
    hub.before("GET", "/resolve/", lambda h: h.repo("someone/open").commits[head].files.pop(".gitattributes"))
    with pytest.raises(FileNotFoundError, match=r"^dataset repo someone/open: file .gitattributes not found at "):
        pull("someone/open", tmp_path / "out", endpoint=hub.endpoint)
    res = CliRunner().invoke(app, ["pull", "tester/nonexistent", "--revision", "v1", "-o", str(tmp_path / "p"),
                                   "--endpoint", hub.endpoint])
    assert res.exit_code == 1 and res.output.startswith("error: dataset repo tester/nonexistent not found at ")
    assert len(res.output.splitlines()) == 1 and "Traceback" not in res.output, res.output

def test_interrupted_push_resumes_without_resending_uploaded_files(hub, tmp_path):
    folder = build(tmp_path / "build", shards=3)
    hub.inject("POST", r"/commit/", 500)
    with pytest.raises(ConnectionError, match="answered 500: nothing is half-published; rerun the push"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    uploaded = [p for m, p, _ in hub.requests if m == "PUT"]
    assert len(uploaded) >= 4 and len(hub.commits(REPO)) == 1  # shards and plots sent, nothing committed
    hub.requests.clear()
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert not [p for m, p, _ in hub.requests if m == "PUT"] and len(hub.commits(REPO)) == 2


def test_a_commit_whose_answer_is_lost_is_not_repeated_by_the_rerun(hub, tmp_path):
    folder = build(tmp_path / "build")
    hub.inject("POST", r"/commit/", 502, after=True)  # the commit lands; a proxy loses the answer
    with pytest.raises(ConnectionError, match="answered 502"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    landed = hub.commits(REPO)[-1]
    url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint)  # no empty or duplicate commit
    assert hub.commits(REPO)[-1] == landed and url.endswith(landed.oid)


def test_push_to_a_branch_creates_it_and_leaves_main_alone(hub, tmp_path):
    folder = build(tmp_path / "build")
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    main = hub.commits(REPO)[-1]
    build(folder, n=25, seed=4)
    url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint, revision="v2")
    assert hub.commits(REPO)[-1] == main and url.endswith(hub.commits(REPO, branch="v2")[-1].oid)
    assert hub.read(REPO, "README.md", revision="v2") != hub.read(REPO, "README.md")


def test_push_refuses_secrets_of_the_environment_and_in_the_commit_message(hub, tmp_path, monkeypatch):
    """A provider key in a form the card's redaction does not know still never reaches the Hub."""
    key = "AIzaSyFAKE0123456789abcdefghijklmnopq"
    monkeypatch.setenv("GOOGLE_API_KEY", key)
    folder = tmp_path / "build"
    write_dataset(sample_documents(20), folder)
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, {**MANIFEST, "notes": [f"gateway key {key}"]})
    with pytest.raises(ValueError, match=r"build/\S+ contains the value of \$GOOGLE_API_KEY;") as err:
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert key not in str(err.value)
    monkeypatch.delenv("GOOGLE_API_KEY")
    with pytest.raises(ValueError, match="commit message contains your Hugging Face token"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, commit_message=f"pushed with {hub.token}")
    assert ("dataset", REPO) not in hub.repos


def test_repush_without_a_split_deletes_its_shards(hub, tmp_path, monkeypatch):
    """A split dropped from the build leaves no stale shards the card no longer names."""
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)  # train + test
    folder = tmp_path / "b"
    write_dataset(sample_documents(30, seed=8), folder)
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    files = HfApi(endpoint=hub.endpoint, token=hub.token).list_repo_files(REPO, repo_type="dataset")
    assert [f for f in files if f.startswith("data/")] == ["data/train-00000-of-00001.parquet"]
    out = pull(REPO, tmp_path / "pulled", token=hub.token, endpoint=hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    assert list(datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c"))) == ["train"]


def test_a_hub_that_never_answers_fails_the_push_in_one_line_and_nothing_lands(hub, tmp_path):
    """The client sends requests without a timeout; ours bounds each one, and a rerun completes the push."""
    from huggingface_hub.utils import _http

    folder = build(tmp_path / "build")
    factory = _http._GLOBAL_CLIENT_FACTORY
    hub.inject("POST", r"/commit/", "hang")
    with pytest.raises(ConnectionError, match=r"the Hub at http://127\.0\.0\.1:\d+ did not answer within 1 s") as err:
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, timeout=1)
    assert "\n" not in str(err.value) and "TEXTBOOKGEN_HUB_TIMEOUT" in str(err.value)
    assert len(hub.commits(REPO)) == 1  # nothing committed
    assert _http._GLOBAL_CLIENT_FACTORY is factory  # the client's own session is left as it was
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint, timeout=1)
    assert len(hub.commits(REPO)) == 2


def test_pull_and_push_timeouts_from_the_environment(hub, tmp_path, monkeypatch):
    """`repo_info` (also inside `snapshot_download`) sends `timeout=None`: a Hub silent on it hung a pull."""
    push(build(tmp_path / "build"), REPO, token=hub.token, endpoint=hub.endpoint)
    monkeypatch.setenv("TEXTBOOKGEN_HUB_TIMEOUT", "0.5")
    hub.inject("GET", rf"^/api/datasets/{REPO}", "hang")
    with pytest.raises(ConnectionError, match=r"did not answer within 0\.5 s .*rerun the pull"):
        pull(REPO, tmp_path / "pulled", token=hub.token, endpoint=hub.endpoint)
    assert not (tmp_path / "pulled").exists() or not any((tmp_path / "pulled").iterdir())
    hub.requests.clear()
    for bad in ("0", "soon", "inf"):
        monkeypatch.setenv("TEXTBOOKGEN_HUB_TIMEOUT", bad)
        with pytest.raises(ValueError, match=r"\$TEXTBOOKGEN_HUB_TIMEOUT must be a positive number of seconds"):
            pull(REPO, tmp_path / "pulled", token=hub.token, endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="^timeout must be a positive"):
        push(tmp_path / "build", REPO, token=hub.token, endpoint=hub.endpoint, timeout=-1)
    assert hub.requests == []  # refused before any request

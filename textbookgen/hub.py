"""Publish a built dataset folder to the Hugging Face Hub in one atomic commit, and pull it back.

`push` makes exactly one `HfApi.create_commit`, with `parent_commit` set to the head it read: if anyone
else commits in between, the Hub answers 412 and nothing of ours lands (no half-updated dataset, no
silent overwrite). An existing card's metadata is merged, not replaced, so a license, gating or
`viewer:` setting added on the Hub survives a re-push: only what the recipe sets explicitly and what
describes the data (configs, features, sizes) replace the Hub's values. Shards the new build no longer
has are deleted in the same commit, so `data/train-*` never mixes two builds. Large files go through
the client's normal upload path (Xet or LFS, whichever the Hub offers). The token comes from `token=`, `HF_TOKEN` or the
user's `hf auth login`, and is never logged or written.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textbookgen.dataset import SHARD_RE, split_rows, splits_of

log = logging.getLogger(__name__)
_USAGE_RE = re.compile(r'(load_dataset\()"[^"\n]*"')

#: Files of a built folder that are published, beside README.md, data/ and assets/.
PROVENANCE_FILES = ("recipe.yaml", "manifest.json", "journal_summary.json")
TEXT_SUFFIXES = (".md", ".yaml", ".yml", ".json", ".txt")


class PushConflictError(RuntimeError):
    """Someone committed to the repo between our read of its head and our commit; nothing was pushed."""


def publishable_files(out_dir: Path) -> list[Path]:
    """Files of `out_dir` that belong on the Hub: the card, shards, plots and provenance files."""
    files = [p for p in (out_dir / "data").glob("*.parquet") if SHARD_RE.match(p.name)]
    assets = out_dir / "assets"
    if assets.is_dir():
        files += [p for p in assets.rglob("*") if p.is_file() and not p.name.startswith(".")]
    files += [out_dir / n for n in ("README.md", *PROVENANCE_FILES) if (out_dir / n).is_file()]
    return sorted(files)


def usage_for(repo_id: str, card_text: str) -> str:
    """The card with its `load_dataset("...")` usage naming the repo it is pushed to (a build without
    `hub.repo_id` renders a `<user>/name` placeholder there, and a folder may be pushed elsewhere)."""
    return _USAGE_RE.sub(lambda m: f'{m[1]}"{repo_id}"', card_text)


def merge_card(new_text: str, old_text: str | None, defaults: Mapping[str, Any] | None = None) -> str:
    """`new_text` with the metadata of `old_text` kept where the new card does not choose otherwise.

    `defaults` ({key: value}, see `textbookgen.card.card_defaults`) are the new card's values that
    textbookgen filled in rather than the user: where the old card has such a key, its value stays
    (a license set on the Hub beats the recipe's default one). Other keys of the new card win;
    `configs` and `dataset_info` merge by config name (others' configs stay); `tags` are the union.
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
            merged[key] = _merge_named(old.get(key), value, "config_name")
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


def _merge_dataset_info(old: Any, new: Any) -> Any:
    """Ours replaces the info of our config; infos of other configs (a list form) are kept."""
    if not isinstance(old, list):
        return new
    ours = [new] if isinstance(new, Mapping) else list(new)
    return _merge_named(old, [{"config_name": "default", **i} for i in ours], "config_name")


def _check_no_secret(files: list[Path], secrets: list[str]) -> None:
    """Refuse to publish a text file that contains the token (a recipe or manifest gone wrong)."""
    for path in files:
        if path.suffix in TEXT_SUFFIXES and path.stat().st_size < 50 * 1024**2:
            text = path.read_text("utf-8", errors="replace")
            if any(s and s in text for s in secrets):
                raise ValueError(f"{path} contains your Hugging Face token; remove it before pushing")


def check_card_matches_data(out_dir: Path, card_text: str) -> None:
    """Refuse a card whose splits or row counts differ from the shards (`load_dataset` would fail).

    Happens when data is rewritten after the card was rendered; the fix is to render the card again.
    """
    from textbookgen.card import validate_card_text

    data = validate_card_text(card_text).data.to_dict()
    rows = split_rows(out_dir)
    infos = data.get("dataset_info")
    infos = [infos] if isinstance(infos, Mapping) else infos or []
    info = next((i for i in infos if i.get("config_name", "default") == "default"), None)
    if info and info.get("splits"):
        described = {s["name"]: s.get("num_examples") for s in info["splits"]}
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
) -> str:
    """Create `repo_id` (a dataset repo) if needed and commit the built folder in one commit; return its URL.

    `private=True` makes the repo private, a new one or an existing public one (before anything is
    committed); `private=False` never makes an existing private repo public: that is for its owner to do
    on the Hub. Raises PushConflictError when the repo moved during the push (rerun to merge with the
    new head), ValueError for a folder with nothing to publish (no shards, or a split with no rows,
    which `load_dataset` cannot load), and the client's errors for auth and network.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from textbookgen.card import card_defaults

    out_dir = Path(out_dir)
    splits = splits_of(out_dir)
    if not splits:
        raise ValueError(f"{out_dir} has no data/{{split}}-NNNNN-of-NNNNN.parquet shards to push")
    empty = [split for split, n in split_rows(out_dir).items() if not n]
    if empty:
        raise ValueError(f"{out_dir}: split(s) {empty} have no rows; load_dataset cannot load an empty split")
    if not (out_dir / "README.md").is_file():
        raise ValueError(f"{out_dir} has no README.md; render the card first (textbookgen.card.render_card)")
    secret = token or get_token()
    if not secret:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    files = publishable_files(out_dir)
    _check_no_secret(files, [secret])
    check_card_matches_data(out_dir, (out_dir / "README.md").read_text("utf-8"))

    api = HfApi(endpoint=endpoint, token=secret)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.repo_info(repo_id, repo_type="dataset", revision=revision)
    if private and not info.private:  # `create_repo(exist_ok=True)` leaves an existing repo's visibility
        log.warning("%s is public; making it private, as asked", repo_id)
        api.update_repo_settings(repo_id, repo_type="dataset", private=True)
    head = info.sha
    remote = {s.rfilename for s in info.siblings or []}

    old_card = None
    if "README.md" in remote:
        with tempfile.TemporaryDirectory(prefix="textbookgen-card-") as tmp:
            path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=head, cache_dir=tmp)
            old_card = Path(path).read_text("utf-8")
    card = merge_card(usage_for(repo_id, (out_dir / "README.md").read_text("utf-8")), old_card, card_defaults(out_dir))

    operations: list[Any] = []
    for path in files:
        rel = path.relative_to(out_dir).as_posix()
        content: Any = card.encode("utf-8") if rel == "README.md" else str(path)
        operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content))
    local = {op.path_in_repo for op in operations}
    for rel in sorted(remote - local):
        shard = SHARD_RE.match(rel[len("data/"):]) if rel.startswith("data/") else None
        if (shard and shard["split"] in splits) or (rel.startswith("assets/") and rel.endswith(".png")):
            operations.append(CommitOperationDelete(path_in_repo=rel))

    n_shards = sum(len(p) for p in splits.values())
    message = commit_message or f"textbookgen: upload {n_shards} shard(s) of split(s) {', '.join(splits)} and card"
    n_add = sum(isinstance(op, CommitOperationAdd) for op in operations)
    log.info("pushing %d file(s), deleting %d, to %s (parent %s)", n_add, len(operations) - n_add, url, head)
    try:
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            repo_type="dataset",
            revision=revision,
            parent_commit=head,
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (409, 412):
            raise PushConflictError(
                f"{repo_id} changed while pushing (its head is no longer {head[:10]}); nothing was committed. "
                "Run the push again to merge with the new head."
            ) from err
        raise
    log.info("pushed %s", commit.commit_url)
    return commit.commit_url


def pull(
    repo_id: str,
    local_dir: str | Path | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download a dataset repo (all files, at `revision`) into `local_dir` (default: `./<name>`)."""
    from huggingface_hub import snapshot_download

    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
        raise ValueError(f"repo id must look like 'user/name', got {repo_id!r}")
    local_dir = Path(local_dir) if local_dir is not None else Path(repo_id.split("/")[1])
    path = snapshot_download(
        repo_id,
        repo_type="dataset",
        revision=revision,
        local_dir=local_dir,
        token=token,
        endpoint=endpoint,
    )
    log.info("pulled %s into %s", repo_id, path)
    return Path(path)

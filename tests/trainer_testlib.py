"""Shared helpers of the trainer tests: small real corpora in Hub layout, a small BPE, tiny configs.

A 438-token BPE trained on the corpus keeps the output layer small, so CPU steps take milliseconds.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

VOCAB = 512  # model rows; the test tokenizer uses 438 of them


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: oversubscribed intra-op threads make tiny CPU steps 10x slower. A module opts in
    with `pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)` after importing it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def perturbed_phi(cfg, seed: int = 0):
    """A `Phi` with every parameter nudged off its init (LayerNorms and biases too), so every one matters."""
    import torch

    from trainer.model import Phi

    torch.manual_seed(seed)
    m = Phi(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def random_ids(cfg, b: int, t: int, seed: int = 1):
    """`[b, t]` token ids below the config's vocab, from a seeded generator."""
    import torch

    return torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def read_jsonl_gz(path: Path, field: str, limit: int) -> list[str]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)[field])
            if len(out) == limit:
                break
    return out


def write_hub_folder(folder: Path, texts: list[str], files: int = 2, split: str = "train") -> Path:
    """`folder/data/{split}-0000i-of-0000n.parquet` with a `text` column, as the Hub and write_dataset lay it out."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // files)
    for i in range(files):
        chunk = texts[i * per:(i + 1) * per]
        table = pa.table({"text": chunk, "id": [f"{i}-{j}" for j in range(len(chunk))]})
        pq.write_table(table, folder / "data" / f"{split}-{i:05d}-of-{files:05d}.parquet", row_group_size=64)
    return folder


@contextmanager
def hub_dataset(folder: Path, repo_id: str, cache: Path, monkeypatch) -> Iterator[str]:
    """A FakeHub serving `folder` as dataset `repo_id` (downloads cached under `cache`); yields its endpoint."""
    pytest.importorskip("aiohttp")
    import huggingface_hub.constants as hc
    from huggingface_hub import HfApi

    from textbookgen.testing.fakehub import FakeHub

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo(repo_id, repo_type="dataset")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset")
        yield hub.endpoint


def wiki_texts(shared_data: Path, n: int = 150) -> list[str]:
    return read_jsonl_gz(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn", n)


def textbook_texts(shared_data: Path, n_books: int = 2, max_chars: int = 40_000) -> list[str]:
    """Sections of the first SciPhi textbooks (each book split at its '## ' headings)."""
    docs = []
    for book in read_jsonl_gz(shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "text", n_books):
        docs += [s for s in book[:max_chars].split("\n## ") if s.strip()]
    return docs


def small_tokenizer(out: Path, folders: list[Path]) -> Path:
    from trainer.tokenizer import train_tokenizer

    files = [p for f in folders for p in sorted((f / "data").glob("*.parquet"))]
    tok = train_tokenizer(files, vocab_size=400)
    tok.save(str(out))
    return out


def wiki_corpus(root: Path, shared_data: Path) -> dict[str, Path]:
    """150 Wikipedia articles in Hub layout under `root`, and a small BPE trained on them."""
    wiki = write_hub_folder(root / "wiki", wiki_texts(shared_data, 150))
    return {"root": root, "wiki": wiki, "tok": small_tokenizer(root / "tok.json", [wiki])}


def wiki_and_books(root: Path, shared_data: Path) -> dict[str, Path]:
    """Two Hub-layout datasets under `root` (150 Wikipedia articles; textbooks in one file) and a small BPE
    trained on both: the corpus of the training-loop and validation tests."""
    wiki = write_hub_folder(root / "wiki", wiki_texts(shared_data, 150))
    books = write_hub_folder(root / "books", textbook_texts(shared_data), files=1)
    return {"root": root, "wiki": wiki, "books": books, "tok": small_tokenizer(root / "tok.json", [wiki, books])}


def tiny_overrides(run_dir: Path, cache_dir: Path, tokenizer: Path, sources: list[tuple[Path, float]],
                   **extra) -> dict:
    """Overrides for load_config(None, ...): a 2-layer d64 model, seq 32, 8-sequence steps, fp32 on CPU."""
    cfg = {
        "run_dir": str(run_dir),
        "model.name": "tiny",
        "model.overrides": {"vocab_size": VOCAB},
        "data.tokenizer": str(tokenizer),
        "data.cache_dir": str(cache_dir),
        "data.seq_len": 32,
        "data.prepare_workers": 1,
        "data.datasets": [{"source": str(s), "weight": w, "name": Path(s).name} for s, w in sources],
        "optim.lr": 3e-3,
        "train.global_batch": 8,
        "train.micro_batch": 4,
        "train.max_steps": 10,
        "train.precision": "fp32",
        "train.device": "cpu",
        "checkpoint.every": 0,
        "log.progress": False,
        "log.plot": False,
    }
    cfg.update(extra)
    return cfg

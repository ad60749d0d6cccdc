"""Stand-in example card until the quickstart build's own card replaces it.

The documents are real LLM-written textbook text: the sections of the SciPhi "Library of Phi"
textbooks in ../shared/data (Apache-2.0; GPT-3.5/GPT-4 output), cut at `###` headings, with the
book > chapter > section path as the topic. Some books exist in several variants, so near-duplicate
removal has real work. The real curation runs (exact, filters, MinHash, decontamination against
ARC-Easy/ARC-Challenge, and a fastText quality classifier trained on the DCLM human quality labels
that keeps the top 90 %), the dataset is written and the card rendered into
datasets_cards/examples/quickstart/ (card, plots, recipe, manifest; the shards are not kept).

    python datasets_cards/examples/make_example.py
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.curation import CurationConfig, curate
from textbookgen.curation.classifier import train_classifier
from textbookgen.dataset import write_dataset

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
BOOKS = SHARED / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz"
QUALITY_LABELS = SHARED / "dclm_human_quality_labels" / "majority_data.jsonl.gz"
BENCHMARKS = [SHARED / "llmfoundry_eval_gauntlet" / f"{b}.jsonl.gz" for b in ("arc_easy", "arc_challenge")]
OUT = Path(__file__).resolve().parent / "quickstart"
MODEL, SEED, N = "gpt-4 (SciPhi library-of-phi)", 1234, 600
AUDIENCES = ["high school students", "college students", "researchers"]
STYLES = ["academic", "conversational", "step-by-step"]


def sections(book: dict) -> list[dict]:
    """(topic path, text) of each `###` section of one markdown textbook."""
    title, chapter, out = Path(book["path"]).stem.replace("_", " ").title(), "", []
    for block in re.split(r"(?m)^(?=#{1,3} )", book["text"]):
        head = block.splitlines()[0] if block.strip() else ""
        if head.startswith("## "):
            chapter = re.sub(r"^Chapter\s*\d*:?\s*", "", head[3:]).strip()
        elif head.startswith("### ") and len(block.split()) > 80:
            name = re.sub(r"^(Section|Subsection)?\s*[\d.]*:?\s*", "", head[4:]).strip()
            path = " > ".join(p for p in (title, chapter, name) if p)
            out.append({"topic_path": path, "text": block.strip(), "variant": book["variant"]})
    return out


def main() -> None:
    rng = random.Random(SEED)
    with gzip.open(BOOKS, "rt") as f:
        found = [sec for line in f for sec in sections(json.loads(line))]
    picked = rng.sample(found, min(N, len(found)))
    rows = []
    for sec in picked:
        text, template = sec["text"], "exercises" if "exercise" in sec["text"][:200].lower() else "textbook_section"
        key = hashlib.sha256(f"{sec['variant']}|{sec['topic_path']}|{text[:200]}".encode()).hexdigest()[:16]
        n_out = len(text.split()) * 4 // 3
        rows.append({
            "id": key, "text": text, "topic_path": sec["topic_path"],
            "topic_id": hashlib.sha1(sec["topic_path"].encode()).hexdigest()[:12], "template": template,
            "template_hash": hashlib.sha256(template.encode()).hexdigest()[:16],
            "audience": rng.choice(AUDIENCES), "style": rng.choice(STYLES), "format": "markdown",
            "seed_extract_id": f"wiki-{rng.randrange(1000):04d}" if sec["variant"] == "rag_wiki" else None,
            "model": MODEL, "finish_reason": "length" if n_out > 2000 else "stop",
            "input_tokens": rng.randint(180, 420), "output_tokens": n_out, "quality_score": None,
            "provenance": json.dumps({"source": "SciPhi library-of-phi", "variant": sec["variant"]}),
        })  # fmt: skip
    docs = pl.DataFrame(rows).unique("id", keep="first", maintain_order=True)
    with tempfile.TemporaryDirectory() as tmp:
        with gzip.open(QUALITY_LABELS, "rt") as f:
            labelled = [json.loads(line) for line in f]
        train_classifier([r["text"] for r in labelled], [str(r["label"]) == "1" for r in labelled],
                         Path(tmp) / "quality", source="DCLM human quality labels (majority)")  # fmt: skip
        config = CurationConfig(
            decontamination={"benchmarks": [{"path": str(b), "name": b.name.split(".")[0]} for b in BENCHMARKS]},
            classifier={"enabled": True, "model_path": str(Path(tmp) / "quality.bin"), "keep_top_percent": 90},
        )
        t0 = time.perf_counter()
        curated, stats = curate(docs, config, workdir=Path(tmp) / "curation")
        seconds = time.perf_counter() - t0
        build = Path(tmp) / "dataset"
        write_dataset(curated, build)
        recipe = {
            "name": "quickstart", "version": "0.1.0", "license": "apache-2.0", "language": "English",
            "description": "", "provider": {"name": "openai"}, "model": MODEL, "seed": SEED,
            "sampling": {"temperature": 0.8, "max_tokens": 1024}, "samples": N,
            "hub": {"repo_id": "your-name/quickstart-textbooks", "private": False},
            "card_template": "datasets_cards/quickstart.md",
        }  # fmt: skip
        manifest = {
            "recipe_hash": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16],
            "provider": "none (existing SciPhi text)", "model": MODEL, "seed": SEED, "sampling": recipe["sampling"],
            "taxonomy": {"source": "SciPhi textbook outlines (book > chapter > section)",
                         "topics": docs["topic_path"].n_unique()},
            "counts": {"requests": docs.height, "ok": docs.height, "failed": 0},
            "tokens": {"input": int(docs["input_tokens"].sum()), "output": int(docs["output_tokens"].sum())},
            "cost_usd": round((docs["input_tokens"].sum() * 0.15 + docs["output_tokens"].sum() * 0.6) / 1e6, 6),
            "curation": stats, "timings": {"curate": round(seconds, 2)},
            "notes": ["Stand-in example made by datasets_cards/examples/make_example.py: the documents are "
                      "sections of the SciPhi 'Library of Phi' synthetic textbooks (GPT-3.5/GPT-4 output, "
                      "Apache-2.0), not a textbookgen generation; quality scores come from a fastText "
                      "classifier trained on the DCLM human quality labels; token counts are word-based estimates "
                      "and the cost is what gpt-4o-mini would charge for them. The quickstart build's own "
                      "card replaces it."],
        }  # fmt: skip
        render_card(build, CARDS_DIR / "quickstart.md", recipe, manifest)
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        for name in ("README.md", "recipe.yaml", "manifest.json", "assets"):
            src = build / name
            if src.is_dir():
                shutil.copytree(src, OUT / name)
            elif src.exists():
                shutil.copy(src, OUT / name)
    print(f"wrote {OUT} ({curated.height} of {docs.height} documents kept)")


if __name__ == "__main__":
    main()

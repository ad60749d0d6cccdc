"""Prompt-diversity benchmark: the first 2,000 prompts of recipes/phi15-textbooks.yaml, three ways.

- web-seeded (ours): the recipe as written — topics by weight with quotas (a systematic sequence,
  prefix-stable), 80 % of prompts seeded with a web extract, half of those BM25-retrieved for the
  topic (a topic's hits in turn, the least used first), the others keyed picks from the pool with no
  extract taken twice while unused ones remain (`KeyedExtracts`);
- topic-only (ours, no web samples): the same recipe with `web_samples` removed;
- Cosmopedia-style peer: the same templates, mix and shares, topics drawn i.i.d. by weight (Cosmopedia's
  web prompts take the sample's cluster label; it has no weighted taxonomy to walk), extracts picked as
  its scripts pick them: `ds.map` over the web samples uses each once (here in a seeded shuffled order,
  again once all are used), and a retrieved prompt takes one of its topic's search hits not yet used
  for that topic (v2: one prompt per page retrieved for a topic). Before 2026-11-26 the peer drew
  extracts with replacement, which Cosmopedia does not do.

The taxonomy is a fixture standing in for phi-1.5's ~20K grown topics: SciPhi's 26K grade-school
course titles (`../shared/data/sciphi_topics`, weighted). The web seeds are the shared C4 and
Wikipedia samples (about 1,800 extracts after cleaning). Topics and mix cells are allocated for the
recipe's full 100K prompts and the first 2,000 are rendered (`render_prompts(limit=...)`), so these
are exactly the first 2,000 prompts the build would send; the peer draws the same number.

Figures: topics_covered = distinct topics among the prompts / min(prompts, topics) (1.0: no topic is
repeated while unused ones remain); distinct_4gram = distinct / total word 4-grams over all prompts;
seed_reuse = the most times one web extract is used.

    python bench/diversity.py [--prompts 2000] [--shared ../shared/data]

Last line: topics_covered=<..> distinct_4gram=<..> seed_reuse=<..> peer_topics_covered=<..>
peer_distinct_4gram=<..> peer_seed_reuse=<..> topic_only_topics_covered=<..> topic_only_distinct_4gram=<..>
topic_only_seed_reuse=0
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
from shared_data import skip_without  # bench/ is on the path

from textbookgen.build import render_prompts
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy
from textbookgen.templates import expand_mix, load_template, simple_words, variables
from textbookgen.websamples import WebSamples

ROOT = Path(__file__).resolve().parents[1]


def figures(df: pl.DataFrame, n_topics: int) -> dict[str, float]:
    grams: Counter[tuple[str, ...]] = Counter()
    for text in df["prompt"]:
        words = re.findall(r"\w+", text.lower())
        grams.update(zip(words, words[1:], words[2:], words[3:], strict=False))
    seeds = df["seed_extract_id"].drop_nulls()
    return {
        "topics_covered": df["topic_id"].n_unique() / min(df.height, n_topics),
        "distinct_4gram": len(grams) / max(1, sum(grams.values())),
        "seed_reuse": int(seeds.value_counts()["count"].max()) if seeds.len() else 0,
        "seeded": int(seeds.len()),
    }


def cosmopedia_style(recipe, tax: Taxonomy, web: WebSamples, n: int) -> pl.DataFrame:
    """The peer, picking as Cosmopedia's scripts do: topics drawn i.i.d. by weight, and extracts as `ds.map`
    over the web samples gives them, each sample once (in a seeded shuffled order, again once all are used);
    a retrieved prompt takes a random one of its topic's hits, one prompt per (topic, hit), as v2 ran one
    prompt per page retrieved for a topic."""
    rng = np.random.default_rng(recipe.seed)
    leaves, p = tax.leaf_probabilities(recipe.taxonomy.weighting)
    combos = expand_mix([e.model_dump() for e in recipe.mix])
    cw = np.array([c.weight for c in combos])
    templates = {e.template: load_template(e.template, recipe.base_dir) for e in recipe.mix}
    audiences, styles, formats = recipe.tables()
    wc = recipe.web_samples
    order, taken, topic_hits = rng.permutation(len(web)), 0, {}
    rows = []
    for i in range(n):
        topic = leaves[int(rng.choice(len(leaves), p=p))]
        cell = combos[int(rng.choice(len(combos), p=cw / cw.sum()))]
        extract = None
        if rng.random() < wc.share:
            if wc.retrieval and rng.random() < wc.retrieval.share:
                if topic.id not in topic_hits:  # the topic's pages, each used once, in no particular order
                    hits = web.search(" ".join(topic.path[-2:]), k=wc.retrieval.top_k)
                    topic_hits[topic.id] = [hits[int(j)][0] for j in rng.permutation(len(hits))]
                if topic_hits[topic.id]:
                    extract = web.extracts[topic_hits[topic.id].pop()]
            if extract is None:
                extract = web.extracts[int(order[taken % len(order)])]
                taken += 1
        v = variables(
            topic_path=topic.path,
            audience=cell.audience,
            style=cell.style,
            format=cell.format,
            web_extract=extract.text if extract else None,
            language=recipe.language,
            words=simple_words(recipe.seed, i),
            audiences=audiences,
            styles=styles,
            formats=formats,
        )
        rows.append(
            {
                "topic_id": topic.id,
                "prompt": templates[cell.template].render(**v),
                "seed_extract_id": extract.id if extract else None,
            }
        )
    return pl.DataFrame(
        rows, schema={"topic_id": pl.String, "prompt": pl.String, "seed_extract_id": pl.String}
    )


SEEDS = {"c4_en_sample_1k/c4_sample.jsonl.gz": "text", "wikipedia_en_1k/wikipedia.jsonl.gz": "eng_Latn"}


def shared_texts(shared: Path) -> list[str]:
    texts = []
    for rel, field in SEEDS.items():
        for line in gzip.decompress((shared / rel).read_bytes()).decode().splitlines():
            texts.append(json.loads(line)[field])
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=2000, help="how many of the recipe's first prompts")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--taxonomy", type=Path, default=None, help="default: SciPhi grade-school course titles")
    args = ap.parse_args()
    tax_path = args.taxonomy or args.shared / "sciphi_topics" / "tayn_evol_evol_grade_school.yaml.gz"
    skip_without([tax_path, *(args.shared / rel for rel in SEEDS)])

    recipe = load_recipe(
        ROOT / "recipes" / "phi15-textbooks.yaml",
        {
            "taxonomy.source": str(tax_path.resolve()),
            "taxonomy.grow": None,
            "output": "/tmp/textbookgen-bench-diversity",
        },
    )
    tax = Taxonomy.load(tax_path)
    wc = recipe.web_samples
    web = WebSamples.from_texts(
        shared_texts(args.shared),
        source="shared c4+wikipedia",
        min_chars=wc.min_chars,
        extract_chars=wc.extract_chars,
    )
    n_topics = len(tax.leaves())
    print(
        f"taxonomy: {tax_path.name} ({n_topics:,} topics); web seeds: {len(web):,} extracts "
        f"(of {web.stats['documents']:,} documents); the first {args.prompts:,} of {recipe.samples:,} prompts"
    )

    runs = {}
    t0 = time.perf_counter()
    runs["web-seeded (ours)"] = render_prompts(recipe, tax, web, limit=args.prompts)
    t_ours = time.perf_counter() - t0
    runs["topic-only (ours)"] = render_prompts(recipe, tax, None, limit=args.prompts)
    t0 = time.perf_counter()
    runs["cosmopedia-style peer"] = cosmopedia_style(recipe, tax, web, args.prompts)
    t_peer = time.perf_counter() - t0
    again = render_prompts(recipe, tax, web, limit=args.prompts)
    assert again["prompt"].to_list() == runs["web-seeded (ours)"]["prompt"].to_list(), (
        "prompts not reproducible"
    )

    res = {name: figures(df, n_topics) for name, df in runs.items()}
    print(f"\n{'run':<24}{'topics_covered':>16}{'distinct_4gram':>16}{'seed_reuse':>12}{'seeded':>9}")
    for name, f in res.items():
        print(
            f"{name:<24}{f['topics_covered']:>16.3f}{f['distinct_4gram']:>16.3f}{f['seed_reuse']:>12d}"
            f"{f['seeded']:>9,}"
        )
    print(
        f"\nrender time: ours {t_ours:.1f} s, peer {t_peer:.1f} s; same recipe+seed -> identical prompts: yes"
    )
    print(summary_line(res))


def summary_line(res: dict[str, dict[str, float]]) -> str:
    """The last line: key=value pairs, each key once (ours unprefixed, then peer_ and topic_only_)."""
    prefixes = {"web-seeded (ours)": "", "cosmopedia-style peer": "peer_", "topic-only (ours)": "topic_only_"}
    keys = ("topics_covered", "distinct_4gram", "seed_reuse")
    return " ".join(f"{prefix}{key}={res[name][key]:.3f}" if isinstance(res[name][key], float)
                    else f"{prefix}{key}={res[name][key]}" for name, prefix in prefixes.items() for key in keys)


if __name__ == "__main__":
    main()

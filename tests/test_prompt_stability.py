"""Rendered prompts under recipe edits: a prompt's cell, extract, words and request seed are drawn from its
name, not its position, so an edit re-renders (and the journal re-pays) only the prompts it changes (and a
short chain of prompts after them whose extract the changed ones took or left free); and a small build
whose topics repeat many times keeps the mix weights with no exact duplicate prompt."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from textbookgen.build import render_prompts
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy
from textbookgen.websamples import Extract, KeyedExtracts, WebSamples

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def web() -> WebSamples:
    """Quickstart's 30 paragraphs and 3,000 fillers: a pool much larger than the build, as a real one is.
    On the 30 alone (300 prompts use each extract 7 times) every edit also moves most picks after it: an
    extract is taken again only once every one has been, so a pick taken or left free shifts the rounds."""
    r = load_recipe(QUICKSTART)
    toy = WebSamples.load(r.resolve(r.web_samples.source), min_chars=r.web_samples.min_chars)
    fillers = [Extract(id=f"filler{i:010d}", text=f"Filler extract number {i}, with nothing to say. " * 4)
               for i in range(3_000)]
    return WebSamples(extracts=toy.extracts + fillers)


def _requests(overrides: dict[str, Any], web: WebSamples, tax: Taxonomy | None = None) -> set[tuple]:
    """What the journal keys a prompt's answer by (the request without its metadata)."""
    r = load_recipe(QUICKSTART, overrides)
    df = render_prompts(r, tax or Taxonomy.load(r.taxonomy_path()), web)
    return set(df.select("prompt", "request_seed", "max_tokens", "system").iter_rows())


@pytest.mark.parametrize(
    "edit, moves",
    [
        ({"mix.2.weight": 2}, 0.133),  # qa 1/5 -> 2/6
        ({"web_samples.share": 0.8}, 0.1),
        ({"mix.0.audiences.professionals": 0.5}, 0.067),
        ({"mix.1.styles.socratic": 1}, 0.067),
        ({"mix.1.weight": 0.5, "mix.2.weight": 0.5}, 0.15),  # textbook_section 60% -> 75%
    ],
)
def test_an_edit_re_renders_about_the_prompts_it_moves(web, edit, moves):
    """`moves`: the share of prompts the edit moves (total variation of the cells' or extracts' weights);
    on top, the later prompts whose extract the moved ones took or left free (36 for an audience that moves
    20 here: independent extracts re-rendered 31, which repeated extracts). The old cell sequence and
    extract stream re-rendered 40-90% of the prompts for each of these."""
    base = _requests({}, web)
    changed = len(_requests(edit, web) - base)
    assert changed <= 300 * moves * 1.5 + 10, changed


def test_reordering_the_mix_changes_no_prompt(web):
    r = load_recipe(QUICKSTART)
    mix = [e.model_dump() for e in r.mix]
    reordered = {f"mix.{i}": e for i, e in enumerate(reversed(mix))}
    assert _requests(reordered, web) == _requests({}, web)


def test_a_heavier_subject_re_renders_about_the_prompts_it_gains(web):
    """One of 17 subjects twice as heavy takes ~5% of the prompts more: the other topics keep their order
    among themselves and their prompts keep their names, so only the prompts that change topic re-render
    (the old build drew cells and extracts by position and re-rendered most prompts after the first shift)."""
    tax = Taxonomy.load(load_recipe(QUICKSTART).taxonomy_path())
    base = _requests({}, web, tax)
    tax.topics[3].weight *= 2
    assert len(_requests({}, web, tax) - base) <= 30


def test_raising_the_extract_share_keeps_the_extracts(web):
    """The same prompts (names), more of them with an extract, and nearly every extract as it was: a new one
    takes an extract (or a topic's hit) that a later prompt had taken, which moves that one (10 of 221 here)."""
    r = load_recipe(QUICKSTART)
    tax = Taxonomy.load(r.taxonomy_path())
    before = render_prompts(r, tax, web)
    after = render_prompts(load_recipe(QUICKSTART, {"web_samples.share": 0.9}), tax, web)
    kept = before.join(after, on="request_seed", suffix="_after")
    assert kept.height == 300
    had = kept.filter(pl.col("seed_extract_id").is_not_null())
    assert (had["seed_extract_id"] != had["seed_extract_id_after"]).sum() <= 0.06 * had.height
    assert after["seed_extract_id"].null_count() < before["seed_extract_id"].null_count()


def test_a_small_build_of_repeated_topics_keeps_the_weights_without_duplicates(web):
    """19 topics, 300 prompts (16 each), templates 3:2:1: the old cells gave a repeated topic a cell it
    had not had yet and came out 62:25:13 (and 13% exact duplicate prompts at 500)."""
    tax = Taxonomy(name="t")
    for s, w in (("Physics", 3), ("Mathematics", 4), ("Computer science", 2), ("Biology", 1)):
        subject = tax.add(s, weight=w)
        for i in range(5 if s != "Biology" else 4):
            subject.add(f"{s} topic {i}")
    mix = {"mix.0.weight": 3, "mix.1.weight": 2, "mix.2.weight": 1, "taxonomy.max_per_topic": 30}
    totals: Counter[str] = Counter()
    for seed in (1, 2, 3):
        r = load_recipe(QUICKSTART, {**mix, "seed": seed, "web_samples.share": 0.6})
        df = render_prompts(r, tax, web)
        assert df["prompt"].n_unique() == 300
        totals.update(df["template"].to_list())
    shares = {t: c / 900 for t, c in totals.items()}
    assert shares == pytest.approx({"textbook_section": 1 / 2, "exercises": 1 / 3, "qa": 1 / 6}, abs=0.04)


def test_keyed_extracts_take_turns_along_a_series(web):
    """A series (topic x cell) takes extracts in turn: with share 0.7 no series' first two prompts are both
    topic-only (the same prompt twice), where independent draws would make 9% of them so; and a topic's
    prompts use its hits in turn (independent turns per series used 5 hits 545 to 574 times)."""
    pick = KeyedExtracts(web, seed=4, share=0.7, retrieval_share=1.0, top_k=5)
    pairs = [[pick.choose(("topic", f"cell {i}"), k, "water") for k in range(2)] for i in range(2_000)]
    assert all(any(x is not None for x in pair) for pair in pairs)
    both = [pair for pair in pairs if all(x is not None for x in pair)]
    assert len(both) == pytest.approx(2_000 * 0.4, rel=0.1)
    hits = Counter(x.id for pair in pairs for x in pair if x is not None)
    assert len(hits) == 5 and max(hits.values()) - min(hits.values()) <= 1


def test_more_samples_and_limit_keep_the_first_prompts_with_their_extracts(web):
    """Extracts are taken in the build's order, so the first prompts of a larger build (or of `limit`) are
    the smaller build's, extracts and all: raising `samples` re-pays nothing."""
    r = load_recipe(QUICKSTART)
    tax = Taxonomy.load(r.taxonomy_path())
    full = render_prompts(r, tax, web)
    cols = ["prompt", "request_seed", "seed_extract_id"]
    assert render_prompts(r, tax, web, limit=120).select(cols).equals(full.head(120).select(cols))
    bigger = render_prompts(load_recipe(QUICKSTART, {"samples": 400}), tax, web)
    assert bigger.head(300).select(cols).equals(full.select(cols))

"""The card's quality mean summed exactly, templates of one name in one order, and check_rows' byte estimate past 4 GiB."""

from __future__ import annotations

import math
import struct

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from textbookgen.card import CARDS_DIR, data_stats, document_table, render_card
from textbookgen.dataset import SCHEMA, check_rows, splits_of, write_dataset

RECIPE = {"name": "mends", "license": "apache-2.0", "provider": "openai", "model": "gpt-4o-mini"}

#: 103 scores whose exact mean is 2.595: its float, 2.59500000000000019984..., prints as 2.60 with "%.2f".
SCORES = [0.258, 3.718, 2.762, 4.304, 4.967, 4.824, 1.108, 4.147, 1.32, 2.998, 0.378, 3.823, 3.938, 4.582, 0.394,
          3.049, 0.042, 1.796, 3.298, 1.949, 1.642, 1.831, 4.892, 4.415, 3.991, 3.942, 3.24, 1.639, 4.091, 2.628, 2.471,
          3.472, 2.93, 0.118, 4.436, 4.619, 4.243, 2.715, 3.101, 0.57, 2.019, 1.976, 2.506, 3.637, 0.035, 1.958, 3.271,
          2.615, 1.656, 2.939, 2.819, 0.886, 2.987, 2.786, 0.291, 3.49, 1.152, 1.764, 2.035, 3.559, 1.526, 4.994, 1.872,
          0.337, 3.237, 4.813, 3.364, 1.129, 3.548, 2.817, 2.095, 3.06, 1.759, 3.737, 1.3, 1.635, 4.96, 2.651, 2.539, 0.2,
          3.42, 0.051, 3.026, 4.488, 2.427, 4.178, 0.231, 0.445, 2.187, 4.495, 3.936, 1.557, 1.442, 2.227, 3.585, 3.544,
          1.007, 1.429, 1.221, 0.85, 4.053, 2.817, 4.074]  # fmt: skip


def scored(n: int) -> pl.DataFrame:
    """`n` documents of one topic, each with its score of SCORES."""
    return pl.DataFrame(
        {"id": [f"d{i}" for i in range(n)], "text": ["a b c"] * n, "topic_path": ["S > t"] * n,
         "quality_score": SCORES[:n]}
    ).with_columns([pl.lit(None, t).alias(c) for c, t in SCHEMA.items() if c not in ("id", "text", "topic_path",
                                                                                      "quality_score")]).select(list(SCHEMA))  # fmt: skip


def test_quality_mean_of_many_row_groups_is_the_one_the_eager_code_printed(tmp_path):
    """Shards of 8-row row groups (as a big build's many row groups): the eager code's mean was 2.595, the exact
    mean, printed 2.60; the rechunked series' mean is 2.5949999999999998, printed 2.59."""
    write_dataset(scored(len(SCORES)), tmp_path)
    for path in splits_of(tmp_path)["train"]:
        pq.write_table(pq.read_table(path), path, row_group_size=8)
    assert data_stats(document_table(splits_of(tmp_path)))["quality"]["mean"] == math.fsum(SCORES) / len(SCORES)
    readme = render_card(tmp_path, CARDS_DIR / "phi15-textbooks.md", RECIPE, {}).read_text("utf-8")
    assert "| 2.60 / " in readme


def test_check_rows_byte_estimate_does_not_wrap_past_4_gib():
    """`check_rows` sums `str.len_bytes()` (UInt32) as UInt32: 4.4 GB of text was measured as 109 MB, so
    `write_dataset` planned one shard (and row groups) for 4.4 GB. Built from one shared 1 MiB buffer (a string
    view array), so the test holds ~1 MB."""
    n, size = 4200, 2**20
    view = struct.pack("<i4sii", size, b"xxxx", 0, 0)
    text = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(view * n), pa.py_buffer(b"x" * size)])
    lf = pl.from_arrow(pa.table({"text": text})).lazy()
    assert check_rows(lf, as_given=True) == (n, n * (size + 4))


def test_templates_of_one_name_and_several_hashes_keep_one_order():
    """A template edited during a build has two hashes; equal counts came out in hash order, so the same
    documents rendered two cards."""
    rows = [{"template": "qa", "template_hash": h} for h in ["h1", "h2", "h3", "h4"] for _ in range(3)]
    base = pl.DataFrame(rows).with_columns(
        words=pl.lit(10, pl.UInt32), chars=pl.lit(50, pl.UInt32), input_tokens=pl.lit(1), output_tokens=pl.lit(2),
        topic_path=pl.lit("A > b"), quality_score=pl.lit(None, pl.Float64), seed_extract_id=pl.lit(None, pl.String),
        finish_reason=pl.lit("stop"), model=pl.lit("m"), audience=pl.lit("a"), style=pl.lit(None, pl.String),
        format=pl.lit(None, pl.String))  # fmt: skip
    orders = {tuple(t["hash"] for t in data_stats(base.sample(fraction=1.0, shuffle=True, seed=s))["templates"])
              for s in range(10)}  # fmt: skip
    assert orders == {("h1", "h2", "h3", "h4")}

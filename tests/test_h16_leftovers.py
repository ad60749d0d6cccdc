"""Small gaps between what a caller asks for and what is done or said: `params` that set the temperature, top_p or
seed the journal keys (the provider got another value than the one journaled); `LLM` on an arrow
RecordBatchReader (each batch paid as one row); and per-topic caps a grown taxonomy cannot meet, reported without
the recipe fields to change."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from textbookgen.build import build, render_prompts
from textbookgen.engine import ChatRequest, canonical_request
from textbookgen.llm import LLM
from textbookgen.providers import AnthropicProvider, OpenAIProvider
from textbookgen.recipe import RecipeError, load_recipe
from textbookgen.taxonomy import Taxonomy
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Explain tides."}]
ROWS = [{"topic": "tides", "grade": 3}, {"topic": "enzymes", "grade": 4}, {"topic": "levers", "grade": 5}]


@pytest.mark.parametrize("key, field_value, param_value", [("temperature", 0.7, 1.3), ("top_p", 0.9, 0.2),
                                                           ("seed", 1, 99)])
def test_params_may_not_override_the_sampling_fields_the_journal_keys(key, field_value, param_value):
    """Each body put the params value over the field's: the journal keyed one value and the provider got another."""
    for cls in (OpenAIProvider, AnthropicProvider):
        provider = object.__new__(cls)  # no client: only the body is built
        provider.model, provider._max_key = "m", "max_tokens"
        with pytest.raises(ValueError, match=f"'params' must not set '{key}' .*use the request's {key}"):
            req = ChatRequest(messages=MESSAGES, params={key: param_value}, **{key: field_value})
            keyed, sent = canonical_request("openai", "m", req)[key], provider.body(req).get(key)
            assert keyed == sent  # without the check: the journal's key says field_value, the body param_value


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short section on {row['topic']} for grade {row['grade']}."


def _lesson(emu: Emulator) -> Lesson:
    return Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=100)


def test_an_arrow_record_batch_reader_gives_the_rows_of_its_batches():
    """Iterating a RecordBatchReader yields its batches: two batches of three rows were two requests, not three."""
    pa = pytest.importorskip("pyarrow")
    batches = [pa.RecordBatch.from_pylist(ROWS[:2]), pa.RecordBatch.from_pylist(ROWS[2:])]
    with Emulator() as emu:
        table = _lesson(emu)(pa.RecordBatchReader.from_batches(batches[0].schema, batches))
        assert emu.billed == 3
    assert table.select("topic", "grade").to_dicts() == ROWS


@pytest.mark.parametrize("pieces, kind", [
    (lambda pa: pa.Table.from_pylist(ROWS).to_batches(max_chunksize=2), "batch (RecordBatch)"),
    (lambda pa: pl.DataFrame(ROWS).iter_slices(2), "batch (DataFrame)"),
    (lambda pa: pl.DataFrame(ROWS).iter_columns(), "column (Series)"),
    (lambda pa: pa.Table.from_pylist(ROWS).columns, "column (ChunkedArray)"),
])
def test_an_iterable_of_batches_or_columns_is_refused_before_anything_is_paid(pieces, kind):
    pa = pytest.importorskip("pyarrow")
    with Emulator() as emu:
        with pytest.raises(TypeError, match=rf"row 0 of the \w+ is a whole {re.escape(kind)}, not a row: pass one"):
            _lesson(emu)(pieces(pa))
        assert emu.received == 0


def test_rows_that_are_dicts_or_pandas_rows_still_go_through():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(ROWS)
    with Emulator() as emu:
        table = _lesson(emu)(row for _, row in frame.iterrows())
        assert emu.billed == 3
    assert table.height == 3


def _quickstart(out: Path, **changes) -> object:
    return load_recipe(ROOT / "recipes" / "quickstart.yaml", {"output": str(out), "web_samples": None, **changes})


def test_caps_the_grown_taxonomy_cannot_meet_name_the_fields_in_plan_and_build(tmp_path):
    """Validation checks caps against the roots (125 topics) and grow.target; min_per_topic=2 x 200 grown topics >
    300 samples surfaced from the prompts stage as the sampler's bare 'min_per_topic=2 x 200 topics > 300 samples'."""
    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        recipe = _quickstart(tmp_path / "o", **{"provider.base_url": emu.openai_base_url, "samples": 300,
                                                "taxonomy.max_per_topic": None, "taxonomy.min_per_topic": 2,
                                                "taxonomy.grow": {"target": 200}})
        for plan_only in (True, False):
            with pytest.raises(RecipeError) as err:
                build(recipe, plan_only=plan_only, progress=False)
            message = str(err.value)
            assert message.startswith("--set taxonomy.min_per_topic: min_per_topic=2 x 2")  # the field that set it
            assert "> 300 samples" in message
            assert "lower taxonomy.min_per_topic or raise samples, or grow fewer topics (taxonomy.grow.target)" in message


def test_a_max_per_topic_too_low_for_the_taxonomy_names_the_fields(tmp_path):
    recipe = _quickstart(tmp_path / "o", samples=20)
    (tmp_path / "t.yaml").write_text("topics: [Physics, Chemistry]\n")
    small = Taxonomy.load(tmp_path / "t.yaml")
    with pytest.raises(RecipeError, match=r"taxonomy\.max_per_topic: max_per_topic=4 x 2 topics < 20 samples \(the "
                                          r"taxonomy has 2 leaf topics\): raise taxonomy\.max_per_topic or the topics "
                                          r"\(taxonomy\.source\), or lower samples"):
        render_prompts(recipe, small, None)

"""`textbookgen topics`: built-in topic lists by name, and `grow`'s budget and journal."""

from __future__ import annotations

import re

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.recipe import builtin_topics
from textbookgen.taxonomy import Taxonomy
from textbookgen.testing.emulator import Emulator, EmulatorConfig


def _topics(*args: str):
    return CliRunner().invoke(app, ["topics", *args])


@pytest.fixture
def emu():
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as e:
        yield e


def test_topics_commands_take_builtin_names_as_recipes_do(tmp_path, emu):
    stats = _topics("stats", "builtin:commonsense")
    assert stats.exit_code == 0 and "125 leaves" in stats.output, stats.output
    converted = _topics("convert", "builtin:python", str(tmp_path / "python.csv"))
    assert converted.exit_code == 0, converted.output
    tax = Taxonomy.load(tmp_path / "python.csv")
    table = tmp_path / "t.parquet"
    pl.DataFrame({"topic_id": [t.id for t in tax.leaves()]}).write_parquet(table)
    coverage = _topics("coverage", "builtin:python", str(table))
    assert coverage.exit_code == 0 and "name topics that are not in" not in coverage.output, coverage.output
    grown = _topics("grow", "builtin:stories", str(tmp_path / "g.yaml"), "--target", "60", "--base-url",
                    emu.openai_base_url)
    assert grown.exit_code == 0, grown.output
    assert len(Taxonomy.load(tmp_path / "g.yaml").leaves()) == 60
    unknown = _topics("stats", "builtin:nope")
    assert unknown.exit_code == 1 and len(unknown.output.splitlines()) == 1
    assert unknown.output.startswith("error: no built-in topic list 'builtin:nope' (built-ins: commonsense")


def test_grow_journal_defaults_beside_the_output_not_the_working_folder(tmp_path, emu, monkeypatch):
    here, out = tmp_path / "here", tmp_path / "out"
    here.mkdir()
    out.mkdir()
    monkeypatch.chdir(here)
    res = _topics("grow", "builtin:stories", str(out / "g.yaml"), "--target", "60", "--base-url",
                  emu.openai_base_url)
    assert res.exit_code == 0, res.output
    assert (out / "g.journal.sqlite").is_file() and not list(here.iterdir())
    billed = emu.billed
    monkeypatch.chdir(tmp_path)  # from another folder the rerun replays the journal: nothing is paid again
    again = _topics("grow", "builtin:stories", str(out / "g.yaml"), "--target", "60", "--base-url",
                    emu.openai_base_url)
    assert again.exit_code == 0 and emu.billed == billed, again.output
    assert "<dst>.journal.sqlite" in _topics("grow", "--help").output


def test_grow_budget_stops_growth_exits_4_without_writing_and_a_rerun_goes_on(tmp_path, emu):
    dst, journal = tmp_path / "g.yaml", tmp_path / "g.journal.sqlite"
    args = ["grow", "builtin:stories", str(dst), "--target", "200", "--base-url", emu.openai_base_url]
    nothing = _topics(*args, "--max-output-tokens", "10")  # not even one answer at max_tokens fits
    assert nothing.exit_code == 4 and emu.billed == 0, nothing.output
    assert "the budget --max-output-tokens 10 (0 output tokens paid) stopped growth" in nothing.output
    assert "g.yaml not written (short of --target 200)" in nothing.output
    assert "38 -> 38 leaves in 0 calls (21 kept back by the budget)" in nothing.output  # it said "in 38 calls"
    assert not dst.exists()
    some = _topics(*args, "--max-output-tokens", "3000")
    assert some.exit_code == 4 and 0 < emu.billed and not dst.exists(), some.output
    paid = emu.billed
    replan = _topics(*args, "--plan")  # the calls the journal answers are free: not planned as paid again
    assert replan.exit_code == 0 and emu.billed == paid, replan.output
    assert re.search(r"calls \([\d,]+ more answered by .*g\.journal\.sqlite, free\)", replan.output), replan.output
    done = _topics(*args)
    assert done.exit_code == 0 and emu.duplicates == 0 and emu.billed > paid, done.output
    assert len(Taxonomy.load(dst).leaves()) == 200 and journal.is_file()
    bad = _topics(*args, "--max-cost", "-1")
    assert bad.exit_code == 1 and bad.output == "error: --max-cost: must be >= 0, got -1.0\n"


def test_coverage_reads_the_topic_ids_generate_writes_in_metadata(tmp_path, emu, monkeypatch):
    """`generate --out x.parquet` keeps each prompt's metadata (topic_id included) as one JSON text column."""
    import json

    outline = tmp_path / "t.md"
    outline.write_text("# T\n\n## A\n\n- a1\n- a2\n\n## B\n\n- b1\n- b2\n")
    tax = Taxonomy.load(outline)
    leaves = tax.leaves()[:3]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write about {t.name}", "metadata": {"topic_id": t.id}}) + "\n"
                               for t in leaves))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "out.parquet"
    gen = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url, "--out", str(out)])
    assert gen.exit_code == 0, gen.output
    coverage = _topics("coverage", str(outline), str(out))
    assert coverage.exit_code == 0, coverage.output
    assert coverage.output.startswith("3 samples over 3/4 leaf topics"), coverage.output
    structs = tmp_path / "structs.parquet"
    pl.DataFrame({"metadata": [{"topic_id": t.id, "style": "x"} for t in leaves]}).write_parquet(structs)
    from_structs = _topics("coverage", str(outline), str(structs)).output
    assert from_structs.splitlines()[1:] == [line.split(" samples")[0] + " samples" if "covered," in line else line
                                             for line in coverage.output.splitlines()[1:]]  # no token column
    generated = coverage.output.splitlines()[0]
    assert generated.startswith(from_structs.splitlines()[0] + "; ") and generated.endswith(" output tokens")


def test_coverage_without_topic_ids_names_the_columns_it_looked_for(tmp_path):
    table = tmp_path / "t.parquet"
    pl.DataFrame({"text": ["a"], "metadata": ['{"style": "x"}']}).write_parquet(table)
    res = _topics("coverage", "builtin:python", str(table))
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1
    assert res.output == (f"error: {table}: no topic ids: looked for a topic_id column and a metadata column "
                          "(struct or JSON) with topic_id; its columns: text, metadata\n")


def test_grow_shows_calls_tokens_and_cost_before_paying_and_plan_stops_there(tmp_path, emu):
    dst = tmp_path / "g.yaml"
    args = ["grow", "builtin:commonsense", str(dst), "--target", "2000", "--base-url", emu.openai_base_url]
    plan = _topics(*args, "--plan")
    assert plan.exit_code == 0 and emu.received == 0 and not dst.exists(), plan.output
    first = plan.output.splitlines()[0]
    assert first.startswith("plan: 125 -> 2,000 leaves: ~"), first
    assert " calls, ~" in first and "tokens, ~$" in first and "on gpt-4o-mini" in first, first
    low = _topics(*args, "--max-cost", "0.00001", "--plan")
    assert "exceeds --max-cost 1e-05" in low.output, low.output
    grown = _topics(*args)
    assert grown.exit_code == 0 and grown.output.startswith(first), grown.output
    assert "round 1: 125 topics x 10 subtopics (125 of 2,000 leaves)" in grown.output  # the progress line restarts
    local = _topics(*args[:-2], "--model", "my-local-model", "--plan")
    assert "my-local-model is not in the price table" in local.output and "--price" in local.output, local.output
    priced = _topics(*args[:-2], "--model", "my-local-model", "--price", "my-local-model=1,2", "--plan")
    line = next(ln for ln in priced.output.splitlines() if ln.startswith("plan: "))
    tokens_in, tokens_out, usd = re.search(r"~([\d,]+) input \+ ~([\d,]+) output tokens, ~\$([\d.]+) on my-local", line).groups()
    # priced by --price: $1 per 1M input tokens, $2 per 1M output tokens
    assert float(usd) == pytest.approx((int(tokens_in.replace(",", "")) + 2 * int(tokens_out.replace(",", ""))) / 1e6,
                                       abs=1e-4), line


def test_an_interrupted_grow_names_the_journal_to_resume_from(tmp_path, emu, monkeypatch):
    import textbookgen.taxonomy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(textbookgen.taxonomy, "grow", interrupted)
    res = _topics("grow", "builtin:stories", str(tmp_path / "g.yaml"), "--target", "60", "--base-url",
                  emu.openai_base_url)
    assert res.exit_code == 130, res.output
    assert (f"interrupted: the answers paid for are kept in {tmp_path / 'g.journal.sqlite'}; rerun the same "
            "command to resume") in res.output


def test_grow_max_depth_says_why_the_taxonomy_stays_short_of_the_target(tmp_path, emu):
    dst = tmp_path / "g.yaml"
    res = _topics("grow", "builtin:stories", str(dst), "--target", "5000", "--max-depth", "3", "--per-call", "5",
                  "--base-url", emu.openai_base_url)
    assert res.exit_code == 0, res.output
    tax = Taxonomy.load(dst)
    assert tax.depth() == 3 and len(tax.leaves()) < 5000
    assert f"note: {len(tax.leaves()):,} leaves, short of --target 5,000: every leaf is at --max-depth 3" in res.output


def test_coverage_reports_documents_and_tokens_per_branch_lists_uncovered_topics_and_writes_a_table(tmp_path):
    """A 20K-topic build needs more than one line per subject: which branches are thin, which topics never came
    up, and every topic's count in a file (and a plot) to look at."""
    outline = tmp_path / "t.md"
    outline.write_text("# T\n\n## Arts\n\n- Music\n  - Jazz\n  - Opera\n- Dance\n\n## Science\n\n- Physics\n- Chemie\n")
    tax = Taxonomy.load(outline)
    ids = {t.path_str: t.id for t in tax.leaves()}
    docs = tmp_path / "data"
    docs.mkdir()  # a dataset folder of shards, as a build or a pull writes it
    pl.DataFrame({"topic_id": [ids["Arts > Music > Jazz"]] * 3 + [ids["Science > Physics"]],
                  "output_tokens": [100, 200, 300, 50]}).write_parquet(docs / "train-00000-of-00002.parquet")
    pl.DataFrame({"topic_id": [ids["Science > Physics"]], "output_tokens": [25]}).write_parquet(
        docs / "train-00001-of-00002.parquet")
    out, plot = tmp_path / "per_topic.csv", tmp_path / "coverage.png"
    res = _topics("coverage", str(outline), str(docs), "--depth", "2", "--out", str(out), "--plot", str(plot))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "5 samples over 2/5 leaf topics (40.0% covered; 0-3 per topic); 675 output tokens"
    assert "  Arts > Music: 1/2 leaves covered, 3 samples, 600 tokens" in lines
    assert "  Arts > Dance: 0/1 leaves covered, 0 samples, 0 tokens" in lines
    assert "uncovered: 3 leaf topics" in res.output
    assert "  Arts > Music > Opera" in lines and "  Science > Chemie" in lines
    table = pl.read_csv(out)
    assert table.columns == ["topic_id", "topic_path", "samples", "tokens"] and table.height == 5
    assert table.filter(pl.col("topic_path") == "Science > Physics")["tokens"].to_list() == [75]
    assert plot.read_bytes().startswith(b"\x89PNG")
    bogus = _topics("coverage", str(outline), str(docs), "--plot", str(tmp_path / "c.bogus"))
    assert bogus.exit_code == 1 and bogus.output == f"error: --plot {tmp_path / 'c.bogus'}: draw a .png, .svg or .pdf\n"


def test_stats_of_a_large_flat_list_shows_its_shape_not_every_subject(tmp_path):
    """A 26K-title list printed 26K lines; a grown tree's stats said nothing of its depth or repeated names."""
    flat = tmp_path / "titles.yaml"
    flat.write_text("".join(f"- Title {i}\n" for i in range(40)))
    res = _topics("stats", str(flat))
    assert res.exit_code == 0 and len(res.output.splitlines()) < 35, res.output
    assert "  ... 15 more subjects" in res.output
    tree = tmp_path / "t.md"
    tree.write_text("# T\n\n## Arts\n\n- Music\n  - Music education\n- Dance\n\n## Education\n\n- Music Education\n"
                    "- Pedagogy\n")
    lines = _topics("stats", str(tree)).output.splitlines()
    assert "leaves by depth: 2: 3 · 3: 1" in lines, lines
    assert ("names in more than one place (case, plurals and accents aside): 1, e.g. 'Music education': "
            "Arts > Music > Music education; Education > Music Education") in lines, lines


def test_raising_the_target_of_a_grown_taxonomy_reuses_every_answer_paid_for(tmp_path, emu):
    """Grow to a small target, inspect, grow to the real one: the subtopics asked per call used to follow
    --target, so every request changed and the second grow paid for all of them again."""
    import re

    dst = tmp_path / "g.yaml"
    args = ["grow", "builtin:stories", str(dst), "--base-url", emu.openai_base_url]
    small = _topics(*args, "--target", "100")
    assert small.exit_code == 0, small.output
    large = _topics(*args, "--target", "600")
    assert large.exit_code == 0, large.output
    calls = int(re.search(r"leaves in ([\d,]+) calls", large.output).group(1).replace(",", ""))
    assert emu.billed == calls and emu.duplicates == 0, large.output  # the small grow's answers all served again


def test_a_rerun_asks_for_as_many_subtopics_per_call_as_the_journal_did(tmp_path, emu):
    dst = tmp_path / "g.yaml"
    args = ["grow", "builtin:stories", str(dst), "--target", "100", "--base-url", emu.openai_base_url]
    assert _topics(*args, "--per-call", "6").exit_code == 0
    billed = emu.billed
    again = _topics(*args)
    assert again.exit_code == 0 and emu.billed == billed, again.output
    assert f"note: 6 subtopics per call, as the answers in {tmp_path / 'g.journal.sqlite'} asked" in again.output


def test_a_grow_left_short_by_refusals_exits_3_and_says_what_a_rerun_can_do(tmp_path):
    from textbookgen.testing.emulator import Fault

    dst = tmp_path / "g.yaml"
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("refusal", rate=1.0)])) as refusing:
        res = _topics("grow", "builtin:stories", str(dst), "--target", "300", "--base-url", refusing.openai_base_url)
    assert res.exit_code == 3 and dst.is_file(), res.output  # it said nothing and exited 0
    assert "error: 38 leaves, short of --target 300: " in res.output and "another --seed" in res.output


def test_per_call_help_names_the_default_the_sdk_uses():
    """The help spells the number out (the CLI does not import the taxonomy module to start)."""
    from textbookgen.recipe import GrowConfig
    from textbookgen.taxonomy import PER_CALL

    out = CliRunner().invoke(app, ["topics", "grow", "--help"], terminal_width=200).output
    assert f"else {PER_CALL};" in " ".join(out.split()) and GrowConfig(target=5).per_call == PER_CALL


def test_coverage_of_a_build_folder_reads_its_dataset(tmp_path):
    """A build folder holds prompts, documents and curation reports: read whole, each document counted three times
    (or a report without topic ids failed the command)."""
    outline = tmp_path / "t.md"
    outline.write_text("# T\n\n## A\n\n- a1\n- a2\n\n## B\n\n- b1\n- b2\n")
    leaf = Taxonomy.load(outline).leaves()[0]
    build = tmp_path / "build"
    (build / ".build").mkdir(parents=True)
    (build / "manifest.json").write_text("{}")
    docs = pl.DataFrame({"topic_id": [leaf.id] * 2, "text": ["x", "y"]})
    docs.write_parquet(build / "documents.parquet")
    docs.write_parquet(build / "prompts.parquet")
    pl.DataFrame({"id": ["z"]}).write_parquet(build / ".build" / "dropped.parquet")
    res = _topics("coverage", str(outline), str(build))
    assert res.exit_code == 1 and "no dataset/ yet" in res.output, res.output
    (build / "dataset" / "data").mkdir(parents=True)
    docs.write_parquet(build / "dataset" / "data" / "train-00000-of-00001.parquet")
    res = _topics("coverage", str(outline), str(build))
    assert res.exit_code == 0 and res.output.startswith("note: ") and "2 samples over 1/4 leaf topics" in res.output


def test_a_grow_left_short_by_repetitive_answers_says_so_and_exits_0(tmp_path):
    """Every answer repeats names already taken: no call failed, so DST is written and the note suggests a larger
    --per-call or another --seed (not a rerun, which would replay the same answers)."""
    import json

    dst = tmp_path / "g.yaml"
    same = EmulatorConfig(latency_median_s=0.001, responder=lambda body: json.dumps({"subtopics": ["Aa", "Bb"]}))
    with Emulator(same) as emu:
        res = _topics("grow", "builtin:stories", str(dst), "--target", "300", "--base-url", emu.openai_base_url)
    assert res.exit_code == 0 and dst.is_file(), res.output
    assert "note: 39 leaves, short of --target 300: the answers held too few new names (" in res.output
    assert "near-duplicates dropped); try a larger --per-call or another --seed" in res.output


def test_grow_points_at_a_journal_left_at_the_old_default_path(tmp_path, emu, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grow.sqlite").write_bytes(b"")
    res = _topics("grow", "builtin:stories", "g.yaml", "--target", "60", "--base-url", emu.openai_base_url)
    assert res.exit_code == 0, res.output
    assert ("note: journal g.journal.sqlite; to resume a grow journaled in ./grow.sqlite (the old default), pass "
            "--journal grow.sqlite") in res.output
    quiet = _topics("grow", "builtin:stories", "h.yaml", "--target", "60", "--base-url", emu.openai_base_url,
                    "--journal", "grow.sqlite")
    assert quiet.exit_code == 0 and "old default" not in quiet.output, quiet.output


def test_a_grow_stopped_by_max_cost_names_that_budget_and_what_it_spent(tmp_path, emu):
    dst = tmp_path / "g.yaml"
    res = _topics("grow", "builtin:stories", str(dst), "--target", "200", "--base-url", emu.openai_base_url,
                  "--max-cost", "0")
    assert res.exit_code == 4 and emu.billed == 0 and not dst.exists(), res.output
    assert "38 -> 38 leaves in 0 calls (21 kept back by the budget): the budget --max-cost 0 ($0.0000 spent) " \
           "stopped growth" in res.output


def test_a_grow_journal_that_is_a_folder_is_one_error_line_before_anything(tmp_path, emu):
    """It failed after the plan and the first round's line, saying the answers were kept in the folder and to rerun
    the same command (which failed the same way)."""
    folder = tmp_path / "j"
    folder.mkdir()
    res = _topics("grow", "builtin:stories", str(tmp_path / "g.yaml"), "--target", "60", "--journal", str(folder),
                  "--base-url", emu.openai_base_url)
    assert res.exit_code == 1 and emu.received == 0
    assert res.output == f"error: --journal {folder}: is a folder; give a file name\n"


def test_coverage_against_another_taxonomy_says_so_first(tmp_path):
    """A table built from another taxonomy covers none of this one: said at once, not after a report of 0 covered."""
    python, stories = (Taxonomy.load(builtin_topics(f"builtin:{name}")) for name in ("python", "stories"))
    table = tmp_path / "t.parquet"
    pl.DataFrame({"topic_id": [t.id for t in python.leaves()]}).write_parquet(table)
    wrong = _topics("coverage", "builtin:stories", str(table))
    assert wrong.exit_code == 1 and wrong.output.startswith(f"error: {table}: none of its "), wrong.output
    assert "builtin:stories" in wrong.output and "covered" not in wrong.output
    mixed = tmp_path / "m.parquet"
    pl.DataFrame({"topic_id": [python.leaves()[0].id, stories.leaves()[0].id]}).write_parquet(mixed)
    some = _topics("coverage", "builtin:stories", str(mixed))
    assert some.exit_code == 0, some.output
    assert some.output.startswith("note: 1 of 2 samples name topics that are not in builtin:stories"), some.output

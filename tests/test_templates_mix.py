"""Mix cells per prompt (`MixSchedule`): every prompt's cell follows the mix weights without bias however
often its topic repeats, a topic's cells are spread (no repeated topic x cell while it has few prompts),
a larger build extends a smaller one, and the draws are named, so a mix edit moves only the prompts it
implies."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy
from textbookgen.templates import MixSchedule, expand_mix

ROOT = Path(__file__).resolve().parents[1]
MIX = [
    {"template": "textbook_section", "weight": 3,
     "audiences": {"middle_school": 1, "high_school": 1, "college": 1, "general": 1},
     "styles": {"academic": 1, "narrative": 1, "conversational": 1}},
    {"template": "exercises", "weight": 1, "audiences": {"middle_school": 1, "high_school": 1, "college": 1},
     "styles": {"step_by_step": 1, "problem_driven": 1}},
    {"template": "qa", "weight": 1, "audiences": {"general": 1, "high_school": 1},
     "styles": {"conversational": 1, "socratic": 1}},
]  # fmt: skip
# The walkthrough's mix: templates 3:2:1, cells of 1/16 to 1/6 (one topic's 26 prompts come back to each)
SKEWED = [
    {"template": "textbook_section", "weight": 3, "audiences": {"high_school": 1, "college": 2, "general": 1},
     "styles": {"academic": 1, "narrative": 1}},
    {"template": "exercises", "weight": 2, "audiences": {"college": 1, "general": 1},
     "styles": {"step_by_step": 1}},
    {"template": "qa", "weight": 1, "audiences": {"college": 1}},
]  # fmt: skip


def _topics(n_topics: int, n: int, seed: int) -> list[str]:
    tax = Taxonomy(name="t")
    for i in range(n_topics):
        tax.add(f"topic {i}")
    return [t.id for t in tax.sample(n, seed)]


def _names(topics: list[str], entries: list[dict], seed: int) -> list[tuple]:
    """Each prompt's name: (series, number), what its extract, words and request seed are drawn from."""
    mix = MixSchedule(expand_mix(entries), seed)
    return [(series, k) for _, series, k in (mix.next(t) for t in topics)]


def test_no_topic_repeats_a_cell_while_it_has_few_prompts_and_the_mix_weights_hold():
    """Drawn independently of the topics, 4 prompts per topic over 22 cells repeated a (topic, cell) for
    about 1 prompt in 10: byte-identical prompts where no web extract differs."""
    topics = _topics(2_500, 10_000, seed=7)
    mix = MixSchedule(expand_mix(MIX), seed=7)
    cells = [mix.next(t)[0] for t in topics]
    assert max(Counter(zip(topics, cells, strict=True)).values()) == 1
    by_template = Counter(c.template for c in cells)
    assert abs(by_template["textbook_section"] - 6_000) < 150  # 3 standard deviations of 10,000 draws
    assert abs(by_template["qa"] - 2_000) < 120


@pytest.mark.parametrize("prompts_per_topic", [2, 6, 26])
def test_every_prompt_of_a_topic_follows_the_weights(prompts_per_topic):
    """The k-th prompt of a topic has each template with its weight, for every k. The old cell sequence
    gave a repeated topic the cells it had not had yet (as would any rule taking the best cell not had
    yet): a topic's 26 prompts used its 9 cells about equally, 3:2:1 came out 62:25:13."""
    n_topics = 12_000 // prompts_per_topic
    combos = expand_mix(SKEWED)
    per_k: list[Counter[str]] = [Counter() for _ in range(prompts_per_topic)]
    mix = MixSchedule(combos, seed=3)
    for t in range(n_topics):
        for k in range(prompts_per_topic):
            per_k[k][mix.next(f"t{t}")[0].template] += 1
    for k in (0, 1, prompts_per_topic - 1):
        shares = {tpl: per_k[k][tpl] / n_topics for tpl in ("textbook_section", "exercises", "qa")}
        sd = (0.25 / n_topics) ** 0.5
        expected = {"textbook_section": 1 / 2, "exercises": 1 / 3, "qa": 1 / 6}
        assert shares == pytest.approx(expected, abs=4 * sd), k


def test_a_topic_with_more_prompts_than_cells_takes_them_by_weight():
    combos = expand_mix([{"template": "qa", "audiences": {"general": 2, "college": 1}}])
    mix = MixSchedule(combos, seed=0)
    cells = [mix.next("t")[0].audience for _ in range(9)]
    assert Counter(cells) == {"general": 6, "college": 3}  # each cell's floor or ceil of its share
    assert all(cells[i : i + 3].count("college") == 1 for i in range(0, 9, 3))  # evenly spaced


def test_cells_are_deterministic_and_a_larger_build_extends_a_smaller_one():
    topics = _topics(300, 3_000, seed=1)
    full = _names(topics, MIX, seed=1)
    assert _names(topics, MIX, seed=1) == full
    assert _names(topics[:1_000], MIX, seed=1) == full[:1_000]
    assert _names(topics, MIX, seed=2) != full


def test_mix_edits_move_only_the_prompts_they_imply():
    """A prompt is named by (topic, cell, its use of the cell), and the build draws everything else from the
    name: the prompts an edit re-pays are the names it adds. The old cell sequence re-paid 397, 389 and 441
    of 500 prompts for these edits."""
    topics = _topics(19, 3_000, seed=5)  # 158 prompts per topic: every cell comes back many times
    base = set(_names(topics, SKEWED, seed=5))

    def moved(edit) -> float:
        entries = [{**e, **{k: dict(v) for k, v in e.items() if isinstance(v, dict)}} for e in SKEWED]
        edit(entries)
        return len(set(_names(topics, entries, seed=5)) - base) / len(topics)

    # the share each edit moves (total variation of the cell weights) is 11.9%, 2.4% and 16.7%
    assert moved(lambda m: m[2].update(weight=2)) < 0.13
    assert moved(lambda m: m[0]["audiences"].update(professionals=0.2)) < 0.035
    assert moved(lambda m: m[1]["styles"].update(problem_driven=1)) < 0.18
    assert moved(lambda m: m.reverse()) == 0
    assert moved(lambda m: m[0].update(audiences=dict(reversed(m[0]["audiences"].items())))) == 0


def test_a_template_in_two_entries_keeps_them_apart():
    combos = expand_mix([{"template": "qa", "weight": 1}, {"template": "qa", "weight": 1, "max_tokens": 300}])
    assert [c.names[0] for c in combos] == ["qa", "qa#2"]
    mix = MixSchedule(combos, 0)
    cells = Counter(mix.next(f"t{i}")[0].max_tokens for i in range(2_000))
    assert 900 < cells[None] < 1_100


def test_real_topic_list_build_has_no_repeated_topic_cell(shared_data):
    """26K SciPhi course titles, 100K prompts with the quickstart mix: every (topic, cell) distinct."""
    tax = Taxonomy.load(shared_data / "sciphi_topics" / "tayn_evol_evol_grade_school.yaml.gz")
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    topics = [t.id for t in tax.sample(100_000, r.seed)]
    mix = MixSchedule(expand_mix([e.model_dump() for e in r.mix]), r.seed)
    assert len({(t, mix.next(t)[0]) for t in topics}) == 100_000


@pytest.mark.parametrize(
    "entries",
    [
        [{"template": "qa", "audiences": {"general": float("nan"), "college": 1}}],
        [{"template": "qa", "styles": {"academic": float("inf")}}],
        [{"template": "qa", "weight": 0}, {"template": "story", "weight": 0}],
    ],
)
def test_mix_weights_that_are_not_finite_shares_are_an_error(entries):
    """NaN made every cell of the entry vanish silently (an empty mix); all-zero entry weights divided by zero."""
    with pytest.raises(ValueError, match=r"weights must be >= 0 with a positive sum \(finite numbers\)"):
        expand_mix(entries)

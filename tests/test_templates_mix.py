"""Mix cells per prompt: no topic gets the same template x audience x style x format twice while it
has cells left, the mix weights hold in every prefix, and a larger build extends a smaller one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy, weighted_sequence
from textbookgen.templates import assign_cells, expand_mix

ROOT = Path(__file__).resolve().parents[1]
MIX = [
    {"template": "textbook_section", "weight": 3,
     "audiences": {"middle_school": 1, "high_school": 1, "college": 1, "general": 1},
     "styles": {"academic": 1, "narrative": 1, "conversational": 1}},
    {"template": "exercises", "weight": 1, "audiences": {"middle_school": 1, "high_school": 1, "college": 1},
     "styles": {"step_by_step": 1, "problem_driven": 1}},
    {"template": "qa", "weight": 1, "audiences": {"general": 1, "high_school": 1},
     "styles": {"conversational": 1, "socratic": 1}},
]


def _topics(n_topics: int, n: int, seed: int) -> list[str]:
    tax = Taxonomy(name="t")
    for i in range(n_topics):
        tax.add(f"topic {i}")
    return [t.id for t in tax.sample(n, seed)]


def test_no_topic_repeats_a_cell_and_the_mix_weights_hold():
    """Drawn independently of the topics (the old way), 4 prompts per topic over 22 cells repeated a
    (topic, cell) for about 1 prompt in 10: byte-identical prompts where no web extract differs."""
    combos = expand_mix(MIX)
    topics = _topics(2_500, 10_000, seed=7)
    cells = assign_cells(topics, combos, seed=7)
    pairs = Counter(zip(topics, cells, strict=True))
    assert max(pairs.values()) == 1
    old = [combos[int(k)] for k in weighted_sequence(10_000, np.array([c.weight for c in combos]),
                                                      np.random.default_rng([7, 0xC0]))]
    assert sum(c > 1 for c in Counter(zip(topics, old, strict=True)).values()) > 500  # what it fixes
    # the multiset of cells is the weighted sequence's, up to the look-ahead: template shares hold
    by_template, before = Counter(c.template for c in cells), Counter(c.template for c in old)
    assert all(abs(by_template[t] - before[t]) <= 2 for t in before)
    assert abs(by_template["textbook_section"] - 6_000) <= 2


def test_cells_are_deterministic_and_a_larger_build_extends_a_smaller_one():
    combos = expand_mix(MIX)
    topics = _topics(300, 3_000, seed=1)
    full = assign_cells(topics, combos, seed=1)
    assert assign_cells(topics, combos, seed=1) == full
    assert assign_cells(topics[:1_000], combos, seed=1) == full[:1_000]
    assert assign_cells(topics, combos, seed=2) != full


def test_a_topic_with_more_prompts_than_cells_spreads_its_repeats():
    combos = expand_mix([{"template": "qa", "audiences": {"general": 1, "college": 1}}])
    cells = assign_cells(["t"] * 6, combos, seed=0)
    assert Counter(c.audience for c in cells) == {"general": 3, "college": 3}


def test_real_topic_list_build_has_no_duplicate_prompts(shared_data):
    """26K SciPhi course titles, 100K prompts with the quickstart mix: every (topic, cell) distinct."""
    tax = Taxonomy.load(shared_data / "sciphi_topics" / "tayn_evol_evol_grade_school.yaml.gz")
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    topics = [t.id for t in tax.sample(100_000, r.seed)]
    cells = assign_cells(topics, expand_mix([e.model_dump() for e in r.mix]), r.seed)
    assert len(set(zip(topics, cells, strict=True))) == 100_000


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

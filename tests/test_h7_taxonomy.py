"""`Taxonomy.load` from Python takes the shipped topic lists by the name recipes and the CLI use."""

from __future__ import annotations

import pytest

from textbookgen.recipe import builtin_topics
from textbookgen.taxonomy import Taxonomy, TaxonomyError


def test_a_builtin_topic_list_loads_by_its_builtin_name():
    tax = Taxonomy.load("builtin:python")
    shipped = Taxonomy.load(builtin_topics("builtin:python"))
    assert tax.name == shipped.name and tax.content_hash() == shipped.content_hash() and len(tax.leaves()) > 10


def test_an_unknown_builtin_names_the_shipped_ones():
    with pytest.raises(TaxonomyError, match=r"no built-in topic list 'builtin:nope' \(built-ins: .*commonsense"):
        Taxonomy.load("builtin:nope")

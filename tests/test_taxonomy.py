"""Topic taxonomies: loaders on real outlines, round trips, weighted sampling with quotas, growth."""

from __future__ import annotations

import gzip
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

from textbookgen.taxonomy import (
    NameIndex,
    Taxonomy,
    TaxonomyError,
    Topic,
    grow,
    name_key,
    parse_list,
    topic_id,
)

TOPICS = Path(__file__).resolve().parents[1] / "textbookgen" / "topics"


def _outline(shared_data: Path) -> Taxonomy:
    return Taxonomy.load(
        shared_data / "topics_wikipedia_outline_academic_disciplines" / "academic-disciplines.md"
    )


def _from_tar(shared_data: Path, tar_name: str, member: str, tmp_path: Path) -> Path:
    with tarfile.open(shared_data / "sciphi_topics" / tar_name) as tf:
        data = tf.extractfile(member).read()
    out = tmp_path / Path(member).name
    out.write_bytes(data)
    return out


def test_markdown_outline_of_academic_disciplines(shared_data):
    tax = _outline(shared_data)
    assert tax.name == "Outline of Academic Disciplines"
    assert [t.name for t in tax.topics] == [
        "Humanities",
        "Social science",
        "Natural science",
        "Formal science",
        "Applied science",
    ]
    depth2 = [t for t in tax.walk() if len(t.path) == 2]
    assert len(depth2) == 40  # the 40 `###` disciplines of SOURCE.md
    # 2,511 list items plus the 5 + 40 headings and the 20 deeper (####, #####) headings, less the 19
    # disciplines listed twice under one parent (e.g. Archaeology as a bullet and as a heading): merged
    assert len(tax) == 2511 + 45 + 20 - 19
    archaeology = [t for t in tax.walk() if t.path == ("Social science", "Anthropology", "Archaeology")]
    assert len(archaeology) == 1 and len(archaeology[0].children) > 20
    music = next(t for t in tax.walk() if t.path == ("Humanities", "Performing arts", "Music", "Conducting"))
    assert [c.name for c in music.children] == [
        "Choral conducting",
        "Orchestral conducting",
        "Wind ensemble conducting",
    ]
    astronomy = next(t for t in tax.walk() if t.name == "Astronomy" and len(t.path) == 4)
    assert astronomy.path == ("Natural science", "Physical Science", "Space sciences", "Astronomy")
    assert len({t.id for t in tax.walk()}) == len(tax)


def test_sciphi_weighted_title_lists(shared_data):
    path = shared_data / "sciphi_topics" / "tayn_evol_evol_grade_school.yaml.gz"
    tax = Taxonomy.load(path)
    titles = yaml.load(gzip.decompress(path.read_bytes()), Loader=yaml.CSafeLoader)["title"]
    assert len(titles) == 26_341
    # titles that differ only in case, spacing or markup are one topic: 72 are merged
    assert len(tax.leaves()) == 26_269
    assert len({t.name.casefold() for t in tax.leaves()}) == 26_269
    first = tax.leaves()[0]
    assert first.name.startswith("11st Grade Mathematics") and first.weight == 3.0
    assert all(len(t.path) == 1 for t in tax.leaves())


def test_sciphi_course_tree_with_select(shared_data, tmp_path):
    path = _from_tar(
        shared_data,
        "tayn_basic_split_yaml.tar.gz",
        "textbooks_are_all_you_need_basic_split/advanced_cybersecurity_concepts.yaml",
        tmp_path,
    )
    tax = Taxonomy.load(path, select="sub_topic.course_topic", name="Advanced Cybersecurity Concepts")
    assert tax.name == "Advanced Cybersecurity Concepts"
    assert [t.name for t in tax.topics][:2] == [
        "Threat Intelligence & Analysis",
        "Secure Software Development",
    ]
    assert "Zero Trust Architecture" in {t.name for t in tax.leaves()}
    assert len(tax.leaves()) == 20
    with pytest.raises(TaxonomyError, match="select='sub_topic.nope'"):
        Taxonomy.load(path, select="sub_topic.nope")


def test_khan_academy_table_of_contents(shared_data, tmp_path):
    path = _from_tar(
        shared_data,
        "khan_academy_table_of_contents_yaml.tar.gz",
        "table_of_contents/5th_grade.yaml",
        tmp_path,
    )
    tax = Taxonomy.load(path)
    assert tax.name == "Mastering Mathematics: A Comprehensive Guide for 5th Grade"
    place = tax.topics[0]
    assert place.name == "Decimal place value"
    assert place.children[0].name == "Decimal place value intro"
    assert [c.name for c in place.children[0].children] == [
        "Understanding decimals",
        "Importance of decimal place value",
    ]


def test_round_trips_keep_ids_and_weights(shared_data, tmp_path):
    tax = _outline(shared_data)
    tax.topics[0].weight = 2.5
    tax.topics[1].children[0].meta["level"] = "intro"
    for name in ("t.yaml", "t.csv", "t.yaml.gz"):
        back = Taxonomy.load(tax.save(tmp_path / name))
        assert [t.path for t in back.walk()] == [t.path for t in tax.walk()]
        assert [t.id for t in back.walk()] == [t.id for t in tax.walk()]
        assert back.topics[0].weight == 2.5
        assert back.topics[1].children[0].meta == {"level": "intro"}
    md = Taxonomy.load(tax.save(tmp_path / "t.md"))
    assert md.name == tax.name and [t.path for t in md.walk()] == [t.path for t in tax.walk()]


def test_csv_path_column_and_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("path,weight,level\nScience/Physics/Optics,2,intro\nScience/Physics/Mechanics,,\nArt,0.5,\n")
    tax = Taxonomy.load(p)
    assert [t.path_str for t in tax.leaves()] == [
        "Science > Physics > Optics",
        "Science > Physics > Mechanics",
        "Art",
    ]
    optics = tax.leaves()[0]
    assert optics.weight == 2.0 and optics.meta == {"level": "intro"}
    assert optics.id == topic_id(("Science", "Physics", "Optics"))
    p.write_text("path,weight\nA > B,heavy\n")
    with pytest.raises(TaxonomyError, match=r"t\.csv:2: weight 'heavy' is not a number"):
        Taxonomy.load(p)
    p.write_text("topic\nA\n")
    with pytest.raises(TaxonomyError, match=r"t\.csv:1: CSV needs a 'path' column"):
        Taxonomy.load(p)


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("topics:\n  - name: A\n   - name: B\n")
    with pytest.raises(TaxonomyError, match=r"bad\.yaml:3: not valid YAML"):
        Taxonomy.load(bad)
    latin = tmp_path / "latin.md"
    latin.write_bytes(b"# T\n\n- caf\xe9\n")
    with pytest.raises(TaxonomyError, match=r"latin\.md:3: not valid UTF-8"):
        Taxonomy.load(latin)
    with pytest.raises(TaxonomyError, match="not found"):
        Taxonomy.load(tmp_path / "missing.yaml")
    weight = tmp_path / "w.yaml"
    weight.write_text("topics:\n  - {name: A, weight: lots}\n")
    with pytest.raises(TaxonomyError, match="weight must be a number"):
        Taxonomy.load(weight)


@pytest.mark.parametrize("quota", ["-3", "abc", "2.5", "true"])
def test_a_quota_that_is_not_a_count_is_an_error_naming_file_and_topic(tmp_path, quota):
    yml = tmp_path / "q.yaml"
    yml.write_text(f"topics:\n  - name: a\n    quota: {quota}\n  - name: b\n")
    with pytest.raises(TaxonomyError, match=rf"{yml}:2: topic 'a': quota must be an integer >= 0"):
        Taxonomy.load(yml)
    table = tmp_path / "q.csv"
    table.write_text(f"path,quota\nS > a,{quota}\nS > b,\n")
    with pytest.raises(TaxonomyError, match=rf"{table}: topic 'S > a': quota must be an integer >= 0"):
        Taxonomy.load(table)
    table.write_text("path,quota\nS > a,3\nS > b,\n")
    assert Taxonomy.load(table).allocate(10, seed=0)[topic_id(("S", "a"))] == 3


def test_unreadable_taxonomy_files_are_taxonomy_errors(tmp_path):
    fake = tmp_path / "t.yaml.gz"
    fake.write_bytes(b"- not gzipped\n")
    with pytest.raises(TaxonomyError, match=rf"^{fake}: not a readable gzip file"):
        Taxonomy.load(fake)
    with pytest.raises(TaxonomyError, match=rf"^{tmp_path}: is a folder"):
        Taxonomy.load(tmp_path)


def test_topics_commands_print_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    tax = tmp_path / "t.md"
    tax.write_text("# T\n\n## A\n\n- a1\n- a2\n")
    (tmp_path / "afile").write_text("")
    cases = [
        (["stats", str(tmp_path)], "is a folder"),
        (["convert", str(tax), str(tmp_path / "out.json")], "unknown taxonomy format 'json'"),
        (["convert", str(tax), str(tmp_path / "afile" / "t.yaml")], "cannot write"),
        (["coverage", str(tax), str(tmp_path / "nothere.parquet")], "cannot read topic ids"),
        (["coverage", str(tax), str(tax)], "cannot read topic ids"),
        (["grow", str(tax), str(tmp_path / "g.json"), "--target", "9"], "unknown taxonomy format 'json'"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(app, ["topics", *args])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (args, res.output)
        assert res.output.startswith("error: ") and message in res.output
        assert len(res.output.splitlines()) == 1


def test_builtin_topic_lists_load():
    for f in sorted(TOPICS.glob("*.yaml")):
        tax = Taxonomy.load(f)
        assert len(tax.leaves()) >= 30, f
        assert len({name_key(t.name) for t in tax.leaves()}) == len(tax.leaves()), f


def test_allocate_is_systematic_and_respects_quotas(shared_data):
    tax = _outline(shared_data)
    leaves, p = tax.leaf_probabilities("hierarchical")
    counts = tax.allocate(5000, seed=1)
    assert sum(counts.values()) == 5000
    expected = {t.id: 5000 * q for t, q in zip(leaves, p, strict=True)}
    # each leaf's count is the floor or ceil of its share at the prefix's end time, within 1.5 of n*p
    assert all(abs(counts.get(i, 0) - e) < 1.5 for i, e in expected.items())
    capped = tax.allocate(5000, seed=1, max_per_topic=3)
    assert sum(capped.values()) == 5000 and max(capped.values()) <= 3
    floor = tax.allocate(len(leaves), seed=1, min_per_topic=1)
    assert len(floor) == len(leaves) and set(floor.values()) == {1}
    leaves[0].meta["quota"] = 7
    assert tax.allocate(100, seed=2)[leaves[0].id] == 7
    with pytest.raises(ValueError, match="max_per_topic"):
        tax.allocate(10_000, seed=1, max_per_topic=1)


def test_sample_is_deterministic_and_covers(shared_data):
    tax = _outline(shared_data)
    a = [t.id for t in tax.sample(500, seed=7, weighting="flat")]
    assert a == [t.id for t in tax.sample(500, seed=7, weighting="flat")]
    assert a != [t.id for t in tax.sample(500, seed=8, weighting="flat")]
    cov = tax.coverage(a)
    assert cov.n_samples == 500 and cov.covered == 500 and cov.max_per_topic == 1  # 500 < 2198 leaves
    assert sum(cov.per_subject.values()) == 500


def test_sample_order_makes_every_prefix_diverse(shared_data):
    tax = _outline(shared_data)
    n_leaves = len(tax.leaves())
    seq = [t.id for t in tax.sample(5 * n_leaves, seed=3, weighting="flat")]
    assert Counter(seq).most_common(1)[0][1] == 5
    # each leaf's 5 occurrences sit at (j + u)/5: the first fifth holds every leaf exactly once
    assert len(set(seq[:n_leaves])) == n_leaves
    # and a prefix is a weight-proportional sample (within ~3 standard deviations of its subjects' shares)
    subject = {t.id: t.path[0] for t in tax.leaves()}
    full, head = Counter(subject[i] for i in seq), Counter(subject[i] for i in seq[:1000])
    assert all(abs(head[s] - full[s] * 1000 / len(seq)) <= 40 for s in full)


def test_a_larger_sample_extends_a_smaller_one():
    """Element i depends on (seed, i) only, with quotas, floors and caps too: raising `samples` keeps the
    prompts (and the answers) already paid for, and every prefix keeps each leaf near its share."""
    tax = Taxonomy(name="t")
    for s, w in (("A", 3), ("B", 1)):
        subject = tax.add(s, weight=w)
        for i in range(6):
            subject.add(f"{s}{i}")
    tax.topics[1].children[0].meta["quota"] = 3
    kwargs = {"weighting": "hierarchical", "max_per_topic": 40, "min_per_topic": 1}
    full = [t.id for t in tax.sample(400, seed=5, **kwargs)]
    for n in (20, 50, 123, 399):
        assert [t.id for t in tax.sample(n, seed=5, **kwargs)] == full[:n]
    counts = Counter(full)
    assert counts[tax.topics[1].children[0].id] == 3 and max(counts.values()) == 40
    del tax.topics[1].children[0].meta["quota"]
    leaves, p = tax.leaf_probabilities("flat")
    plain = [t.id for t in tax.sample(1200, seed=5, weighting="flat")]
    for n in (12, 100, 555, 1200):  # about each leaf's share, at every length
        got = Counter(plain[:n])
        assert all(abs(got[t.id] - n * q) < 1.5 for t, q in zip(leaves, p, strict=True)), n



def test_a_topic_added_or_reweighted_leaves_the_others_where_they_were():
    """A leaf's phase is drawn from its id, not its place in the tree: the old phases were drawn in leaf
    order, so a topic inserted before others reshuffled them all (and the prompts of all, re-paid)."""
    tax = Taxonomy(name="t")
    for s in ("A", "B", "C"):
        subject = tax.add(s)
        for i in range(15):
            subject.add(f"{s}{i}")
    before = [t.id for t in tax.sample(300, seed=4, weighting="flat")]
    new = Topic(name="A new", path=("A", "A new"))
    tax.topics[0].children.insert(0, new)
    after = [t.id for t in tax.sample(300, seed=4, weighting="flat")]
    others = [i for i in after if i != new.id]
    assert others == before[: len(others)] and 0 < after.count(new.id) <= 8  # 300/46 of the samples
    heavy = tax.topics[2].children[3]
    heavy.weight = 3
    reweighted = [t.id for t in tax.sample(300, seed=4, weighting="flat")]
    others = [i for i in reweighted if i != heavy.id]
    assert others == [i for i in after if i != heavy.id][: len(others)]

def test_a_short_prefix_of_many_light_topics_still_gets_their_subject_share():
    """1,000 topics of one subject, 10 of another, equal subject weights: the first 100 prompts split about
    evenly, the light topics each drawn with their small chance (a fixed rounding would give them none)."""
    tax = Taxonomy(name="t")
    many, few = tax.add("Many", weight=1), tax.add("Few", weight=1)
    for i in range(1000):
        many.add(f"m{i}")
    for i in range(10):
        few.add(f"f{i}")
    first = tax.sample(100, seed=3)
    by_subject = Counter(t.path[0] for t in first)
    assert 40 <= by_subject["Many"] <= 60 and len({t.id for t in first if t.path[0] == "Many"}) == by_subject["Many"]


def test_hierarchical_weights_give_subjects_their_share():
    tax = Taxonomy(name="t")
    big = tax.add("Big", weight=1)
    for i in range(50):
        big.add(f"b{i}")
    small = tax.add("Small", weight=1)
    small.add("s0")
    small.add("s1")
    by_subject = Counter(t.path[0] for t in tax.sample(1000, seed=0))
    assert by_subject == {"Big": 500, "Small": 500}
    flat = Counter(t.path[0] for t in tax.sample(1040, seed=0, weighting="flat"))
    assert flat == {"Big": 1000, "Small": 40}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"subtopics": ["Optics", "Lenses and mirrors"]}', ["Optics", "Lenses and mirrors"]),
        ('Sure! Here they are:\n```json\n["Optics", "Waves"]\n```', ["Optics", "Waves"]),
        (
            "Here are the subtopics:\n1. **Optics**: how light bends through lenses and prisms\n2) Waves\n- Sound",
            ["Optics", "Waves", "Sound"],
        ),
        ("Optics, waves; and sound.", ["Optics", "waves", "sound"]),
        ('[{"name": "Optics"}, {"title": "Waves"}]', ["Optics", "Waves"]),
        ("1. Physics: energy\n2. Physics: optics", ["Physics: energy", "Physics: optics"]),
        ('["Optics", 3, null, true, ["Waves"], {"name": 7}, {"name": "Sound"}]', ["Optics", "Sound"]),
    ],
)
def test_parse_list(text, expected):
    assert parse_list(text) == expected


def test_near_duplicate_names():
    assert name_key("The Laws of Motion!") == name_key("law of motion") == name_key("Laws of Motion")
    assert name_key("Cells & Tissues") == name_key("cells and tissue")
    idx = NameIndex(["Newton's laws of motion"])
    assert idx.is_duplicate("Newtons Laws of Motion")
    assert idx.is_duplicate("Motion laws of Newton", scope=["Newton's laws of motion"])  # fuzzy, token order
    assert not idx.is_duplicate("Conservation of energy", scope=["Newton's laws of motion"])


def test_grow_reaches_target_without_duplicates():
    from textbookgen.engine import Generator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    tax = Taxonomy.load(TOPICS / "commonsense.yaml")
    before = {t.id for t in tax.walk()}
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen = Generator(
            provider="openai", model="gpt-4o-mini", base_url=emu.openai_base_url, api_key="k", progress=False
        )
        report = grow(tax, gen, 900, seed=1)
        assert emu.billed == report.calls
    assert report.leaves_before == 125 and report.leaves_after == 900 == len(tax.leaves())
    names = [t.name for t in tax.walk()]
    assert len({name_key(n) for n in names}) == len(names)  # no duplicate names, even up to case/plural
    assert before <= {t.id for t in tax.walk()}  # the roots keep their ids
    assert sum(1 for t in tax.leaves() if t.meta.get("grown")) >= 900 - 125


def test_grow_asks_for_structured_output_and_parses_it():
    """Each grow request carries the subtopics JSON schema; the emulator answers with an instance of it."""
    from textbookgen.engine import Generator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    tax = Taxonomy(name="t")
    for name in ("Chemistry", "Music", "Astronomy"):
        tax.add(name)
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True)) as emu:
        gen = Generator(
            provider="openai", model="gpt-4o-mini", base_url=emu.openai_base_url, api_key="k", progress=False
        )
        report = grow(tax, gen, 15, seed=3, per_call=5)
        bodies = [r["body"] for r in emu.requests]
    assert report.leaves_after == 15 and report.failed_calls == 0
    assert bodies and all(b["response_format"]["type"] == "json_schema" for b in bodies)
    schema = bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["subtopics"] and schema["properties"]["subtopics"]["maxItems"] == 5


def test_grow_without_structured_output_sends_no_schema():
    from textbookgen.engine import Generator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    tax = Taxonomy(name="t")
    tax.add("Chemistry")
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True)) as emu:
        gen = Generator(
            provider="openai", model="gpt-4o-mini", base_url=emu.openai_base_url, api_key="k", progress=False
        )
        grow(tax, gen, 4, seed=3, per_call=4, structured=False)
        assert emu.requests and all("response_format" not in r["body"] for r in emu.requests)


def test_grow_drops_duplicates_from_a_repetitive_model():
    """A model that repeats itself (case, plural, punctuation variants) cannot inflate the tree."""
    from textbookgen.engine import Generator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    prompts = []

    def responder(body):
        prompts.append(body["messages"][-1]["content"])
        topic = body["messages"][-1]["content"].split('"')[1]
        return "\n".join(
            f"- {v}"
            for v in (
                f"{topic} basics",
                f"{topic} Basics!",
                f"The {topic} basic",
                f"History of {topic}",
                f"history of {topic}.",
            )
        )

    tax = Taxonomy(name="t")
    tax.add("Chemistry")
    tax.add("Music")
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=responder)) as emu:
        gen = Generator(
            provider="openai", model="m", base_url=emu.openai_base_url, api_key="k", progress=False
        )
        report = grow(tax, gen, 50, seed=1, max_rounds=3)
    assert [c.name for c in tax.topics[0].children] == ["Chemistry basics", "History of Chemistry"]
    # each request names the topic's siblings, so the model keeps to the topic's own ground
    first = next(p for p in prompts if '"Chemistry"' in p)
    assert "It sits beside these topics, which are covered elsewhere: Music." in first
    assert report.duplicates_dropped >= 6
    assert report.leaves_after == len(tax.leaves()) < 50


def _grow_scripted(answer, roots, target, **kw):
    """grow() against the emulator with a scripted answer(topic, attempt) -> text; returns the
    taxonomy, the report and the emulator (for what it billed)."""
    from textbookgen.engine import Generator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    def responder(body):
        return answer(body["messages"][-1]["content"].split('"')[1], body["seed"] % 1_000_003)

    tax = Taxonomy(name="t")
    for r in roots:
        tax.add(r)
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=responder)) as emu:
        gen = Generator(
            provider="openai", model="m", base_url=emu.openai_base_url, api_key="k", progress=False
        )
        report = grow(tax, gen, target, **kw)
    return tax, report, emu


def test_name_key_keeps_every_script_and_language_symbols():
    names = ["Физика", "Оптика", "量子力学", "Θερμοδυναμική", "C", "C++", "C#", "F#", "Node.js"]
    keys = [name_key(n) for n in names]
    assert all(keys) and len(set(keys)) == len(names)
    assert name_key("ФИЗИКА") == name_key("Физика") and name_key("Café") == name_key("cafe")
    assert name_key("C++.") == name_key("c++") and name_key("!!! ???") == ""
    answers = {"Физика": ["Механика", "Оптика", "Термодинамика"], "Languages": ["C", "C++", "C#"]}
    tax, report, _ = _grow_scripted(
        lambda topic, _: json.dumps({"subtopics": answers[topic]}), list(answers), 6, per_call=3, max_rounds=1
    )
    assert {t.name: [c.name for c in t.children] for t in tax.topics} == answers
    assert report.duplicates_dropped == 0


@pytest.mark.parametrize(
    "text, truncated, expected",
    [
        ('{"subtopics": ["Acid-base chemistry", "Redox", "Electroch', True, ["Acid-base chemistry", "Redox"]),
        ('{\n  "subtopics": [\n    "Acids",\n    "Bases",\n    "Sal', True, ["Acids", "Bases"]),
        ('[{"name": "Optics"}, {"name": "Wav', True, ["Optics"]),
        ("1. Optics\n2. Waves\n3. Sou", True, ["Optics", "Waves"]),
        ("I'm sorry, but I can't help with that.", False, []),
        ("Sure, here are some subtopics.\nAcids and bases\nRedox reactions\nI hope this helps!", False,
         ["Acids and bases", "Redox reactions"]),
        ("Here are some subtopics of Chemistry:\n\nAcids and bases are important. Redox too.", False, []),
        ("Subtopics: Acids, Bases, and Salts.", False, ["Acids", "Bases", "Salts"]),
    ],
)
def test_parse_list_drops_cut_off_items_and_chatter(text, truncated, expected):
    assert parse_list(text, truncated=truncated) == expected


def test_grow_takes_only_finished_names_from_a_cut_off_answer():
    def answer(topic, _):
        names = [f"{topic} foundations", f"{topic} applications", f"{topic} history and growth of the field"]
        return json.dumps({"subtopics": names}, indent=2)

    tax, _, _ = _grow_scripted(answer, ["Chemistry", "Music"], 6, max_tokens=30, max_rounds=2)
    grown = [c.name for t in tax.topics for c in t.children]
    assert grown and all(n.split()[0] in ("Chemistry", "Music") and '"' not in n for n in grown)


def test_grow_report_counts_every_billed_answer():
    """Answers not needed once the target is reached mid-round were still paid for."""

    def answer(topic, _):
        parts = ("alpha", "beta", "gamma", "delta", "epsilon")
        return json.dumps({"subtopics": [f"{topic} part {w}" for w in parts]})

    roots = [f"Subject {c}" for c in "ABCDEFGHIJ"]
    _, report, emu = _grow_scripted(answer, roots, 20, per_call=3, structured=False)
    assert report.leaves_after == 20 and report.calls == emu.billed
    assert (report.input_tokens, report.output_tokens) == (emu.input_tokens, emu.output_tokens)


def test_grow_stops_after_the_round_the_budget_stopped(tmp_path):
    """Once the budget keeps a round's requests back, later rounds would only be skipped too (each one an
    engine run and a budget line): grow returns what it grew, answers of that round included."""
    from textbookgen.build import BudgetedGenerator
    from textbookgen.engine import Generator
    from textbookgen.recipe import BudgetConfig
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    journal = tmp_path / "grow.sqlite"
    runs: list[list[str]] = []  # the statuses of each engine run

    class Counting(BudgetedGenerator):
        def run(self, requests):
            responses = super().run(requests)
            runs.append([r.status for r in responses])
            return responses

    tax = Taxonomy(name="t")
    for name in ("Chemistry", "Music", "Astronomy"):
        tax.add(name)
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen = Generator(provider="openai", model="gpt-4o-mini", base_url=emu.openai_base_url, api_key="k",
                        progress=False, journal=journal, max_output_tokens=2000)
        budgeted = Counting(gen, BudgetConfig(max_output_tokens=2000), {"grow": journal})
        report = grow(tax, budgeted, 500, seed=1, per_call=4, max_tokens=200)
    stopped = [i for i, statuses in enumerate(runs) if "skipped_budget" in statuses]
    assert len(runs) > 1 and stopped == [len(runs) - 1], runs  # not one run after the budget stopped one
    assert report.rounds == len(runs) and budgeted.skipped > 0
    assert len(tax.leaves()) == report.leaves_after < 500
    assert sum(s in ("ok", "truncated") for r in runs for s in r) == emu.billed == report.calls - budgeted.skipped


def test_grow_refuses_fewer_than_two_subtopics_per_call():
    with pytest.raises(ValueError, match="per_call must be >= 2 \\(a single subtopic is not a split\\), got 1"):
        grow(Taxonomy(name="t"), None, 10, per_call=1)


def test_grow_does_not_burn_names_it_did_not_attach():
    """A name offered alone (no split) is still free when a later answer offers it with another."""
    offers = {1: ["Chemistry", "Reaction rates"], 2: ["Reaction rates", "Chemical equilibrium"]}
    tax, _, _ = _grow_scripted(
        lambda _, attempt: json.dumps({"subtopics": offers.get(attempt, [])}), ["Chemistry"], 3, per_call=3
    )
    assert [c.name for c in tax.topics[0].children] == ["Reaction rates", "Chemical equilibrium"]


def test_topics_commands(shared_data, tmp_path):
    from typer.testing import CliRunner

    from textbookgen.cli import app
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    runner = CliRunner()
    outline = shared_data / "topics_wikipedia_outline_academic_disciplines" / "academic-disciplines.md"
    res = runner.invoke(app, ["topics", "stats", str(outline)])
    assert res.exit_code == 0 and "2,557 topics, 2,198 leaves, depth 7" in res.output
    res = runner.invoke(app, ["topics", "convert", str(outline), str(tmp_path / "o.csv")])
    assert res.exit_code == 0 and len(Taxonomy.load(tmp_path / "o.csv").leaves()) == 2198
    res = runner.invoke(app, ["topics", "stats", str(tmp_path / "missing.md")])
    assert res.exit_code == 1 and "not found" in res.output
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        res = runner.invoke(
            app,
            [
                "topics",
                "grow",
                str(TOPICS / "stories.yaml"),
                str(tmp_path / "g.yaml"),
                "--target",
                "100",
                "--base-url",
                emu.openai_base_url,
                "--journal",
                str(tmp_path / "grow.sqlite"),
            ],
        )
    assert res.exit_code == 0, res.output
    assert len(Taxonomy.load(tmp_path / "g.yaml").leaves()) == 100


@pytest.mark.parametrize(
    "text, bad",
    [
        ("b: 2\na: -1\n", ":2: topic 'a': weight must be a finite number >= 0, not -1.0"),
        ("a: .nan\nb: 2\n", ":1: topic 'a': weight must be a finite number >= 0, not nan"),
        ("a: .inf\nb: 2\n", ":1: topic 'a': weight must be a finite number >= 0, not inf"),
        ("a: 0\nb: 0\n", ": taxonomy 'w': every topic has weight 0: give one a weight above 0"),
        ("T: 1\nS:\n  x: 0\n  y: 0\n", ":2: topic 'S': every topic below it has weight 0"),
    ],
)
def test_weights_that_are_not_shares_are_one_line_errors_naming_the_topic(tmp_path, text, bad):
    """Negative weights were clamped to 0 and NaN or all-zero siblings silently made uniform (inf gave NaN
    probabilities); each is now an error naming the file and the topic, at load and at sampling."""
    yml = tmp_path / "w.yaml"
    yml.write_text(text)
    with pytest.raises(TaxonomyError, match=rf"^{yml}{bad}"):
        Taxonomy.load(yml)
    table = tmp_path / "w.csv"
    table.write_text("path,weight\nS > a,-2\nS > b,1\n")
    with pytest.raises(TaxonomyError, match=rf"^{table}: topic 'S > a': weight must be a finite number >= 0"):
        Taxonomy.load(table)
    tax = Taxonomy(name="built")
    tax.add("a", weight=float("nan"))
    tax.add("b")
    with pytest.raises(ValueError, match="topic 'a': weight must be a finite number"):
        tax.sample(4, seed=0)


def test_a_zero_weight_subject_may_hold_zero_weight_topics(tmp_path):
    yml = tmp_path / "z.yaml"
    yml.write_text("S:\n  weight: 0\n  x: 0\nT:\n  t1: 1\n  t2: 1\n")
    tax = Taxonomy.load(yml)
    assert Counter(t.name for t in tax.sample(4, seed=0)) == {"t1": 2, "t2": 2}


@pytest.mark.parametrize(
    "text, expected",
    [
        (  # a nested outline: the sub-bullets describe an item, they are not its siblings
            "1. **Acids and Bases**\n   - Definition of acids\n   - The pH scale\n2. **Redox**\n   - Oxidation",
            ["Acids and Bases", "Redox"],
        ),
        ("\t- Acids\n\t\t- strong acids\n\t- Bases", ["Acids", "Bases"]),
        ("## Subtopics\n\n### 1. Acids and Bases\nAcids donate protons.\n\n### 2. Redox\nTransfer.",
         ["Acids and Bases", "Redox"]),
        ("# Chemistry\n\n## Acids and Bases\nAcids donate protons.\n\n## Redox\nElectron transfer.",
         ["Acids and Bases", "Redox"]),
        ('{"subtopics": [{"subtopic": "Acids"}, {"subtopic_name": "Bases", "depth": 2}]}', ["Acids", "Bases"]),
        ("| # | Subtopic | Why |\n|---|---|---|\n| 1 | Acids | core |\n| 2 | Bases | core |", ["Acids", "Bases"]),
        ("**1. Acids**: proton donors in water solutions\n**2. Bases**", ["Acids", "Bases"]),
        ("- Topic 1: Acids and bases\n- Subtopic 2 - Redox", ["Acids and bases", "Redox"]),
    ],
)
def test_parse_list_reads_outlines_headings_tables_and_named_objects(text, expected):
    assert parse_list(text) == expected


def test_grow_takes_at_most_per_call_names_from_a_longer_answer():
    """Asked for 3 subtopics, a model listing 10 must not give a topic 10 children (breadth limit)."""
    words = ("history", "theory", "tools", "ethics", "careers", "methods", "practice", "debates", "myths", "future")
    tax, _, _ = _grow_scripted(
        lambda topic, _: "\n".join(f"- {w.title()} of {topic}" for w in words), ["Chemistry", "Music"], 40,
        per_call=3, max_rounds=1, structured=False,
    )
    assert [len(t.children) for t in tax.topics] == [3, 3]


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("path,weight\nA > B,1\n\nA > C,2,extra\n", 4, "3 fields, the header has 2"),
        ("path\nA > B\nArts > Music, dance and drama\n", 3, "2 fields, the header has 1"),
        ('path,weight\nA > B,1\n"A > C,2\nA > D,1\n', 3, "a quote is never closed"),
    ],
)
def test_a_csv_row_that_does_not_fit_the_header_is_an_error_naming_its_line(tmp_path, text, line, problem):
    """A stray comma used to crash with a traceback, and an unclosed quote swallowed the rows below it."""
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(TaxonomyError, match=rf"^{p}:{line}: {problem}"):
        Taxonomy.load(p)


def test_a_topic_node_with_a_misspelt_key_is_an_error_naming_topic_and_key(tmp_path):
    """{name: A, weigth: 2} used to load as two topics named 'name' and 'weigth'."""
    p = tmp_path / "t.yaml"
    p.write_text("topics:\n  - name: Algebra\n    weigth: 2\n  - name: Geometry\n")
    with pytest.raises(TaxonomyError, match=rf"^{p}:2: topic 'Algebra': unknown key 'weigth' \(a topic takes name, "):
        Taxonomy.load(p)
    p.write_text("- name: Algebra\n  description: equations\n  subtopics: [Linear, Quadratic]\n- name: Geometry\n")
    tax = Taxonomy.load(p)
    assert [t.path_str for t in tax.leaves()] == ["Algebra > Linear", "Algebra > Quadratic", "Geometry"]
    assert tax.topics[0].meta == {"description": "equations"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1. Acids 2. Bases 3. Salts 4. Buffers", ["Acids", "Bases", "Salts", "Buffers"]),
        ("Subtopics: 1) Optics 2) Waves and sound 3) Heat", ["Optics", "Waves and sound", "Heat"]),
        ("1. Python 3. Basics", ["Python 3. Basics"]),  # not a run 1, 2, 3...: one name
    ],
)
def test_parse_list_splits_a_numbered_list_run_together_on_one_line(text, expected):
    """Small local models often answer '1. A 2. B 3. C' on one line: it used to be one topic named all of it."""
    assert parse_list(text) == expected


def test_grow_drops_an_introduction_to_a_topic_held_in_another_branch_but_not_under_its_own_parent():
    """'Intro to X', 'Introduction to X', 'X basics' and 'X: an overview' are X: a second branch holding one
    wrote the same textbook twice. Under X itself, 'Introduction to X' is X's first chapter."""
    answers = {
        "Physics": ["Thermodynamics", "Optics", "Intro to mechanics", "Introduction to mechanics"],
        "Chemistry": ["Introduction to thermodynamics", "Thermodynamics basics", "Optics: an overview",
                      "Acids", "Bases"],
        "Mechanics": ["Introduction to mechanics", "Statics", "Dynamics"],
    }
    tax, report, _ = _grow_scripted(
        lambda topic, _: json.dumps({"subtopics": answers[topic]}), ["Physics", "Chemistry"], 20, per_call=5,
        max_rounds=1,
    )
    grown = {t.name: [c.name for c in t.children] for t in tax.topics}
    assert grown == {"Physics": ["Thermodynamics", "Optics", "Intro to mechanics"], "Chemistry": ["Acids", "Bases"]}
    assert report.duplicates_dropped == 4
    mech, _, _ = _grow_scripted(lambda topic, _: json.dumps({"subtopics": answers[topic]}), ["Mechanics"], 3,
                                per_call=3, max_rounds=1)
    assert [c.name for c in mech.topics[0].children] == ["Introduction to mechanics", "Statics", "Dynamics"]


def test_a_save_that_fails_half_way_leaves_the_file_it_replaces_whole(tmp_path, monkeypatch):
    """A grown 20K-topic file takes seconds to write: a kill or a full disk then left half a YAML file."""
    dst = tmp_path / "grown.yaml"
    tax = Taxonomy(name="t")
    tax.add("Optics")
    tax.save(dst)
    before = dst.read_bytes()

    def half(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    tax.add("Mechanics")
    monkeypatch.setattr(Path, "write_bytes", half)
    with pytest.raises(OSError):
        tax.save(dst)
    assert dst.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["grown.yaml"]


def test_a_plain_text_topic_list_loads_one_topic_a_line_indent_nesting(tmp_path):
    """The commonest topic list is a .txt file, one topic a line; it was 'unknown taxonomy format'."""
    p = tmp_path / "topics.txt"
    p.write_text("Physics\n  Optics\n  Mechanics\n    Statics\n\nМатематика\n\t代数\nHistory\n")
    tax = Taxonomy.load(p)
    assert [t.path_str for t in tax.leaves()] == [
        "Physics > Optics", "Physics > Mechanics > Statics", "Математика > 代数", "History"
    ]
    out = tax.save(tmp_path / "again.txt")
    assert [t.id for t in Taxonomy.load(out).leaves()] == [t.id for t in tax.leaves()]


def test_a_name_that_starts_like_an_outline_letter_keeps_it(tmp_path):
    """'E. coli genetics' lost its 'E. ' as an outline letter; 'A. Algebra' and 'b) biology' are outline items."""
    p = tmp_path / "topics.txt"
    p.write_text("Microbiology\n  E. coli genetics\n  A. Algebra of cells\n  b) biofilms\n")
    assert [t.name for t in Taxonomy.load(p).leaves()] == ["E. coli genetics", "Algebra of cells", "biofilms"]

"""Language filter for web-sample seeds: the script check (no model) and a fastText language-ID model
(a tiny one trained here on generated lines: no real LID model is available offline)."""

from __future__ import annotations

import functools
import http.server
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from textbookgen.recipe import LanguageFilterConfig, RecipeError, load_recipe
from textbookgen.websamples import (
    FastTextLanguageFilter,
    ScriptFilter,
    WebSampleError,
    WebSamples,
    make_language_filter,
    script_share,
)

ENGLISH = [
    "The river was used for water by many people in the first years of the new town, and it still is.",
    "Café Müller is a dance piece by Pina Bausch, first performed in 1978 in Wuppertal, Germany.",
    "Dvořák wrote the symphony in New York; Søren Kierkegaard and José Martí are quoted in the notes.",
    "def area(r):\n    return math.pi * r ** 2  # the area of a circle of radius r, in square metres",
    "Let α, β ∈ ℝ with α < β. Then f(x) = x² + 𝑦 is continuous on [α, β], so it attains a maximum there.",
    "The mean μ and variance σ² of a sample are estimated by x̄ and s², which are unbiased estimators.",
]
RUSSIAN = "Дети играют в городе, и время идёт очень быстро. Москва является столицей России с 1918 года."
KOREAN = "우리는 중국에서 차가운 페인트 도로 표시 기계 제조 업체 및 공급 업체 / 공장 전문화되어 있습니다."
FRENCH = "La ville est très belle et les enfants jouent dans le parc avec leurs amis depuis le matin."


def _cfg(base_dir: Path, **kw: Any) -> LanguageFilterConfig:
    """The config as a recipe in `base_dir` would give it."""
    return LanguageFilterConfig.model_validate(kw, context={"base_dir": base_dir})


def _english() -> ScriptFilter:
    f = make_language_filter(LanguageFilterConfig(), "English", Path("."))
    assert isinstance(f, ScriptFilter)
    return f


# ---- script check -------------------------------------------------------------------------------
def test_script_check_keeps_english_with_accents_code_and_math_and_drops_other_scripts():
    f = _english()
    assert f.scripts == ("Latin",)
    for text in ENGLISH:
        assert f.keep(text), text
    assert not f.keep(RUSSIAN) and not f.keep(KOREAN)
    # an English page whose other half is a Russian link list
    assert not f.keep(ENGLISH[0] + "\n" + RUSSIAN)
    # a name quoted in its own script is fine
    assert f.keep(
        "Pyotr Ilyich Tchaikovsky (Russian: Пётр Чайковский) was a Russian composer of the "
        "Romantic period, whose works are among the most popular in the classical repertoire."
    )
    assert not f.keep("12345 67890 +-*/ ... !!!")  # no letters at all: not English either


def test_script_check_cannot_tell_languages_of_one_script_apart():
    """The documented limit: French passes as English (a language-ID model is needed for that)."""
    assert _english().keep(FRENCH)


def test_dense_scripts_count_double_so_japanese_with_english_terms_is_japanese():
    ja = make_language_filter(LanguageFilterConfig(), "Japanese", Path("."))
    assert isinstance(ja, ScriptFilter) and set(ja.scripts) == {"Han", "Kana"}
    text = "PythonでWebアプリを作る方法について説明します。"  # 9 Latin letters, 18 Japanese characters
    assert ja.keep(text)
    assert script_share(text, ["Han", "Kana"]) == pytest.approx(36 / 45)
    assert not ja.keep(ENGLISH[0])
    assert script_share("ＡＢＣ", ["Latin"]) == 1.0  # full-width letters are Latin after NFKC


@pytest.mark.parametrize(
    ("language", "scripts"),
    [("Russian", ("Cyrillic",)), ("ru", ("Cyrillic",)), ("pt-BR", ("Latin",)), ("eng", ("Latin",)),
     ("Korean", ("Hangul", "Han")), ("Greek", ("Greek",))],
)  # fmt: skip
def test_scripts_come_from_the_recipe_language(language, scripts):
    f = make_language_filter(LanguageFilterConfig(), language, Path("."))
    assert isinstance(f, ScriptFilter) and f.scripts == scripts


def test_a_language_of_no_known_script_asks_for_scripts_naming_the_field():
    with pytest.raises(
        WebSampleError, match=r"web_samples\.language_filter: no script known for language 'Klingon'"
    ):
        make_language_filter(LanguageFilterConfig(), "Klingon", Path("."))
    f = make_language_filter(LanguageFilterConfig(scripts=["Latin"]), "Klingon", Path("."))
    assert isinstance(f, ScriptFilter) and f.scripts == ("Latin",)
    assert make_language_filter(None, "Klingon", Path(".")) is None


def test_pool_counts_language_drops_and_an_emptied_pool_says_why():
    docs = [*ENGLISH[:3], RUSSIAN * 3, KOREAN * 3]
    ws = WebSamples.from_texts(docs, min_chars=50, language_filter=_english())
    assert len(ws) == 3 and ws.stats["language_dropped"] == 2 and ws.stats["dropped"] == 2
    assert "language_dropped" not in WebSamples.from_texts(docs, min_chars=50).stats
    with pytest.raises(WebSampleError, match=r"2 not in the language \(English: Latin letters >= 0\.7\)"):
        WebSamples.from_texts(
            [RUSSIAN * 3, KOREAN * 3], source="ru.txt", min_chars=50, language_filter=_english()
        )


def test_shared_web_files_lose_their_other_language_extracts_only(shared_data):
    wiki = WebSamples.load(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", language_filter=_english())
    assert wiki.stats["language_dropped"] == 1  # the stub followed by a Russian link list
    assert not any("Список" in e.text for e in wiki.extracts)
    assert sum("é" in e.text or "ö" in e.text for e in wiki.extracts) > 20  # accented names pass
    path = shared_data / "c4_prefix_completion_1480" / "c4.jsonl.gz"
    c4 = WebSamples.load(path, text_field="gold_completion", language_filter=_english())
    assert c4.stats["language_dropped"] == 3  # machine-translated Korean/English product pages
    assert not any("업체" in e.text for e in c4.extracts)
    assert any("παραπτωμασιν" in e.text for e in c4.extracts)  # English commentary quoting Greek stays


# ---- fastText language-ID model ---------------------------------------------------------------
_WORDS = {
    "en": "the of and to in is was for that with as on it by this are from be at or have which an not they "
    "their one has but more were can been all about also people time water first would new other some when "
    "world two into most what many only these years used may over such called then after made",
    "fr": "le la les des et est une dans pour que qui sur avec pas plus par sont ont mais comme nous vous leur "
    "cette aussi tout fait peut elle ils être entre deux sans sous bien très monde temps après avant toujours "
    "encore depuis pendant enfants ville année",
    "de": "der die das und ist nicht mit sich auf für von dem den ein eine auch als wird nach bei aus wie noch "
    "über nur oder wurde werden sind zum zur sein hat durch unter gegen zwischen immer schon sehr Jahr Stadt "
    "Welt Zeit Kinder",
    "ru": "и в не на что с по это как он она они для был была его её из от к за так но все уже мы вы год город "
    "мир время дети после перед между очень только может было были будет также",
}  # fmt: skip


def _train_lid(path: Path, label_of: dict[str, str]) -> Path:
    """A tiny language-ID model on 200 generated lines per language (character n-grams, as lid.176)."""
    import fasttext

    from textbookgen.curation.classifier import MIN_THREADS

    rng = random.Random(0)
    train = path.with_suffix(".txt")
    with open(train, "w", encoding="utf-8") as f:
        for _ in range(200):
            for lang, words in _WORDS.items():
                line = " ".join(rng.choice(words.split()) for _ in range(rng.randint(6, 16)))
                f.write(f"__label__{label_of[lang]} {line}\n")
    model = fasttext.train_supervised(
        input=str(train), epoch=20, lr=0.5, minn=2, maxn=4, dim=16, bucket=20_000, thread=MIN_THREADS,
        verbose=0, seed=0,
    )  # fmt: skip
    model.save_model(str(path))
    return path


@pytest.fixture(scope="module")
def lid176(tmp_path_factory) -> Path:
    """Labelled like lid.176.bin: `__label__en`."""
    return _train_lid(tmp_path_factory.mktemp("lid") / "lid.bin", {k: k for k in _WORDS})


@pytest.fixture(scope="module")
def glotlid(tmp_path_factory) -> Path:
    """Labelled like GlotLID / OpenLID: `__label__eng_Latn`."""
    names = {"en": "eng_Latn", "fr": "fra_Latn", "de": "deu_Latn", "ru": "rus_Cyrl"}
    return _train_lid(tmp_path_factory.mktemp("glotlid") / "model.bin", names)


def test_a_lid_model_drops_what_the_script_check_cannot(lid176, tmp_path):
    f = make_language_filter(_cfg(lid176.parent, model=lid176.name), "English", lid176.parent)
    assert isinstance(f, FastTextLanguageFilter) and f.labels == {"__label__en"}
    german = "Die Kinder spielen in der Stadt und die Zeit vergeht sehr schnell für alle."
    assert f.keep(ENGLISH[0])
    assert not f.keep(FRENCH) and not f.keep(german) and not f.keep(RUSSIAN)
    assert _english().keep(FRENCH) and _english().keep(german)
    ws = WebSamples.from_texts([ENGLISH[0], FRENCH, german], min_chars=50, language_filter=f)
    assert [e.text for e in ws.extracts] == [ENGLISH[0]] and ws.stats["language_dropped"] == 2
    fr = make_language_filter(LanguageFilterConfig(model=str(lid176)), "French", tmp_path)
    assert fr.keep(FRENCH) and not fr.keep(ENGLISH[0])


def test_glotlid_style_labels_are_found_from_the_language(glotlid):
    f = make_language_filter(LanguageFilterConfig(model=str(glotlid)), "en", Path("."))
    assert f.labels == {"__label__eng_Latn"}
    assert f.keep(ENGLISH[0]) and not f.keep(FRENCH)
    ru = make_language_filter(
        LanguageFilterConfig(model=str(glotlid), label="__label__rus_Cyrl"), "x", Path(".")
    )
    assert ru.labels == {"__label__rus_Cyrl"} and ru.keep(RUSSIAN)


def test_missing_labels_and_bad_models_are_errors_naming_the_field(lid176, tmp_path):
    with pytest.raises(
        WebSampleError, match=r"web_samples\.language_filter: .* no label for language 'Japanese'"
    ):
        make_language_filter(LanguageFilterConfig(model=str(lid176)), "Japanese", tmp_path)
    with pytest.raises(WebSampleError, match=r"web_samples\.language_filter\.label: .* no label 'eng_Latn'"):
        make_language_filter(LanguageFilterConfig(model=str(lid176), label="eng_Latn"), "English", tmp_path)
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    with pytest.raises(
        WebSampleError, match=r"web_samples\.language_filter\.model: junk\.bin: not a fastText model"
    ):
        make_language_filter(_cfg(tmp_path, model="junk.bin"), "English", tmp_path)
    with pytest.raises(
        WebSampleError, match=r"web_samples\.language_filter\.model: language-ID model not found"
    ):
        make_language_filter(LanguageFilterConfig.model_construct(model="gone.bin"), "English", tmp_path)


class _Stub:
    """A model whose answer is fixed, to pin the threshold rule."""

    def __init__(self, label: str, prob: float):
        self.answer = ((f"__label__{label}",), [prob])

    def predict(self, text: str, k: int = 1) -> Any:
        assert "\n" not in text  # fastText reads a newline as the end of the example
        return self.answer


@pytest.mark.parametrize(
    ("label", "prob", "kept"),
    [("en", 0.65, True), ("en", 0.64, False), ("fr", 0.99, False), ("en", 1.0, True)],
)
def test_the_top_label_must_be_the_language_with_at_least_min_score(label, prob, kept):
    f = FastTextLanguageFilter(_Stub(label, prob), frozenset({"__label__en"}), min_score=0.65)
    assert f.keep("two\nlines") is kept


def test_a_hub_model_repo_is_downloaded(lid176, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from textbookgen.testing.fakehub import FakeHub

    with FakeHub() as hub:
        hub.add_repo("team/tiny-lid", repo_type="model")
        hub.commit_files("team/tiny-lid", {"model.bin": lid176.read_bytes()}, repo_type="model")
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        f = make_language_filter(LanguageFilterConfig(model="hf:team/tiny-lid"), "English", tmp_path)
        assert f.keep(ENGLISH[0]) and not f.keep(FRENCH)
        with pytest.raises(
            WebSampleError, match=r"language_filter\.model: hf:team/nothing: could not download"
        ):
            make_language_filter(LanguageFilterConfig(model="hf:team/nothing"), "English", tmp_path)


def test_a_url_model_is_downloaded_once_into_the_cache(lid176, monkeypatch, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(lid176.parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        url = f"http://127.0.0.1:{server.server_port}/{lid176.name}"
        f = make_language_filter(LanguageFilterConfig(model=url), "English", tmp_path)
        assert f.keep(ENGLISH[0]) and not f.keep(FRENCH)
        cached = list((tmp_path / "textbookgen" / "lid").iterdir())
        assert [p.name.endswith("-lid.bin") for p in cached] == [True]
        with pytest.raises(
            WebSampleError, match=r"language_filter\.model: http://.*/missing\.bin: could not download"
        ):
            make_language_filter(
                LanguageFilterConfig(model=url.replace("lid.bin", "missing.bin")), "en", tmp_path
            )
        assert len(list((tmp_path / "textbookgen" / "lid").iterdir())) == 1  # no partial file left
    finally:
        server.shutdown()


# ---- recipe ---------------------------------------------------------------------------------------
RECIPE = """\
name: tiny
model: gpt-4o-mini
taxonomy:
  source: topics.yaml
web_samples:
  source: web.jsonl
{extra}mix:
  - template: textbook_section
samples: 10
"""


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "topics.yaml").write_text("topics: [Physics, Chemistry]\n")
    (tmp_path / "web.jsonl").write_text('{"text": "x"}\n')
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.format(extra=extra))
    return p


def test_recipe_filter_is_on_by_default_and_false_turns_it_off(tmp_path):
    assert load_recipe(_recipe(tmp_path)).web_samples.language_filter == LanguageFilterConfig()
    assert load_recipe(_recipe(tmp_path, "  language_filter: false\n")).web_samples.language_filter is None
    on = load_recipe(_recipe(tmp_path, "  language_filter: true\n")).web_samples.language_filter
    assert on == LanguageFilterConfig()
    cfg = load_recipe(_recipe(tmp_path, "  language_filter: {scripts: [Cyrillic], min_script_share: 0.9}\n"))
    assert cfg.web_samples.language_filter.scripts == ["Cyrillic"]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("  language_filter: {model: lid.176.bin}\n", r"r\.yaml:7: web_samples\.language_filter\.model: language-ID model not found"),
        ("  language_filter: {min_score: 1.5}\n", r"r\.yaml:7: web_samples\.language_filter\.min_score: "),
        ("  language_filter: {scripts: [Latn]}\n", r"web_samples\.language_filter\.scripts: unknown script\(s\) \['Latn'\]"),
        ("  language_filter: {threshold: 0.5}\n", r"web_samples\.language_filter\.threshold: unknown key"),
    ],
)  # fmt: skip
def test_recipe_filter_errors_name_the_field(tmp_path, extra, problem):
    with pytest.raises(RecipeError, match=problem):
        load_recipe(_recipe(tmp_path, extra))


def test_recipe_model_path_is_relative_to_the_recipe(lid176, tmp_path):
    (tmp_path / "lid.bin").write_bytes(lid176.read_bytes())
    r = load_recipe(_recipe(tmp_path, "  language_filter: {model: lid.bin, min_score: 0.8}\n"))
    f = make_language_filter(r.web_samples.language_filter, r.language, r.base_dir)
    assert isinstance(f, FastTextLanguageFilter) and f.min_score == 0.8 and f.keep(ENGLISH[0])


def test_build_drops_extracts_not_in_the_recipe_language(tmp_path):
    import json

    from textbookgen.build import open_web_samples

    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    docs = [
        "The river was used for water by many people in the first years of the new town, and still is.",
        "Дети играют в городе, и время идёт очень быстро. Москва является столицей России с 1918 года.",
    ]
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "r.yaml").write_text(
        "name: tiny\nmodel: gpt-4o-mini\ntaxonomy: {source: topics.yaml}\n"
        "web_samples: {source: web.jsonl, min_chars: 50}\nmix: [{template: textbook_section}]\nsamples: 10\n"
    )
    web = open_web_samples(load_recipe(tmp_path / "r.yaml"))
    assert len(web) == 1 and web.stats["language_dropped"] == 1
    off = open_web_samples(load_recipe(tmp_path / "r.yaml", {"web_samples.language_filter": False}))
    assert len(off) == 2 and "language_dropped" not in off.stats


def test_a_language_of_no_known_script_is_a_recipe_error(tmp_path):
    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    (tmp_path / "web.jsonl").write_text('{"text": "x"}\n')
    p = tmp_path / "r.yaml"
    p.write_text(
        "name: tiny\nmodel: gpt-4o-mini\nlanguage: Klingon\ntaxonomy: {source: topics.yaml}\n"
        "web_samples: {source: web.jsonl}\nmix: [{template: textbook_section}]\nsamples: 10\n"
    )
    with pytest.raises(RecipeError, match=r"web_samples\.language_filter: .*no script known for language 'Klingon'"):
        load_recipe(p)
    assert load_recipe(p, {"web_samples.language_filter": False}).language == "Klingon"


def test_a_language_model_replaced_in_place_changes_the_prompts_key(tmp_path):
    from textbookgen.build import Build

    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    (tmp_path / "web.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "lid.bin").write_bytes(b"model one")
    (tmp_path / "r.yaml").write_text(
        "name: tiny\nmodel: gpt-4o-mini\ntaxonomy: {source: topics.yaml}\n"
        "web_samples: {source: web.jsonl, language_filter: {model: lid.bin}}\n"
        "mix: [{template: textbook_section}]\nsamples: 10\n"
    )
    recipe = load_recipe(tmp_path / "r.yaml")
    before = Build(recipe, plan_only=True)._web_identity()
    (tmp_path / "lid.bin").write_bytes(b"model two")
    assert Build(recipe, plan_only=True)._web_identity() != before

"""Web samples in scripts written without spaces (Chinese, Japanese, Thai) and with other sentence
marks (danda, Urdu): they used to be dropped whole by the three-words-per-line rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textbookgen.recipe import LanguageFilterConfig, load_recipe
from textbookgen.websamples import WebSamples, clean_text, cut_at_sentence, make_extract, make_language_filter

BEIJING = "北京是中华人民共和国的首都，是全国的政治中心。"
ZH = [
    "光合作用是植物利用阳光、水和二氧化碳制造养分的过程。叶绿体中的叶绿素吸收光能，把水分解成氧气和氢。"
    "这些养分让植物生长，也为动物提供了食物。没有光合作用，地球上的大多数生命都无法生存。" * 3,
    "长城是中国古代的军事防御工程，全长两万多千米。秦始皇统一六国以后，把各国的城墙连接起来。"
    "明朝又大规模修建长城，今天看到的多是明长城。如今长城是世界上最有名的名胜古迹之一。" * 3,
    "火山是地下的岩浆喷出地面形成的山。岩浆冷却以后变成岩石，一层一层堆积起来。"
    "日本和印度尼西亚有很多活火山，火山爆发会带来严重的灾害，但火山灰也能让土地更加肥沃。" * 3,
]
JA = (
    "光合成は、植物が光のエネルギーを使って水と二酸化炭素から糖を作るしくみです。"
    "葉の細胞にある葉緑体がこの反応を行い、酸素を放出します。" * 6
)
ENGLISH = (
    "The river was used for water by many people in the first years of the new town, and it still is. " * 4
)


def test_a_chinese_document_becomes_an_extract():
    """The issue's repro: `make_extract` gave None and `clean_text` gave ""."""
    text = BEIJING * 20
    assert clean_text(text) != ""
    ex = make_extract(text)
    assert ex is not None and ex.text.endswith("。") and 200 <= len(ex.text) <= 1000
    ja = make_extract(JA)
    assert ja is not None and ja.text.endswith("。")


def test_cjk_boilerplate_and_menu_lines_are_still_dropped():
    page = "\n".join(
        [
            "首页 | 新闻 | 联系我们",
            "首页",
            "联系我们",
            "光合作用是植物利用阳光、水和二氧化碳制造养分的过程。",
            "植物的生长",  # a heading of about three words, as an English one is kept
            "版权所有 © 2023 北京科学网",
            "返回顶部",
            "上一篇：细胞的结构",
            "ホーム",
            "光合成は、植物が光のエネルギーを使って糖を作るしくみです。",
            "ประเทศไทยเป็นประเทศในเอเชียตะวันออกเฉียงใต้",  # Thai: no spaces, no sentence mark
        ]
    )
    assert clean_text(page).splitlines() == [
        "光合作用是植物利用阳光、水和二氧化碳制造养分的过程。",
        "植物的生长",
        "光合成は、植物が光のエネルギーを使って糖を作るしくみです。",
        "ประเทศไทยเป็นประเทศในเอเชียตะวันออกเฉียงใต้",
    ]


@pytest.mark.parametrize(
    "sentence",
    [
        "北京是中国的首都，也是一座历史悠久的城市。",
        "你今天去学校了吗？",  # ftfy turns ？ into ?, with no space after it
        "गंगा भारत की सबसे लंबी नदी है और करोड़ों लोग इसके किनारे रहते हैं। ",
        "کراچی پاکستان کا سب سے بڑا شہر ہے اور یہاں بہت لوگ رہتے ہیں۔ ",
    ],
)
def test_cuts_end_at_the_scripts_sentence_marks(sentence):
    text = clean_text(sentence * 60)
    cut = cut_at_sentence(text, 500)
    assert 250 <= len(cut) <= 500 and cut[-1] == text[-1] == sentence.strip()[-1].replace("？", "?")


def test_a_sentence_mark_before_a_closing_quote_at_the_edge_keeps_the_quote():
    """'。' at the window's edge followed by '」' is no cut point: the cut would leave the quote open."""
    first = "他说：「今天的天气很好，我们去公园散步吧。」" * 10
    text = first + "她回答：「好的。」然后他们出发了。"
    edge = text.index("好的。") + 3  # the window ends just after the inner '。'
    assert cut_at_sentence(text, edge) == first


def _write_recipe(tmp_path: Path, docs: list[str], language: str) -> Path:
    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    (tmp_path / "web.jsonl").write_text(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    )
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: tiny\nmodel: gpt-4o-mini\nlanguage: {language}\ntaxonomy: {{source: topics.yaml}}\n"
        "web_samples: {source: web.jsonl}\nmix: [{template: textbook_section}]\nsamples: 10\n"
    )
    return path


def test_a_chinese_recipe_gets_chinese_extracts(tmp_path):
    """Was: 'no extract survived cleaning' for any `language: Chinese` recipe."""
    from textbookgen.build import open_web_samples

    web = open_web_samples(load_recipe(_write_recipe(tmp_path, [*ZH, ENGLISH], "Chinese")))
    assert len(web) == 3 and web.stats["language_dropped"] == 1 and web.stats["dropped"] == 1


def test_an_english_build_counts_chinese_pages_as_language_drops(tmp_path):
    """Chinese pages vanished in `dropped` before the language filter saw them; now they reach it."""
    from textbookgen.build import open_web_samples

    web = open_web_samples(load_recipe(_write_recipe(tmp_path, [ENGLISH, *ZH, JA], "English")))
    assert len(web) == 1
    assert web.stats == {"documents": 5, "extracts": 1, "dropped": 4, "language_dropped": 4}


def test_a_chinese_pool_that_is_all_dropped_says_the_language_was_why():
    en = make_language_filter(LanguageFilterConfig(), "English", Path("."))
    with pytest.raises(ValueError, match=r"of 3 documents read .*; 3 not in the language \(English: Latin"):
        WebSamples.from_texts(ZH, language_filter=en)


def test_bm25_retrieval_finds_chinese_and_japanese_topics():
    """bm25s took each clause between punctuation as one token, so no topic ever matched."""
    ws = WebSamples.from_texts([*ZH, JA, ENGLISH])
    for query, needle in (
        ("光合作用", "光合作用"),
        ("长城的历史", "长城"),
        ("火山爆发", "火山"),
        ("光合成", "光合成は"),
    ):
        hits = ws.search(query, k=2)
        assert hits and needle in ws.extracts[hits[0][0]].text, query
    assert ws.extracts[ws.search("river water town", k=1)[0][0]].text.startswith("The river")

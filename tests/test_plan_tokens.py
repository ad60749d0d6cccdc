"""The plan's input tokens weigh characters by script: 4 characters a token (the engine's estimate) put a
Chinese, Japanese or Korean prompt at a quarter to a ninth of its tokens, so "at most" was no upper bound."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from test_websamples_cjk import JA, ZH

from textbookgen.build import render_prompts
from textbookgen.plan import input_token_estimates, make_plan
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[1]
KO = ("광합성은 식물이 햇빛, 물, 이산화탄소를 이용하여 양분을 만드는 과정입니다. 엽록체 안의 엽록소가 빛 에너지를 흡수하고, "
      "물을 분해하여 산소를 내보냅니다. 이렇게 만들어진 양분은 식물이 자라는 데 쓰이고 동물의 먹이가 됩니다. ")
RU = ("Фотосинтез — это процесс, при котором растения используют солнечный свет, воду и углекислый газ, чтобы "
      "производить питательные вещества. Хлорофилл в хлоропластах поглощает световую энергию. ")
HI = ("प्रकाश संश्लेषण वह प्रक्रिया है जिसमें पौधे सूर्य के प्रकाश, पानी और कार्बन डाइऑक्साइड का उपयोग करके भोजन बनाते हैं। "
      "क्लोरोफिल प्रकाश ऊर्जा को अवशोषित करता है। ")
TH = ("การสังเคราะห์ด้วยแสงเป็นกระบวนการที่พืชใช้แสงแดด น้ำ และคาร์บอนไดออกไซด์ในการสร้างอาหาร "
      "คลอโรฟิลล์ในคลอโรพลาสต์ดูดซับพลังงานแสง ")
HE = "פוטוסינתזה היא התהליך שבו צמחים משתמשים באור השמש, במים ובפחמן דו חמצני כדי לייצר מזון. "
EL = ("Η φωτοσύνθεση είναι η διαδικασία με την οποία τα φυτά χρησιμοποιούν το φως του ήλιου, το νερό και το "
      "διοξείδιο του άνθρακα για να παράγουν θρεπτικές ουσίες. ")
SAMPLES = {"zh": "".join(ZH), "ja": JA, "ko": KO * 3, "ru": RU * 3, "hi": HI * 3, "th": TH * 3, "he": HE * 4,
           "el": EL * 3}


def _gpt2(shared_data: Path):
    """GPT-2's byte-level BPE from the shared files: the stand-in tokenizer (no provider's is available offline)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel

    d = shared_data / "tokenizer_gpt2"
    tok = Tokenizer(BPE.from_file(str(d / "encoder.json"), str(d / "vocab.bpe")))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    return tok


def test_a_chinese_prompt_costs_about_a_token_a_character_not_a_quarter():
    text = "".join(ZH)
    [expected], [most] = (s.to_list() for s in input_token_estimates(pl.Series([text])))
    assert len(text) <= expected < most
    [english], [english_most] = (s.to_list() for s in input_token_estimates(pl.Series(["word " * 100])))
    assert english == 125 + 7 and english < english_most < 1.25 * english  # 4 characters a token, as before


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_at_most_bounds_gpt2_bpe_on_each_script(shared_data, lang):
    """GPT-2's 50K-entry English vocabulary splits other scripts into more pieces than the providers' tokenizers:
    the most a prompt of that script can cost, short of one token a UTF-8 byte."""
    text = SAMPLES[lang]
    tokens = len(_gpt2(shared_data).encode(text).ids)
    expected, most = (int(s[0]) for s in input_token_estimates(pl.Series([text]), messages=0))
    assert most >= tokens > 1.5 * len(text) // 4 + 3  # 4 characters a token was no bound
    assert tokens / 2.5 < expected < most


def test_the_plan_bounds_the_input_of_prompts_seeded_with_chinese_extracts(shared_data, tmp_path):
    """A Chinese build's prompts: the English template, Chinese topic names and a Chinese web extract each."""
    seeds = tmp_path / "zh.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"zh-{i}", "text": t[i:]}, ensure_ascii=False) + "\n"
                             for i, t in enumerate(ZH * 4)), encoding="utf-8")
    topics = tmp_path / "zh.yaml"
    topics.write_text("科学:\n  - 光合作用\n  - 火山\n  - 长城的历史\n数学:\n  - 分数\n  - 几何\n", encoding="utf-8")
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", {
        "samples": 24, "language": "Chinese", "taxonomy.source": str(topics), "taxonomy.max_per_topic": None,
        "web_samples.source": str(seeds), "web_samples.share": 1.0, "web_samples.language_filter": False})
    from textbookgen.build import open_web_samples

    prompts = render_prompts(r, Taxonomy.load(r.taxonomy_path()), open_web_samples(r))
    assert prompts["seed_extract_id"].is_not_null().all()
    plan = make_plan(prompts, r, n_leaves=5, expected_tokens={})
    gpt2 = sum(len(e.ids) + 7 for e in _gpt2(shared_data).encode_batch(prompts["prompt"].to_list()))
    # the engine's own estimate (budget and TPM holds until real usage corrects it) is near the plan's expected one
    assert 0.7 * plan.input_tokens <= prompts["input_tokens_est"].sum() <= 1.3 * plan.input_tokens
    assert plan.input_tokens < gpt2 <= plan.input_tokens_max
    worst = (plan.input_tokens_max * 0.15 + plan.output_tokens_max * 0.6) / 1e6  # gpt-4o-mini's list price
    assert plan.estimates[0].cost_usd_max == pytest.approx(worst)


def test_extracts_the_plan_could_not_read_are_weighed_in_the_recipes_language(tmp_path):
    """A web source the plan cannot reach leaves its prompts without extracts; the plan adds them back. It
    counted them as English: a Chinese build's extracts cost about four times that."""
    from textbookgen.build import _unread_extract_tokens, open_web_samples

    seeds = tmp_path / "zh.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"zh-{i}", "text": t[i:]}, ensure_ascii=False) + "\n"
                             for i, t in enumerate(ZH * 4)), encoding="utf-8")
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", {
        "samples": 24, "language": "Chinese", "web_samples.source": str(seeds), "web_samples.share": 1.0,
        "web_samples.extract_chars": 200, "web_samples.language_filter": False})
    tax = Taxonomy.load(r.taxonomy_path())
    seeded, unseeded = render_prompts(r, tax, open_web_samples(r)), render_prompts(r, tax, None)
    assert seeded["seed_extract_id"].is_not_null().all() and unseeded["seed_extract_id"].is_null().all()
    added = (make_plan(seeded, r, n_leaves=5, expected_tokens={}).input_tokens
             - make_plan(unseeded, r, n_leaves=5, expected_tokens={}).input_tokens)
    expected, most = _unread_extract_tokens(unseeded.height, 200, "Chinese")
    assert 0.7 * added <= expected <= 1.4 * added < most
    assert _unread_extract_tokens(unseeded.height, 200, "English")[0] < 0.5 * added  # the old estimate

def _unread_extract_note(tmp_path: Path, language: str, language_filter) -> int:
    """The tokens the plan adds for the extracts of a web source it cannot reach."""
    from rich.console import Console

    from textbookgen.build import build
    from textbookgen.recipe import load_recipe

    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", {
        "output": str(tmp_path / language), "samples": 20, "language": language,
        "web_samples.source": "http://127.0.0.1:9/web.jsonl", "web_samples.share": 1.0,
        "web_samples.language_filter": language_filter})
    notes = build(r, plan_only=True, progress=False, console=Console(file=io.StringIO())).manifest["notes"]
    note = next(n for n in notes if "web extracts this plan could not load" in n)
    return int(note.split("~")[1].split()[0].replace(",", ""))


def test_unread_extracts_of_a_language_given_by_its_scripts_are_weighed_in_those_scripts(tmp_path):
    """A language the tables do not know by name ("Tamil") needs `language_filter.scripts`, as the recipe check
    says; the plan ignored them and counted the extracts as English: 5,050 tokens where "ta" gives 17,800."""
    by_code = _unread_extract_note(tmp_path, "ta", False)
    by_scripts = _unread_extract_note(tmp_path, "Tamil", {"scripts": ["Tamil"]})
    assert by_scripts == pytest.approx(by_code, rel=0.05)


def test_a_language_of_no_known_script_is_bounded_by_the_costliest_script():
    """'At most' must bound the cost: a language the tables do not know could be written in any script."""
    from textbookgen.plan import SCRIPTS, language_rates

    assert language_rates("Klingon") == (SCRIPTS[0][2], max(most for *_, most in SCRIPTS))
    assert language_rates("English") == SCRIPTS[0][2:] and language_rates("Tamil", ["Tamil"])[0] == 1.0

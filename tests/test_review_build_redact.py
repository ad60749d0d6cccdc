"""What a build publishes of its recipe is the recipe: redaction takes secrets (key-shaped strings, a URL's
query credentials) and leaves prose alone, or the published recipe.yaml would not rebuild the same prompts."""

from __future__ import annotations

from textbookgen.card import redact


def test_prose_that_reads_like_a_credential_is_published_as_written():
    recipe = {
        "description": "Tales of the standard bearer of the regiment",
        "system": "Separate the sections with a line of ******** and no headings.",
        "styles": {"hands_on": "worked sk-learn examples, step by step"},
    }
    assert redact(recipe) == recipe


def test_a_url_in_prose_loses_its_query_credentials_and_keeps_the_rest():
    text = "see https://bucket.example/x.jsonl?X-Amz-Signature=c0ffee0123456789 for the bearer of news"
    out = redact({"description": text})["description"]
    assert "c0ffee0123456789" not in out
    assert out.startswith("see https://bucket.example/x.jsonl?X-Amz-Signature=") and out.endswith("bearer of news")


def test_key_shaped_strings_are_still_redacted():
    out = redact({"note": "token hf_abcdefghijklmnopqrstuvwxyz1234 and sk-abcdefghijklmnop1234"})["note"]
    assert "hf_abcdef" not in out and "sk-abcdefghijklmnop1234" not in out

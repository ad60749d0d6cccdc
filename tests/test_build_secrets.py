"""A credential in a recipe's URL (a presigned web-samples URL's signature) reaches no file a build writes,
published or not, and no error it raises."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from textbookgen.build import BuildError, build
from textbookgen.card import redact
from textbookgen.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
SIGNATURE = "c0ffee0123456789deadbeef0123456789abcdef"
SIGNED_QUERY = f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SIGNATURE}"


@pytest.fixture()
def web_server() -> Iterator[str]:
    """The recipe's seed extracts over http (the query string is ignored, as a bucket checks and drops it)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(QUICKSTART.parent / "data"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_redact_removes_a_url_signature_and_keeps_the_url():
    url = f"https://bucket.s3.amazonaws.com/web/extracts.jsonl{SIGNED_QUERY}"
    out = redact({"web_samples": {"source": url}})["web_samples"]["source"]
    assert SIGNATURE not in out and out.startswith("https://bucket.s3.amazonaws.com/web/extracts.jsonl?")


def test_a_signed_web_samples_url_is_in_no_file_of_the_build(tmp_path, web_server):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    source = f"{web_server}/seed_extracts.jsonl{SIGNED_QUERY}"
    out = tmp_path / "qs"
    with Emulator(EmulatorConfig(latency_median_s=0.002)) as emu:
        over = {"output": str(out), "samples": 12, "provider.base_url": emu.openai_base_url,
                "web_samples.source": source, "curation.filters.enabled": False}  # fmt: skip
        build(load_recipe(QUICKSTART, over), progress=False)
    holding = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and SIGNATURE.encode() in p.read_bytes()]
    assert holding == []
    assert f"{web_server}/seed_extracts.jsonl?" in (out / "dataset" / "recipe.yaml").read_text()  # still says where


def test_an_unreadable_signed_web_samples_url_is_an_error_and_a_plan_note_without_its_signature(
    tmp_path, web_server, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    over = {"output": str(tmp_path / "qs"), "samples": 12, "provider.base_url": "http://127.0.0.1:9/v1",
            "web_samples.source": f"{web_server}/gone.jsonl{SIGNED_QUERY}"}  # fmt: skip
    with pytest.raises(BuildError) as err:
        build(load_recipe(QUICKSTART, over), progress=False)
    assert "gone.jsonl" in str(err.value) and "404" in str(err.value) and SIGNATURE not in str(err.value)
    plan = build(load_recipe(QUICKSTART, over), plan_only=True, progress=False)
    said = (tmp_path / "qs" / "plan.json").read_text()
    assert plan.planned and "gone.jsonl" in said and SIGNATURE not in said

"""`textbookgen journal --cancel-batches` for the batches of a build that ran against a server of your own with no
key: the build hands such a server a placeholder key (recipe.ProviderConfig.api_key), and so does the cancel."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.engine import ChatRequest, Generator
from textbookgen.journal import Journal
from textbookgen.recipe import ProviderConfig
from textbookgen.testing.emulator import Emulator, EmulatorConfig


async def _interrupt_once_submitted(gen: Generator, requests: list[ChatRequest]) -> None:
    """Ctrl-C the run once the journal records its batch as running at the provider."""
    task = asyncio.ensure_future(gen.arun(requests))
    while True:
        await asyncio.sleep(0.01)
        if gen.journal_path.exists():
            with Journal(gen.journal_path, read_only=True) as j:
                if j.summary()["batches"].get("running"):
                    break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("name_the_server", [True, False])
def test_cancel_batches_of_a_keyless_build_at_a_local_server(name_the_server, tmp_path, monkeypatch):
    """It said "no API key for openai" though the build that submitted them ran without one."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Emulator(EmulatorConfig(batch_latency_s=30.0)) as emu:
        key = ProviderConfig(name="openai", base_url=emu.openai_base_url).api_key()  # what the build used
        gen = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key=key, batch=True,
                        batch_poll_s=0.05, progress=False, journal=tmp_path / "journal.sqlite")
        requests = [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=64)
                    for i in range(5)]
        asyncio.run(_interrupt_once_submitted(gen, requests))
        server = ["--base-url", emu.openai_base_url] if name_the_server else []  # else the one the journal recorded
        res = CliRunner().invoke(app, ["journal", str(gen.journal_path), "--cancel-batches", *server])
        assert emu.billed == 0
    assert res.exit_code == 0, res.output
    assert "batches: 1 cancelled, 0 never created; requests: 0 answered, 0 failed, 5 pending" in res.output

"""Several replicas of one model behind one `base_url` list: spread, failover, rejoin, replay, refusals."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from textbookgen import engine
from textbookgen.engine import ChatRequest, Generator
from textbookgen.errors import FatalProviderError
from textbookgen.providers import ReplicaProvider, make_provider, replica_urls
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

FAST = EmulatorConfig(latency_median_s=0.002, latency_sigma=0.0)
ANSWERED = ("ok", "truncated")  # max_tokens 16 cuts some


def reqs(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=16) for i in range(n)]


def closed_port_url() -> str:
    """A URL nothing listens at (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def generator(urls: list[str], **kw) -> Generator:
    kw = {"progress": False, "concurrency": 8, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, **kw}
    return Generator("openai-compatible", "m", base_url=urls, **kw)


@pytest.fixture
def providers(monkeypatch) -> list:
    """Every provider the engine makes, to read its per-replica answers."""
    made: list = []

    def recording(*args, **kw):
        made.append(make_provider(*args, **kw))
        return made[-1]

    monkeypatch.setattr(engine, "make_provider", recording)
    return made


def test_requests_spread_over_three_replicas(providers):
    with Emulator(FAST) as a, Emulator(FAST) as b, Emulator(FAST) as c:
        urls = [a.openai_base_url, b.openai_base_url, c.openai_base_url]
        out = generator(urls).run(reqs(60))
        assert all(r.status in ANSWERED for r in out)
        assert [e.billed for e in (a, b, c)] == list(providers[0].answers.values())
        assert sum(e.billed for e in (a, b, c)) == 60 and min(e.billed for e in (a, b, c)) >= 5


def test_a_replica_stopped_mid_run_fails_no_request(providers, caplog):
    with Emulator(FAST) as a, Emulator(FAST) as b:
        sent_to_c = 0

        def die_after_five(body: dict) -> str:  # runs on c's own loop, inside its handler
            nonlocal sent_to_c
            sent_to_c += 1
            if sent_to_c == 5:
                asyncio.get_running_loop().create_task(c.stop())
            return "An answer."

        with Emulator(EmulatorConfig(latency_median_s=0.002, latency_sigma=0.0, responder=die_after_five)) as c:
            urls = [a.openai_base_url, b.openai_base_url, c.openai_base_url]
            with caplog.at_level(logging.WARNING, "textbookgen"):
                out = generator(urls).run(reqs(80))
    assert all(r.status in ANSWERED for r in out) and len(out) == 80
    answers = providers[0].answers
    assert answers[urls[2]] <= sent_to_c < 15 and answers[urls[0]] + answers[urls[1]] == 80 - answers[urls[2]]
    assert "answers again" not in caplog.text  # the answers of requests sent before it stopped are no rejoin
    assert f"replica {urls[2]} set aside for 30 s" in caplog.text
    assert f"{urls[2]} {answers[urls[2]]} (set aside 1x)" in caplog.text  # the end-of-run line names the sick node


def test_a_replica_down_from_the_start_costs_no_retry():
    """Its refusals go straight to the other replica, so they count neither as retries nor toward the stop."""
    with Emulator(EmulatorConfig(latency_median_s=0.05, latency_sigma=0.0)) as a:
        gen = generator([closed_port_url(), a.openai_base_url], max_attempts=2)
        out = gen.run(reqs(20))
    assert all(r.status in ANSWERED for r in out) and gen.stats["retries"] == 0 and a.billed == 20


def test_a_rerun_with_other_replicas_replays_the_journal_for_free(tmp_path):
    journal = tmp_path / "j.sqlite"
    with Emulator(FAST) as a, Emulator(FAST) as b, Emulator(FAST) as c:
        first = generator([a.openai_base_url, b.openai_base_url, c.openai_base_url], journal=journal).run(reqs(30))
    with Emulator(FAST) as d, Emulator(FAST) as e:
        again = generator([d.openai_base_url, e.openai_base_url], journal=journal).run(reqs(30))
        assert d.billed == e.billed == d.received == e.received == 0
    assert [r.text for r in again] == [r.text for r in first]


def test_a_slow_replica_gets_fewer_requests():
    slow_cfg = EmulatorConfig(latency_median_s=0.3, latency_sigma=0.0)
    with Emulator(FAST) as a, Emulator(FAST) as b, Emulator(slow_cfg) as slow:
        out = generator([a.openai_base_url, slow.openai_base_url, b.openai_base_url]).run(reqs(90))
        assert all(r.status in ANSWERED for r in out)
        assert slow.billed * 3 < min(a.billed, b.billed)  # round robin would give each 30


def test_a_replica_back_from_its_cooldown_rejoins(caplog):
    now = [0.0]
    down = closed_port_url()
    port = int(down.rsplit(":", 1)[1].split("/")[0])

    async def run(provider: ReplicaProvider, a: Emulator) -> int:
        async def ask(n: int) -> None:
            for req in reqs(n):
                await provider.complete(req)

        try:
            await ask(3)
            now[0] = 31.0  # back from its cooldown, still down: set aside again, for twice as long
            await ask(2)
            assert provider.answers == {down: 0, a.openai_base_url: 5}
            with Emulator(FAST, port=port) as back:
                now[0] = 92.0
                await ask(6)
                return back.billed
        finally:
            await provider.aclose()

    with Emulator(FAST) as a, caplog.at_level(logging.WARNING, "textbookgen"):
        provider = ReplicaProvider("openai-compatible", "m", "EMPTY", [down, a.openai_base_url], 30.0,
                                   clock=lambda: now[0])
        billed_back = asyncio.run(run(provider, a))
    assert "set aside for 30 s" in caplog.text and "set aside for 60 s" in caplog.text
    assert billed_back >= 2 and provider.answers[down] == billed_back
    assert f"replica {down} answers again" in caplog.text


def test_a_replica_whose_proxy_says_it_is_down_is_set_aside(providers, caplog):
    """A 502 or 503 (the proxy in front of a dead server, a server starting up) is retried on another replica."""
    with Emulator(FAST) as a, Emulator(EmulatorConfig(faults=[Fault("503", rate=1.0)])) as down:
        with caplog.at_level(logging.WARNING, "textbookgen"):
            out = generator([down.openai_base_url, a.openai_base_url]).run(reqs(30))
    assert all(r.status in ANSWERED for r in out) and a.billed == 30
    assert down.received <= 8 and f"replica {down.openai_base_url} set aside for 30 s" in caplog.text


def test_an_api_key_never_reaches_the_log(caplog):
    with Emulator(FAST) as a, caplog.at_level(logging.DEBUG):
        generator([closed_port_url(), a.openai_base_url], api_key="sk-very-secret-key-1234").run(reqs(5))
    assert "set aside" in caplog.text and "very-secret" not in caplog.text


@pytest.mark.parametrize("provider, base_url, batch, said", [
    ("anthropic", ["http://a:1/v1", "http://b:1/v1"], False, "provider 'anthropic' takes one base_url, not 2"),
    ("openai", ["http://a:1/v1", "http://b:1/v1"], True, "batch mode takes one base_url, not 2"),
    ("openai-compatible", "http://a:1/v1,http://b:1/v1", False, "holds a comma: give several replicas as a list"),
    ("openai-compatible", ["http://a:1/v1", "http://a:1/v1"], False, "lists http://a:1/v1 twice"),
    ("openai-compatible", ["a:1/v1"], False, "'a:1/v1' is not an http(s) URL"),
    ("openai-compatible", [], False, "base_url is an empty list"),
])
def test_base_urls_that_cannot_work_are_refused_in_one_line(provider, base_url, batch, said):
    with pytest.raises(ValueError) as info:
        replica_urls(provider, base_url, batch=batch)
    assert said in str(info.value) and "\n" not in str(info.value)


def test_make_provider_refuses_anthropic_replicas_and_keeps_one_url_plain():
    with pytest.raises(FatalProviderError, match="provider 'anthropic' takes one base_url"):
        make_provider("anthropic", "m", api_key="k", base_url=["http://a:1", "http://b:1"])
    assert type(make_provider("openai-compatible", "m", base_url=["http://a:1/v1"])).__name__ == "OpenAIProvider"
    assert isinstance(make_provider("openai", "m", api_key="k", base_url=["http://a:1/v1", "http://b:1/v1"]),
                      ReplicaProvider)  # an OpenAI proxy list falls out of the same class


def test_generate_cli_takes_the_replicas_comma_separated(tmp_path):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Explain topic {i}"}}\n' for i in range(12)))
    args = ["generate", str(prompts), "--provider", "openai-compatible", "--model", "m", "--no-progress", "--base-url"]
    with Emulator(FAST) as a, Emulator(FAST) as b:
        result = CliRunner().invoke(app, [*args, f"{a.openai_base_url}, {b.openai_base_url}"])
        assert result.exit_code == 0, result.output
        assert a.billed > 0 and b.billed > 0 and a.billed + b.billed == 12
    typo = CliRunner().invoke(app, [*args, f"{a.openai_base_url},127.0.0.1:8000/v1"])
    assert typo.exit_code == 1 and "error: --base-url: base_url '127.0.0.1:8000/v1' is not an http(s) URL" in typo.output


def test_a_replica_that_answers_nothing_in_time_is_set_aside(providers, caplog):
    """The engine gives up on its requests (timeout_s) and sends them again, to the replicas that answer."""
    with Emulator(FAST) as a, Emulator(EmulatorConfig(latency_median_s=60.0, latency_sigma=0.0)) as hung:
        with caplog.at_level(logging.WARNING, "textbookgen"):
            out = generator([hung.openai_base_url, a.openai_base_url], timeout_s=0.3).run(reqs(40))
    assert all(r.status in ANSWERED for r in out)
    assert providers[0].answers == {hung.openai_base_url: 0, a.openai_base_url: 40}
    assert f"replica {hung.openai_base_url} set aside for 30 s (a request to it went unanswered)" in caplog.text


RECIPE = """\
name: tiny
model: m
taxonomy:
  source: topics.yaml
mix:
  - template: textbook_section
    audiences: {college: 1}
samples: 10
"""


@pytest.mark.parametrize("provider, line, field, said", [
    ("{name: openai-compatible, base_url: [http://a:8000/v1, 'http://b:8000/v1,']}", 9, "provider.base_url",
     "holds a comma"),
    ("{name: anthropic, base_url: [http://a:8000, http://b:8000]}", 9, "provider.base_url",
     "provider 'anthropic' takes one base_url, not 2"),
    ("{name: openai, base_url: [http://a:8000/v1, http://b:8000/v1], batch: true}", 9, "provider",
     "batch mode takes one base_url, not 2"),
])
def test_a_recipe_base_url_list_that_cannot_work_names_its_line(tmp_path, provider, line, field, said):
    from textbookgen.recipe import RecipeError, load_recipe

    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    (tmp_path / "r.yaml").write_text(RECIPE + f"provider: {provider}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "r.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'r.yaml'}:{line}: {field}: ") and said in str(info.value)


def test_a_recipe_takes_one_base_url_or_a_list(tmp_path, monkeypatch):
    from textbookgen.recipe import load_recipe

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE + "provider: {name: openai, base_url: [http://127.0.0.1:8000/v1, http://localhost:8001/v1]}\n")
    many = load_recipe(path).provider
    assert many.urls == ["http://127.0.0.1:8000/v1", "http://localhost:8001/v1"] and many.has_credentials()
    assert not load_recipe(path, {"provider.base_url": ["http://127.0.0.1:8000/v1", "http://gpu2:8000/v1"]}
                           ).provider.has_credentials()  # openai with a remote proxy among them needs its key
    assert load_recipe(path, {"provider.base_url": "http://127.0.0.1:9/v1"}).provider.urls == ["http://127.0.0.1:9/v1"]


def test_stats_say_what_each_replica_answered():
    with Emulator(FAST) as a, Emulator(FAST) as b:
        gen = generator([a.openai_base_url, b.openai_base_url])
        gen.run(reqs(20))
        assert gen.stats["answers_by_replica"] == {a.openai_base_url: a.billed, b.openai_base_url: b.billed}


def test_one_url_stats_have_no_replicas():
    with Emulator(FAST) as a:
        gen = Generator("openai-compatible", "m", base_url=a.openai_base_url, progress=False)
        gen.run(reqs(3))
        assert "answers_by_replica" not in gen.stats


def test_batch_with_several_urls_is_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match="batch mode takes one base_url, not 2"):
        Generator("openai", "m", base_url=["http://a:1/v1", "http://b:1/v1"], batch=True, journal=tmp_path / "j")
    with pytest.raises(ValueError, match="provider 'anthropic' takes one base_url, not 2"):
        Generator("anthropic", "m", base_url=["http://a:1", "http://b:1"])


def test_all_down_message_lists_the_urls_plainly():
    urls = [closed_port_url(), closed_port_url()]
    with pytest.raises(FatalProviderError) as info:
        generator(urls, max_attempts=3).run(reqs(4))
    assert str(info.value).startswith(f"cannot connect to {urls[0]}, {urls[1]}: 3 attempts (none accepts")


def test_generate_cli_takes_one_url_as_the_comma_list_reads_it(tmp_path):
    """The option was checked split and stripped but passed on as typed: 'URL,' was refused for its comma."""
    from typer.testing import CliRunner

    from textbookgen.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Explain topic 1"}\n')
    with Emulator(FAST) as a:
        result = CliRunner().invoke(app, ["generate", str(prompts), "--provider", "openai-compatible", "--model", "m",
                                          "--no-progress", "--base-url", f" {a.openai_base_url},"])
        assert result.exit_code == 0, result.output
        assert a.billed == 1


def test_a_one_url_list_is_one_server(tmp_path):
    """A recipe's `base_url: [url]` with batch mode printed `--base-url ['http://...']` in its hints."""
    gen = Generator("openai", "m", base_url=["http://127.0.0.1:9/v1"], api_key="k", batch=True,
                    journal=tmp_path / "j.sqlite", progress=False)
    assert gen.base_url == "http://127.0.0.1:9/v1"


def test_a_stopping_run_does_not_set_healthy_replicas_aside(caplog):
    """Ctrl-C cancels the requests on the wire as the engine's timeout does: each replica was 'set aside' and the
    end-of-run line called the nodes sick. A cancel sooner than the attempt timeout is the run stopping."""
    slow = EmulatorConfig(latency_median_s=5.0, latency_sigma=0.0)
    with Emulator(slow) as a, Emulator(slow) as b:
        urls = [a.openai_base_url, b.openai_base_url]

        async def cancel_after(replicas: ReplicaProvider, s: float) -> None:
            task = asyncio.ensure_future(replicas.complete(reqs(1)[0]))
            await asyncio.sleep(s)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await replicas.aclose()

        stopping = make_provider("openai-compatible", "m", api_key="k", base_url=urls, attempt_timeout_s=60.0)
        asyncio.run(cancel_after(stopping, 0.3))
        assert not any("set aside" in r.getMessage() for r in caplog.records)
        timed_out = make_provider("openai-compatible", "m", api_key="k", base_url=urls, attempt_timeout_s=0.1)
        asyncio.run(cancel_after(timed_out, 0.3))
        assert any("set aside" in r.getMessage() for r in caplog.records)

"""The emulator's OpenAI Batch API and Anthropic Message Batches API, against the real clients on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime

import anthropic
import openai
import pytest
from anthropic.types import Message
from batch_testlib import shifted_clock
from openai.types.chat import ChatCompletion

from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

OA_MODEL, AN_MODEL = "gpt-4o-mini", "claude-haiku-4-5"


def cfg(**kw) -> EmulatorConfig:
    return EmulatorConfig(latency_median_s=0.001, batch_latency_s=kw.pop("batch_latency_s", 0.2), **kw)


def oa(emu: Emulator, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.openai_base_url, api_key=key, max_retries=0, timeout=10.0)


def an(emu: Emulator, key: str = "sk-ant-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key=key, max_retries=0, timeout=10.0)


def body(prompt: str, max_tokens: int = 80, model: str = OA_MODEL) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def oa_submit(client: openai.OpenAI, prompts: dict[str, str], **kw):
    lines = [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body(p)}
             for cid, p in prompts.items()]
    file = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 **kw)


def an_submit(client: anthropic.Anthropic, prompts: dict[str, str]):
    return client.messages.batches.create(requests=[{"custom_id": cid, "params": body(p, model=AN_MODEL)}
                                                    for cid, p in prompts.items()])


def wait(poll, done, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not done(obj := poll()):
        assert time.monotonic() < deadline, f"still not done: {obj}"
        time.sleep(0.02)
    return obj


def oa_wait(client: openai.OpenAI, batch_id: str):
    return wait(lambda: client.batches.retrieve(batch_id), lambda b: b.status not in ("validating", "in_progress"))


def an_wait(client: anthropic.Anthropic, batch_id: str):
    return wait(lambda: client.messages.batches.retrieve(batch_id), lambda b: b.processing_status == "ended")


def oa_lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    """custom_id -> line of an output or error file (none: no file)."""
    if file_id is None:
        return {}
    return {row["custom_id"]: row for row in map(json.loads, client.files.content(file_id).text.splitlines())}


def test_openai_full_cycle_matches_the_online_answers_and_bills_once_each():
    prompts = {f"req-{i}": f"Write a short textbook section about topic {i}." for i in range(5)}
    with Emulator(cfg()) as emu:
        client = oa(emu)
        batch = oa_submit(client, prompts, metadata={"run": "t1"})
        assert batch.id.startswith("batch_") and batch.status == "validating" and batch.metadata == {"run": "t1"}
        assert batch.request_counts.total == 5 and batch.output_file_id is None and batch.model == OA_MODEL
        assert client.files.retrieve(batch.input_file_id).purpose == "batch"
        assert emu.billed == 0  # nothing is answered before the batch ends
        done = oa_wait(client, batch.id)
        assert done.status == "completed" and done.error_file_id is None and done.errors is None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
        assert done.in_progress_at is not None and done.completed_at >= done.created_at
        assert emu.billed == emu.batch_requests == 5 and emu.duplicates == 0 and emu.received == 0
        out_file = client.files.retrieve(done.output_file_id)
        assert out_file.purpose == "batch_output" and out_file.bytes > 0
        rows = oa_lines(client, done.output_file_id)
        assert sorted(rows) == sorted(prompts)
        for cid, row in rows.items():
            assert row["id"].startswith("batch_req_") and row["error"] is None
            assert row["response"]["status_code"] == 200 and row["response"]["request_id"].startswith("req_")
            completion = ChatCompletion.model_validate(row["response"]["body"])
            assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
            online = client.chat.completions.create(**body(prompts[cid]))  # the online route answers the same
            assert completion.choices[0].message.content == online.choices[0].message.content
            assert completion.usage == online.usage
        assert emu.billed == 10 and emu.duplicates == 5  # each prompt paid in the batch and again online
        assert client.files.delete(done.output_file_id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.content(done.output_file_id)


def test_anthropic_full_cycle_with_the_async_client():
    prompts = {f"req_{i}": f"Write a short textbook section about topic {i}." for i in range(4)}

    async def go(emu: Emulator):
        async with anthropic.AsyncAnthropic(base_url=emu.anthropic_base_url, api_key="sk-ant-test",
                                            max_retries=0) as client:
            created = await client.messages.batches.create(
                requests=[{"custom_id": cid, "params": body(p, model=AN_MODEL)} for cid, p in prompts.items()])
            with pytest.raises(anthropic.AnthropicError, match="results_url"):  # the SDK's own check
                await client.messages.batches.results(created.id)
            with pytest.raises(anthropic.BadRequestError):  # the route itself, before the batch ended
                await client.get(f"/v1/messages/batches/{created.id}/results", cast_to=object)
            while (batch := await client.messages.batches.retrieve(created.id)).processing_status != "ended":
                await asyncio.sleep(0.02)
            rows = [row async for row in await client.messages.batches.results(created.id)]
            online = {cid: await client.messages.create(**body(p, model=AN_MODEL)) for cid, p in prompts.items()}
            return created, batch, rows, online

    with Emulator(cfg()) as emu:
        created, batch, rows, online = asyncio.run(go(emu))
        assert emu.stats()["batch_requests"] == 4 and emu.billed == 8 and emu.duplicates == 4
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 4 and isinstance(created.created_at, datetime)
    assert (created.expires_at - created.created_at).total_seconds() == 24 * 3600
    assert batch.request_counts.succeeded == 4 and batch.request_counts.processing == 0
    assert batch.results_url == f"{emu.base_url}/v1/messages/batches/{batch.id}/results"
    assert batch.ended_at >= batch.created_at and batch.cancel_initiated_at is None
    assert [r.custom_id for r in rows] == list(prompts)
    for row in rows:
        assert row.result.type == "succeeded" and isinstance(row.result.message, Message)
        assert row.result.message.content[0].text == online[row.custom_id].content[0].text
        assert row.result.message.usage.output_tokens == online[row.custom_id].usage.output_tokens


def test_per_request_faults_land_in_the_error_file_and_errored_results():
    faults = [Fault("400", rate=1.0, match="BAD"), Fault("503", rate=1.0, match="DOWN"),
              Fault("refusal", rate=1.0, match="REFUSE"), Fault("429", rate=1.0, match="BUSY"),
              Fault("timeout", rate=1.0, match="BUSY")]
    prompts = {"ok": "Explain tides.", "bad": "BAD prompt", "down": "DOWN prompt", "refuse": "REFUSE prompt",
               "busy": "BUSY prompt"}  # 429 and timeout are the transport's: no fault inside a batch
    with Emulator(cfg(faults=faults)) as emu:
        client, aclient = oa(emu), an(emu)
        done = oa_wait(client, oa_submit(client, prompts).id)
        ended = an_wait(aclient, an_submit(aclient, prompts).id)
        results = {r.custom_id: r.result for r in aclient.messages.batches.results(ended.id)}
        output, errors = oa_lines(client, done.output_file_id), oa_lines(client, done.error_file_id)
        assert emu.billed == emu.batch_requests == 6  # ok, refuse and busy, twice
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (3, 2)
    assert sorted(output) == ["busy", "ok", "refuse"] and sorted(errors) == ["bad", "down"]
    assert output["refuse"]["response"]["body"]["choices"][0]["finish_reason"] == "content_filter"
    bad, down = errors["bad"]["response"], errors["down"]["response"]
    assert bad["status_code"] == 400 and bad["body"]["error"]["type"] == "invalid_request_error"
    assert down["status_code"] == 500 and down["body"]["error"]["type"] == "server_error"
    assert set(bad["body"]["error"]) == {"message", "type", "param", "code"} and errors["bad"]["error"] is None
    counts = ended.request_counts
    assert (counts.succeeded, counts.errored, counts.expired, counts.canceled) == (3, 2, 0, 0)
    assert results["bad"].type == "errored" and results["bad"].error.error.type == "invalid_request_error"
    assert results["down"].type == "errored" and results["down"].error.error.type == "api_error"
    assert results["refuse"].type == "succeeded" and results["refuse"].message.stop_reason == "refusal"
    assert results["busy"].type == "succeeded"


def test_expire_answers_the_first_half_then_outcomes_run_out():
    prompts = {f"r{i}": f"Explain topic {i}." for i in range(4)}
    with Emulator(cfg(batch_outcomes=["expire:0.5", "expire:0.5"])) as emu:
        client, aclient = oa(emu), an(emu)
        expired = oa_wait(client, oa_submit(client, prompts).id)
        ended = an_wait(aclient, an_submit(aclient, prompts).id)
        results = [(r.custom_id, r.result.type) for r in aclient.messages.batches.results(ended.id)]
        output, errors = oa_lines(client, expired.output_file_id), oa_lines(client, expired.error_file_id)
        assert emu.billed == emu.batch_requests == 4
        assert oa_wait(client, oa_submit(client, {"x": "Explain x."}).id).status == "completed"  # outcomes used up
    assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
    assert (expired.request_counts.completed, expired.request_counts.failed) == (2, 2)
    assert sorted(output) == ["r0", "r1"]
    assert sorted(errors) == ["r2", "r3"] and all(e["response"] is None for e in errors.values())
    assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (2, 2)
    assert results == [("r0", "succeeded"), ("r1", "succeeded"), ("r2", "expired"), ("r3", "expired")]


def test_cancel_ends_at_once_with_every_request_canceled():
    prompts = {"a": "Explain a.", "b": "Explain b."}
    with Emulator(cfg(batch_latency_s=30.0)) as emu:
        client, aclient = oa(emu), an(emu)
        cancelling = client.batches.cancel(oa_submit(client, prompts).id)
        cancelled = client.batches.retrieve(cancelling.id)
        canceling = aclient.messages.batches.cancel(an_submit(aclient, prompts).id)
        ended = aclient.messages.batches.retrieve(canceling.id)
        results = {r.custom_id: r.result.type for r in aclient.messages.batches.results(ended.id)}
        errors = oa_lines(client, cancelled.error_file_id)
        with pytest.raises(openai.BadRequestError):
            client.batches.cancel(cancelled.id)
        with pytest.raises(anthropic.BadRequestError):
            aclient.messages.batches.cancel(ended.id)
        assert emu.billed == emu.batch_requests == 0
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None and cancelled.output_file_id is None
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (0, 2)
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"} and sorted(errors) == ["a", "b"]
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    assert ended.processing_status == "ended" and ended.request_counts.canceled == 2
    assert results == {"a": "canceled", "b": "canceled"}


def test_cancel_keeps_the_answers_of_the_requests_that_ran(monkeypatch):
    prompts = {f"r{i}": f"Explain topic {i}." for i in range(4)}
    shift = shifted_clock(monkeypatch)
    # latency 8 s: validated at 2 s, then the requests finish one after another at 3.5, 5, 6.5 and 8 s
    with Emulator(cfg(batch_latency_s=8.0)) as emu:
        client, aclient = oa(emu), an(emu)
        batch_id, abatch_id = oa_submit(client, prompts).id, an_submit(aclient, prompts).id
        shift[0] = 5.5
        running, arunning = client.batches.retrieve(batch_id), aclient.messages.batches.retrieve(abatch_id)
        cancelling = client.batches.cancel(batch_id)
        cancelled = client.batches.retrieve(batch_id)
        canceling = aclient.messages.batches.cancel(abatch_id)
        ended = aclient.messages.batches.retrieve(abatch_id)
        results = {r.custom_id: r.result.type for r in aclient.messages.batches.results(abatch_id)}
        output, errors = oa_lines(client, cancelled.output_file_id), oa_lines(client, cancelled.error_file_id)
        shift[0] = 10.0
        assert client.batches.retrieve(batch_id).request_counts.completed == 2  # the rest never run
        assert emu.billed == emu.batch_requests == 4
    assert running.status == "in_progress" and (running.request_counts.completed, running.request_counts.failed) == (2, 0)
    assert (arunning.processing_status, arunning.request_counts.processing, arunning.request_counts.succeeded) == \
        ("in_progress", 2, 2)
    assert cancelling.status == "cancelling" and cancelled.status == "cancelled"
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (2, 2)
    assert sorted(output) == ["r0", "r1"] and all(o["response"]["status_code"] == 200 for o in output.values())
    assert sorted(errors) == ["r2", "r3"] and {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    assert canceling.processing_status == "canceling" and canceling.request_counts.processing == 2
    assert ended.processing_status == "ended" and (ended.request_counts.succeeded, ended.request_counts.canceled) == (2, 2)
    assert results == {"r0": "succeeded", "r1": "succeeded", "r2": "canceled", "r3": "canceled"}


def test_the_enqueued_token_limit_fails_a_batch_as_a_whole_until_room_frees():
    one = {f"a{i}": f"Explain topic {i}." for i in range(3)}
    with Emulator(cfg(batch_latency_s=0.4, batch_enqueued_tokens=40)) as emu:
        client = oa(emu)
        first = oa_submit(client, one)  # 30 tokens: taken; the next 14 are too many until it ends
        refused = oa_wait(client, oa_submit(client, {"b": "Explain topic b, then topic c."}).id)
        assert oa_wait(client, first.id).status == "completed"
        again = oa_wait(client, oa_submit(client, {"b": "Explain topic b, then topic c."}).id)  # room now
    assert refused.status == "failed" and refused.failed_at is not None and refused.request_counts.total == 0
    [error] = refused.errors.data
    assert (error.code, error.line, error.param) == ("token_limit_exceeded", None, None)
    assert error.message.startswith(f"Enqueued token limit reached for {OA_MODEL} in organization ")
    assert "Limit: 40 enqueued tokens. Please try again once some in_progress batches have been completed." in \
        error.message
    assert again.status == "completed" and emu.billed == 4


def test_listing_is_newest_first_and_pages_with_after_and_before():
    with Emulator(cfg()) as emu:
        client, aclient = oa(emu), an(emu)
        ids = [oa_submit(client, {"x": f"Explain {i}."}).id for i in range(5)][::-1]  # newest first
        first = client.batches.list(limit=2)
        second = client.batches.list(limit=2, after=ids[1])
        everything = [b.id for b in client.batches.list(limit=2)]  # the SDK follows `after` itself
        aids = [an_submit(aclient, {"x": f"Explain {i}."}).id for i in range(3)][::-1]
        apage = aclient.messages.batches.list(limit=2)
        aall = [b.id for b in aclient.messages.batches.list(limit=2)]
        before = aclient.messages.batches.list(limit=5, before_id=aids[2])
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=0)
    assert [b.id for b in first.data] == ids[:2] and first.has_more
    assert [b.id for b in second.data] == ids[2:4] and second.has_more
    assert everything == ids
    assert [b.id for b in apage.data] == aids[:2] and apage.has_more and apage.last_id == aids[1]
    assert aall == aids and [b.id for b in before.data] == aids[:2] and not before.has_more


def test_invalid_input_fails_the_openai_batch_and_is_a_400_for_anthropic():
    line = {"custom_id": "same", "method": "POST", "url": "/v1/chat/completions", "body": body("Explain x.")}
    with Emulator(cfg()) as emu:
        client, aclient = oa(emu), an(emu)
        file = client.files.create(file=("in.jsonl", jsonl([line, line]) + b"{not json\n"), purpose="batch")
        created = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        failed = oa_wait(client, created.id)
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                                  completion_window="24h")
        for requests in ([{"custom_id": "a", "params": body("x", model=AN_MODEL)}] * 2,
                         [{"custom_id": "has space", "params": body("x", model=AN_MODEL)}]):
            with pytest.raises(anthropic.BadRequestError) as err:
                aclient.messages.batches.create(requests=requests)
            assert err.value.body["error"]["type"] == "invalid_request_error"
        assert emu.billed == 0 and emu.batches_created == 1
    assert created.status == "validating" and failed.status == "failed" and failed.failed_at is not None
    assert failed.output_file_id is None and failed.error_file_id is None and failed.request_counts.total == 0
    assert [(e.code, e.line) for e in failed.errors.data] == [("duplicate_custom_id", 2), ("invalid_json_line", 3)]


def test_a_bad_key_is_the_providers_401():
    with Emulator(cfg(api_keys={"sk-right"})) as emu:
        client, aclient = oa(emu, "sk-wrong"), an(emu, "sk-wrong")
        with pytest.raises(openai.AuthenticationError):
            client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            client.batches.list()
        with pytest.raises(anthropic.AuthenticationError):
            an_submit(aclient, {"a": "Explain a."})
        with pytest.raises(anthropic.AuthenticationError):
            aclient.messages.batches.list()


def test_a_prompt_in_two_batches_is_a_duplicate_and_reset_clears_the_batches():
    with Emulator(cfg(batch_outcomes=["expire:0"])) as emu:
        client = an(emu)
        never = an_wait(client, an_submit(client, {"a": "Explain a."}).id)  # expired: not run, not billed
        first = an_submit(client, {"a": "Explain a."})
        again = an_submit(client, {"b": "Explain a."})
        an_wait(client, first.id)
        an_wait(client, again.id)
        stats = emu.stats()
        emu.reset()
        after = emu.stats()
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(first.id)
        assert an_wait(client, an_submit(client, {"a": "Explain a."}).id).request_counts.expired == 1  # outcomes anew
        assert emu.billed == 0
    assert never.request_counts.expired == 1
    assert (stats["batches_created"], stats["batch_requests"], stats["billed"], stats["duplicates"]) == (3, 2, 2, 1)
    assert (after["batches_created"], after["batch_requests"], after["billed"]) == (0, 0, 0)


def test_stats_end_due_batches_and_config_is_checked():
    with Emulator(cfg(batch_latency_s=0.05)) as emu:
        an_submit(an(emu), {"a": "Explain a."})
        time.sleep(0.1)
        assert emu.stats()["batch_requests"] == 1  # nobody polled it
    for bad in (["explode"], ["expire:1.5"], ["expire"], ["complete:1"]):
        with pytest.raises(ValueError, match="batch outcome"):
            EmulatorConfig(batch_outcomes=bad)
    with pytest.raises(ValueError, match="batch_latency_s"):
        EmulatorConfig(batch_latency_s=-1)


def test_cli_batch_flags():
    args = ["--port", "0", "--latency", "0.001", "--batch-latency", "0.1", "--batch-outcome", "expire:1"]
    with subprocess.Popen([sys.executable, "-m", "textbookgen.testing.emulator", *args], stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            url = proc.stdout.readline().split(" on ")[1].strip()
            client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=10.0)
            assert oa_wait(client, oa_submit(client, {"a": "Explain a."}).id).status == "expired"
        finally:
            proc.terminate()

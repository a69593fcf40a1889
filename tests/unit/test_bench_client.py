"""bench.client: prompt sizes on the sim's tokenizer, stream parsing, the metric definitions on
hand-made chunk times, and the open-loop sender against a fake server (no wall-time sleeps)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from bench.client import (
    CHAT,
    COMPLETIONS,
    GENERATE,
    ClientConfig,
    ClientShards,
    RequestRecord,
    StreamClock,
)
from bench.client.loadgen import run_open_loop
from bench.client.prompts import prompt_ids, prompt_words
from bench.client.protocol import body, parse_line
from bench.traces import BenchRequest
from simsglang.tokenizer import ToyTokenizer, render_chat

BOS = 1


@pytest.mark.parametrize("n", [1, 2, 13, 100, 2000])
def test_prompt_text_has_the_requested_sim_token_count(n: int) -> None:
    tok = ToyTokenizer()
    # at least one word: a 1-token request comes out as 2 (BOS + the word)
    assert BOS + len(tok.encode(prompt_words(n, COMPLETIONS, seed=n))) == max(n, 2)
    assert BOS + len(tok.encode(prompt_words(n, GENERATE, seed=n))) == max(n, 2)
    chat = render_chat([{"role": "user", "content": prompt_words(n, CHAT, seed=n)}])
    assert BOS + len(tok.encode(chat)) == max(n, 13)  # the template alone is 12 tokens + a word
    assert len(prompt_ids(n, seed=n)) == n
    assert prompt_words(n, COMPLETIONS, 1) != prompt_words(n, COMPLETIONS, 2) or n == 1


def test_bodies_ask_for_a_fixed_streamed_output() -> None:
    req = BenchRequest(3, 0.0, "llama", 10, 7)
    chat = orjson.loads(body(req, CHAT, seed=0))
    assert chat["max_tokens"] == 7 and chat["ignore_eos"] and chat["stream"]
    assert chat["stream_options"] == {"include_usage": True} and chat["messages"][0]["content"]
    gen = orjson.loads(body(req, GENERATE, seed=0, ids=True))
    assert gen["sampling_params"]["max_new_tokens"] == 7 and len(gen["input_ids"]) == 10
    with pytest.raises(ValueError, match="chat"):
        body(req, CHAT, seed=0, ids=True)


def test_parse_line_matches_sglang_shapes() -> None:
    role = parse_line('data: {"choices":[{"delta":{"role":"assistant","content":""}}]}', CHAT)
    assert role is not None and not role.has_output
    text = parse_line('data: {"choices":[{"delta":{"content":" hi"}}]}', CHAT)
    assert text is not None and text.has_output
    usage = parse_line('data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}', COMPLETIONS)
    assert usage is not None and (usage.completion_tokens, usage.prompt_tokens) == (9, 5)
    gen = parse_line('data: {"text":"a b","meta_info":{"completion_tokens":2}}', GENERATE)
    assert gen is not None and gen.has_output and gen.completion_tokens == 2
    done = parse_line("data: [DONE]", CHAT)
    assert done is not None and done.done
    err = parse_line('data: {"error":{"message":"engine gone"}}', CHAT)
    assert err is not None and err.error == "engine gone"
    assert parse_line("", CHAT) is None and parse_line(": keep-alive", CHAT) is None
    with pytest.raises(ValueError):
        parse_line("data: {oops", CHAT)


def test_timing_definitions_on_hand_made_chunk_times() -> None:
    c = StreamClock(sent_at=10.0)
    c.line(10.05)  # role chunk: no output, not the first token
    for t in (10.1, 10.15, 10.35):
        c.output(t)
    c.usage(3)
    c.line(10.4)  # [DONE]
    t = c.finish(requested_tokens=5)
    assert t.ttft_s == pytest.approx(0.1)
    assert t.itl_s == pytest.approx([0.05, 0.2])
    assert t.e2e_s == pytest.approx(0.4)
    assert t.output_tokens == 3  # what the server reported, not what was asked
    assert t.tpot_s == pytest.approx((0.4 - 0.1) / 2)


def test_generate_itl_splits_multi_token_chunks_like_bench_serving() -> None:
    c = StreamClock(sent_at=0.0, split_itl=True)
    c.output(1.0, completion_tokens=1)
    c.output(1.3, completion_tokens=4)  # 3 new tokens in one chunk: 3 gaps of 0.1
    c.output(1.4, completion_tokens=4)  # no new token: skipped
    c.output(1.6, completion_tokens=5)  # measured from the last counted chunk (1.3)
    c.usage(5)
    t = c.finish(5)
    assert t.itl_s == pytest.approx([0.1, 0.1, 0.1, 0.3])
    assert t.tpot_s == pytest.approx((1.6 - 1.0) / 4)


def test_one_token_output_has_no_tpot() -> None:
    c = StreamClock(sent_at=0.0)
    c.output(0.2)
    assert c.finish(1).tpot_s is None


def _sse(*frames: object) -> bytes:
    return b"".join(b"data: " + (f if isinstance(f, bytes) else orjson.dumps(f)) + b"\n\n" for f in frames)


def _server(request: httpx.Request) -> httpx.Response:
    model = orjson.loads(request.content)["model"]
    chunk = {"choices": [{"text": " w"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}
    if model == "ok":
        return httpx.Response(
            200, content=_sse(chunk, chunk, usage, b"[DONE]"), headers={"x-chimera-instance": "ok@gpu0"}
        )
    if model == "busy":
        return httpx.Response(503, json={"error": {"message": "waking"}})
    if model == "broken":
        return httpx.Response(200, content=_sse(chunk, {"error": {"message": "gone"}}, b"[DONE]"))
    return httpx.Response(200, content=_sse(chunk))  # "cut": no [DONE]


def _run(models: list[str], arrivals: list[float]) -> tuple[list[RequestRecord], list[float]]:
    reqs = [BenchRequest(i, t, m, 8, 2) for i, (m, t) in enumerate(zip(models, arrivals, strict=True))]
    slept: list[float] = []
    fake_now = iter(float(i) for i in range(10_000))

    async def sleep(s: float) -> None:
        slept.append(s)

    async def go() -> list[RequestRecord]:
        async with ClientShards(2, transport=httpx.MockTransport(_server)) as shards:
            recs = await run_open_loop(reqs, ClientConfig("http://x"), shards, now=lambda: next(fake_now), sleep=sleep)
            return list(recs)

    return asyncio.run(go()), slept


def test_open_loop_records_successes_and_every_kind_of_failure() -> None:
    recs, _ = _run(["ok", "busy", "broken", "cut"], [0.0] * 4)
    ok, busy, broken, cut = recs
    assert ok.ok and ok.status == 200 and ok.output_tokens == 2
    assert ok.prompt_tokens == 11 and ok.instance == "ok@gpu0"
    assert ok.ttft_s is not None and ok.tpot_s is not None
    assert not busy.ok and busy.status == 503 and "waking" in busy.error
    assert not broken.ok and "gone" in broken.error
    assert not cut.ok and "[DONE]" in cut.error


def test_open_loop_sends_each_request_at_its_arrival_time() -> None:
    _, slept = _run(["ok"] * 3, [0.0, 5.0, 50.0])
    # the fake clock ticks one second per reading: requests leave on schedule, never early
    assert len(slept) == 2 and all(s > 0 for s in slept)

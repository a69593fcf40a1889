"""TPOT and SLO attainment of relayed streams: the stream meter alone (frames split anywhere,
usage read where the stream reports it), and through the proxy at the ASGI level, including a
client that closes right after ``data: [DONE]`` (a complete answer, never a 499)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from orchestrator.config import SLO
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.tokens import StreamMeter, answer_tokens, answer_tpot
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy_stream import LLAMA, AsgiClient, EngineStream, frame, run_with, sample, sse_engine

DONE = b"data: [DONE]\n\n"
CHAT = "/v1/chat/completions"


def usage_frame(tokens: int) -> bytes:
    obj = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": tokens}}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_meter_counts_frames_across_any_chunk_boundary() -> None:
    raw = frame("a") + frame("b") + b": keep-alive\n\n" + frame("c") + DONE
    m = StreamMeter()
    for i in range(0, len(raw), 7):  # 7-byte chunks: every frame split
        m.feed(raw[i : i + 7], float(i))
    assert (m.frames, m.tokens, m.done) == (3, 3, True)
    assert m.done_at == float((len(raw) - 1) // 7 * 7)  # the chunk that completed [DONE]


def test_meter_prefers_the_reported_usage_and_skips_the_usage_only_frame() -> None:
    m = StreamMeter()
    m.feed(frame("ab"), 1.0)
    m.feed(frame("cd") + usage_frame(9), 2.0)
    m.feed(DONE, 5.0)
    assert (m.frames, m.tokens) == (2, 9)
    assert m.tpot(1.0) == pytest.approx((5.0 - 1.0) / 8)


def test_meter_reads_generate_meta_info_and_has_no_tpot_below_two_tokens() -> None:
    gen = b'data: {"text": "x", "meta_info": {"completion_tokens": 1}}\n\n'
    m = StreamMeter()
    m.feed(gen, 1.0)
    assert m.tpot(1.0) is None and not m.done  # one token; no [DONE] yet
    m.feed(b'data: {"text": "xy", "meta_info": {"completion_tokens": 2}}\n\n' + DONE, 3.0)
    assert m.tokens == 2 and m.tpot(1.0) == pytest.approx(2.0)
    assert StreamMeter().tpot(0.0) is None


def slo_counts(metrics: ChimeraMetrics) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.render()[0].decode()):
        for s in fam.samples:
            if s.name == "chimera_slo_requests_total" and s.labels["model"] == "llama":
                out[(s.labels["slo"], s.labels["outcome"])] = s.value
    return out


class LeavesAtDone(AsgiClient):
    """A client that closes as soon as it has read ``data: [DONE]`` (the sync openai client)."""

    async def send(self, message: Message) -> None:
        await super().send(message)
        if b"[DONE]" in message.get("body", b""):
            self.gone.set()


@pytest.mark.parametrize("tpot_slo_s, tpot_outcome", [(10.0, "met"), (1e-9, "missed")])
async def test_a_stream_read_to_done_counts_200_tpot_and_attainment(tpot_slo_s: float, tpot_outcome: str) -> None:
    spec = replace(LLAMA, slo=SLO(ttft_s=10.0, tpot_s=tpot_slo_s))
    # the engine hangs after [DONE]: the client's close always comes before the stream's end
    stream = EngineStream([frame("a"), frame("b"), frame("c") + DONE], hang=True)
    engine, router, metrics = sse_engine(stream), FakeRouter((spec,)), ChimeraMetrics()
    app = create_app(router, metrics, transport=engine.transport)
    client = LeavesAtDone(app, CHAT, {"model": "llama", "messages": [], "stream": True})

    await run_with(app, client.run)
    assert not client.completed and stream.cancelled  # the proxy never sent its last message
    assert sample(metrics, "chimera_requests_total", model="llama", route=CHAT, status="200") == 1
    assert sample(metrics, "chimera_requests_total", model="llama", route=CHAT, status="499") is None
    assert sample(metrics, "chimera_request_e2e_seconds_count", model="llama") == 1
    assert sample(metrics, "chimera_request_tpot_seconds_count", model="llama") == 1
    joint = "met" if tpot_outcome == "met" else "missed"
    assert slo_counts(metrics) == {("ttft", "met"): 1, ("tpot", tpot_outcome): 1, ("joint", joint): 1}
    assert len(router.acquired) == 1 and router.released == router.acquired


async def test_a_stream_left_before_done_is_499_without_attainment() -> None:
    stream = EngineStream([frame("a"), frame("b")], hang=True)
    engine, router, metrics = sse_engine(stream), FakeRouter((LLAMA,)), ChimeraMetrics()
    app = create_app(router, metrics, transport=engine.transport)
    client = AsgiClient(app, CHAT, {"model": "llama", "messages": [], "stream": True})

    async def scenario() -> None:
        task = asyncio.create_task(client.run())
        await client.got_chunk.wait()
        client.gone.set()
        await task

    await run_with(app, scenario)
    assert sample(metrics, "chimera_requests_total", model="llama", route=CHAT, status="499") == 1
    assert slo_counts(metrics) == {}
    assert sample(metrics, "chimera_request_tpot_seconds_count", model="llama") is None


async def test_a_broken_stream_counts_no_attainment() -> None:
    stream = EngineStream([frame("a"), frame("b")], fail=httpx.RemoteProtocolError("peer closed connection"))
    engine, router, metrics = sse_engine(stream), FakeRouter((LLAMA,)), ChimeraMetrics()
    app = create_app(router, metrics, transport=engine.transport)
    client = AsgiClient(app, CHAT, {"model": "llama", "messages": [], "stream": True})
    await run_with(app, client.run)
    assert sample(metrics, "chimera_requests_total", model="llama", route=CHAT, status="502") == 1
    assert slo_counts(metrics) == {}


def test_a_whole_answer_counts_tokens_per_choice() -> None:
    def body(tokens: int, choices: int) -> bytes:
        return orjson.dumps({"choices": [{}] * choices, "usage": {"completion_tokens": tokens}})

    assert answer_tokens(body(12, 1)) == 12 and answer_tokens(body(12, 3)) == 4
    assert answer_tokens(orjson.dumps({"text": "x", "meta_info": {"completion_tokens": 5}})) == 5
    assert answer_tokens(b'{"choices": []}') is None and answer_tokens(b"[1]") is None
    # an upper bound: e2e over every token; undefined below two tokens, as for streams
    assert answer_tpot(2.0, 8) == 0.25 and answer_tpot(2.0, 1) is None and answer_tpot(2.0, None) is None

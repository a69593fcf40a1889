"""The open-loop load generator: every request is sent at its arrival time, whatever happened
to the earlier ones (a slow server builds a queue, as real traffic would), streamed, and timed
chunk by chunk (definitions in timing.py).

It talks HTTP only, so it drives chimera's proxy on the sim engine, on stock SGLang, or one
engine directly. The clock and sleep are injectable for tests; the client's own lag (how late a
request left compared with its arrival time) is recorded so an overloaded client is visible.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from bench.client import protocol
from bench.client.prompts import COMPLETIONS, GENERATE
from bench.client.record import RequestRecord
from bench.client.timing import StreamClock
from bench.traces import BenchRequest

# No read timeout: a request may wait minutes for a model to start; ``request_timeout_s`` bounds
# the whole exchange instead. Connections are not the limit: the open loop decides concurrency.
TIMEOUT = httpx.Timeout(connect=30.0, read=None, write=60.0, pool=None)
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=512)
MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class ClientConfig:
    base_url: str  # http://127.0.0.1:8000 (chimera's proxy, or an engine)
    route: str = COMPLETIONS
    seed: int = 0  # prompt text seed (with the request id)
    ids: bool = False  # token-id prompts (exact counts on real SGLang)
    request_timeout_s: float = 600.0
    run: int = 0  # index of the run, copied into records


def make_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    # trust_env=False: an HTTP(S)_PROXY in the environment must never reroute loopback traffic.
    return httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, trust_env=False, transport=transport)


class ClientShards:
    """Several AsyncClients used in turn. httpcore 1.0.9's pool scans every connection for each
    idle one (``_assign_requests_to_connections``: O(idle x connections) per request), which
    made the client itself the bottleneck at 64 streams (62% of its CPU, measured with
    pyinstrument); pools of at most ~``streams / shards`` connections keep that small."""

    def __init__(self, shards: int = 16, transport: httpx.AsyncBaseTransport | None = None):
        self.clients = [make_client(transport) for _ in range(max(1, shards))]
        self._next = 0

    def pick(self) -> httpx.AsyncClient:
        self._next = (self._next + 1) % len(self.clients)
        return self.clients[self._next]

    async def __aenter__(self) -> ClientShards:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.aclose()


async def run_open_loop(
    reqs: Sequence[BenchRequest],
    cfg: ClientConfig,
    clients: ClientShards,
    *,
    now: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Send ``reqs`` (sorted by arrival) on schedule; returns one record per request, in the
    order of ``reqs``. Cancelling it cancels every request in flight."""
    t0 = now()
    tasks: list[asyncio.Task[RequestRecord]] = []
    try:
        for req in reqs:
            delay = t0 + req.arrival_s - now()
            if delay > 0:
                await sleep(delay)
            task = asyncio.create_task(send_one(clients.pick(), cfg, req, t0, now), name=f"req-{req.id}")
            if on_record is not None:
                task.add_done_callback(lambda t: t.cancelled() or on_record(t.result()))
            tasks.append(task)
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


async def send_one(
    client: httpx.AsyncClient,
    cfg: ClientConfig,
    req: BenchRequest,
    t0: float,
    now: Callable[[], float] = time.perf_counter,
) -> RequestRecord:
    """One streamed request; never raises for a failed request (its record says why)."""
    rec = RequestRecord(
        id=req.id,
        model=req.model,
        route=cfg.route,
        arrival_s=req.arrival_s,
        prompt_tokens=req.prompt_tokens,
        prompt_tokens_requested=req.prompt_tokens,
        output_tokens_requested=req.output_tokens,
        slo_ttft_s=req.slo_ttft_s,
        slo_tpot_s=req.slo_tpot_s,
        run=cfg.run,
    )
    content = protocol.body(req, cfg.route, cfg.seed, cfg.ids)
    sent = now()
    rec.sent_at_s = sent - t0
    clock = StreamClock(sent, split_itl=cfg.route == GENERATE)
    done = False
    try:
        async with asyncio.timeout(cfg.request_timeout_s):
            async with client.stream(
                "POST", cfg.base_url + cfg.route, content=content, headers={"content-type": "application/json"}
            ) as resp:
                rec.status = resp.status_code
                rec.instance = resp.headers.get("x-chimera-instance", "")
                if resp.status_code != 200:
                    text = (await resp.aread()).decode("utf-8", "replace")
                    rec.error = f"HTTP {resp.status_code}: {text[:MAX_ERROR_TEXT]}"
                else:
                    done = await _read_stream(resp, cfg.route, clock, rec, now)
    except TimeoutError:
        rec.error = f"no complete answer within {cfg.request_timeout_s:g} s (--request-timeout)"
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]
    t = clock.finish(req.output_tokens)
    rec.ttft_s, rec.e2e_s, rec.tpot_s, rec.itl_s = t.ttft_s, t.e2e_s, t.tpot_s, t.itl_s
    rec.output_tokens = t.output_tokens
    if rec.status == 200 and not rec.error:
        if not done:
            rec.error = "the stream ended without data: [DONE]"
        elif t.ttft_s is None:
            rec.error = "the stream carried no output"
    rec.ok = rec.status == 200 and not rec.error
    return rec


async def _read_stream(
    resp: httpx.Response, route: str, clock: StreamClock, rec: RequestRecord, now: Callable[[], float]
) -> bool:
    """Reads the SSE lines into ``clock``; True when [DONE] came."""
    done = False
    async for raw in resp.aiter_lines():
        at = now()
        try:
            line = protocol.parse_line(raw, route)
        except ValueError as exc:
            rec.error = str(exc)[:MAX_ERROR_TEXT]
            continue
        if line is None:
            continue
        if line.has_output:
            clock.output(at, line.completion_tokens if route == GENERATE else None)
        else:
            clock.line(at)
        if line.error is not None:
            rec.error = f"error in the stream: {line.error}"[:MAX_ERROR_TEXT]
        if line.completion_tokens is not None:
            clock.usage(line.completion_tokens)
        if line.prompt_tokens is not None:
            rec.prompt_tokens = line.prompt_tokens
        done = done or line.done
    return done

"""The chaos bench's client: closed-loop workers that keep sending requests to chimera's proxy
while a fault happens, and classify how each one ended, within its bound.

Outcomes (every request gets exactly one):
- ``ok``: 200 and a whole answer (a stream read to ``data: [DONE]`` with no error frame);
- ``error``: a clean error the client can act on: a status >= 400 whose body is chimera's
  envelope ``{"error": {"message": ...}}``, or an in-stream error frame followed by ``[DONE]``;
- ``refused``: the connection was refused (no chimera listening: a restart's gap);
- ``reset``: the connection broke mid-answer, or an answer that is not what the API promises
  (a stream without ``[DONE]``, a body that is not the envelope): a lost request;
- ``hung``: no end within the request's bound.
A client that leaves on purpose (``left``) is the disconnect scenarios' own outcome.
``killed`` (chimera's kill -9 only): a ``reset`` of a request sent before the killed chimera was
gone, so in flight on that process or in its accept queue: no process can answer it, and
it is reported as such, apart from ``reset`` (which counts what a live chimera broke) and never
as a clean error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

LOST = ("reset", "hung")  # the target: none of these
KINDS = ("ok", "error", "refused", "killed", "reset", "hung", "left")
BACKOFF_S = 0.05  # a worker's pause after anything but ok (a refused port would spin otherwise)


@dataclass(frozen=True)
class Outcome:
    started: float  # monotonic
    ended: float
    kind: str  # ok | error | refused | killed | reset | hung | left
    status: int = 0
    detail: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(o.kind for o in self.outcomes)
        return {k: c.get(k, 0) for k in KINDS}

    def killed_before(self, gone: float) -> None:
        """Resets of requests sent before ``gone`` (the monotonic time a SIGKILLed chimera was
        seen gone) become ``killed``: the process holding their connections was killed."""
        self.outcomes = [
            dataclasses.replace(o, kind="killed") if o.kind == "reset" and o.status == 0 and o.started < gone else o
            for o in self.outcomes
        ]

    def first_ok_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first whole answer to a request sent at or after ``t``."""
        ends = [o.ended for o in self.outcomes if o.kind == "ok" and o.started >= t]
        return min(ends) - t if ends else None

    def longest_ok_after(self, t: float) -> float | None:
        """The longest a request sent at or after ``t`` took to its whole answer: what a client
        that came during a restart waited (a SYN retry of 1-3 s shows here, not in recovery)."""
        took = [o.ended - o.started for o in self.outcomes if o.kind == "ok" and o.started >= t]
        return max(took) if took else None

    def examples(self, kinds: tuple[str, ...] = ("error", "killed", "reset", "hung")) -> dict[str, str]:
        seen: dict[str, str] = {}
        for o in self.outcomes:
            if o.kind in kinds and o.kind not in seen:
                seen[o.kind] = f"{o.status} {o.detail}"[:200]
        return seen


def body(model: str, stream: bool, max_tokens: int = 16) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "tell me about the sea"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def is_envelope(text: str) -> bool:
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(err, dict) and isinstance(err.get("message"), str)


async def one(client: httpx.AsyncClient, base: str, payload: dict[str, object], bound_s: float) -> Outcome:
    """Send one chat completion and classify its end."""
    t0 = time.monotonic()
    try:
        kind, status, detail = await asyncio.wait_for(_exchange(client, base, payload), bound_s)
    except TimeoutError:
        kind, status, detail = "hung", 0, f"no end within {bound_s:g} s"
    except httpx.ConnectError as exc:
        kind, status, detail = "refused", 0, type(exc).__name__
    except httpx.TransportError as exc:
        kind, status, detail = "reset", 0, f"{type(exc).__name__}: {exc}"
    return Outcome(t0, time.monotonic(), kind, status, detail)


async def _exchange(client: httpx.AsyncClient, base: str, payload: dict[str, object]) -> tuple[str, int, str]:
    async with client.stream("POST", f"{base}/v1/chat/completions", json=payload) as r:
        if not payload.get("stream") or r.status_code != 200:
            text = (await r.aread()).decode(errors="replace")
            if r.status_code == 200:
                ok = "choices" in text
                return ("ok" if ok else "reset"), 200, "" if ok else text[:120]
            return ("error" if is_envelope(text) else "reset"), r.status_code, text[:160]
        errored = ""
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                return ("error" if errored else "ok"), 200, errored
            if line.startswith("data: ") and '"error"' in line and is_envelope(line[6:]):
                errored = line[6:160]
        return "reset", 200, "stream ended without [DONE]" + (f" after {errored}" if errored else "")


class Load:
    """``workers`` closed-loop clients (half streaming) on ``models`` until ``stop()``."""

    def __init__(self, base: str, models: list[str], workers: int = 8, bound_s: float = 30.0) -> None:
        self.base, self.models, self.workers, self.bound_s = base, models, workers, bound_s
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # one connection per request: a kept-alive connection to a chimera that was restarted
        # would break for a reason of the client's own making
        self._client = httpx.AsyncClient(
            trust_env=False, timeout=httpx.Timeout(None), limits=httpx.Limits(max_keepalive_connections=0)
        )

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]

    async def _worker(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            model = self.models[(i + n) % len(self.models)]
            out = await one(self._client, self.base, body(model, stream=i % 2 == 0), self.bound_s)
            self.tally.outcomes.append(out)
            n += 1
            if out.kind != "ok":
                await asyncio.sleep(BACKOFF_S)

    async def stop(self) -> Tally:
        """Stop sending; requests in flight still end (each within its bound)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._client.aclose()
        return self.tally

"""The chaos scenarios, each on its own chimera over the sim engine: a fault under load, then
what every request got (load.py), how long until a new request was served again, and chimera's
memory and descriptors before the fault and after the load stopped.

Each takes ``Timing`` (how long to load before and after the fault) so the test suite runs
short versions of the bench's runs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.chaos.harness import HEADER_TIMEOUT_S, Deployment, Resources, full_with_parked, static_one
from bench.chaos.load import LOST, Load, Outcome, Tally, is_envelope


@dataclass(frozen=True)
class Timing:
    warmup_s: float = 2.0  # load before the fault (the baseline is read after it)
    after_s: float = 8.0  # load after the fault (covers detection, restart and recovery)
    settle_s: float = 1.5  # after the load, before resources are read again
    workers: int = 8
    bound_s: float = 30.0  # a request without an end by then is hung


@dataclass
class Result:
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    recovery_s: float | None = None
    longest_wait_s: float | None = None  # the longest answer to a request sent from the fault on
    before: Resources | None = None
    after: Resources | None = None
    notes: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    # how chimera ended the scenario's raw connections (slowloris, fd-exhaustion): "408",
    # "503" (its answer's status), "closed" (no answer), "reset", "open" (still open at the end)
    peer_ends: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    @property
    def lost(self) -> int:
        return sum(self.counts.get(k, 0) for k in LOST)

    def take(self, tally: Tally, fault_at: float | None, killed_at: float | None = None) -> None:
        """``killed_at``: when a SIGKILLed chimera was gone (``Tally.killed_before``)."""
        if killed_at is not None:
            tally.killed_before(killed_at)
        self.counts = tally.counts()
        self.examples = tally.examples()
        if fault_at is not None:
            self.recovery_s = tally.first_ok_after(fault_at)
            self.longest_wait_s = tally.longest_ok_after(fault_at)


Scenario = Callable[[Path, Timing], Awaitable[Result]]


async def _under_load(
    dep: Deployment,
    t: Timing,
    res: Result,
    models: list[str],
    fault: Callable[[], Awaitable[float | None]],
    killed: bool = False,
) -> None:
    """Load → baseline → fault → load → stop → settle → resources; fills ``res``. Recovery is
    counted from the fault, or from the time ``fault`` returns (a restart: the old chimera's exit).
    ``killed``: the fault SIGKILLs chimera and returns when it is gone; resets of requests sent
    before are counted as ``killed``, not lost."""
    load = Load(dep.base, models, t.workers, t.bound_s)
    load.start()
    await asyncio.sleep(t.warmup_s)
    res.before = dep.resources()
    fault_at = time.monotonic()
    fault_at = await fault() or fault_at
    await asyncio.sleep(t.after_s)
    tally = await load.stop()
    await asyncio.sleep(t.settle_s)
    res.after = dep.resources()
    res.take(tally, fault_at, killed_at=fault_at if killed else None)


async def _with(
    folder: Path,
    placements: dict[str, object],
    body: Callable[[Deployment], Awaitable[None]],
    nofile: int | None = None,
) -> None:
    dep = Deployment(folder, placements, nofile=nofile)
    await asyncio.to_thread(dep.up)
    try:
        await body(dep)
    finally:
        await asyncio.to_thread(dep.down)


async def engine_kill9(folder: Path, t: Timing) -> Result:
    res = Result("engine kill -9")

    async def run(dep: Deployment) -> None:
        async def fault() -> None:
            os.kill(dep.engines()["tiny@gpu0"].pid, signal.SIGKILL)

        await _under_load(dep, t, res, ["tiny"], fault)

    await _with(folder, static_one(), run)
    return res


async def engine_sigstop(folder: Path, t: Timing) -> Result:
    res = Result("engine SIGSTOP")

    async def run(dep: Deployment) -> None:
        async def fault() -> None:
            os.killpg(dep.engines()["tiny@gpu0"].pid, signal.SIGSTOP)

        await _under_load(dep, t, res, ["tiny"], fault)

    await _with(folder, static_one(), run)
    return res


async def wake_failure(folder: Path, t: Timing) -> Result:
    """Mode full: the parked model's next wake answers 500 (as a CUDA OOM would); load on it."""
    res = Result("wake failure")

    async def run(dep: Deployment) -> None:
        async def fault() -> None:
            eng = dep.engines()["lazy@gpu1"]
            async with httpx.AsyncClient(trust_env=False) as c:
                r = await c.post(f"{eng.base_url}/sim/fail_next_resume", json={"count": 1}, headers=eng.headers)
                r.raise_for_status()

        # armed before the load, which is what wakes it: no warm-up, recovery from the load's start
        await fault()
        await _under_load(dep, dataclasses.replace(t, warmup_s=0), res, ["lazy", "tiny"], _nothing)
        res.notes.append(
            "recovery and baseline from the load's start (the baseline precedes the woken engine's connections)"
        )

    await _with(folder, full_with_parked(), run)
    return res


async def _nothing() -> float | None:
    return None


async def control_plane_restart(folder: Path, t: Timing, how: str) -> Result:
    """SIGUSR1 (stop, leave the engines) or kill -9 of chimera, then ``up`` again at once."""
    res = Result(f"chimera restart ({how})")

    async def run(dep: Deployment) -> None:
        old_pids = {e.pid for e in dep.engines().values()}

        async def fault() -> float:
            old = dep.chimera
            assert old is not None
            if how == "kill -9":
                old.proc.kill()
            else:
                old.proc.send_signal(signal.SIGUSR1)
            await asyncio.to_thread(old.proc.wait, 30)
            gone = time.monotonic()
            await asyncio.to_thread(dep.up)
            return gone

        await _under_load(dep, t, res, ["tiny"], fault, killed=how == "kill -9")
        new_pids = {e.pid for e in dep.engines().values()}
        res.notes.append("engines re-adopted" if new_pids == old_pids else f"engines {old_pids} -> {new_pids}")

    await _with(folder, static_one(), run)
    return res


async def slowloris(folder: Path, t: Timing, clients: int = 200) -> Result:
    """``clients`` connections that send a request head one byte a second, beside the load:
    chimera must cut each with a 408 after its header timeout (``HEADER_TIMEOUT_S``)."""
    res = Result("slowloris clients")

    async def run(dep: Deployment) -> None:
        socks: list[socket.socket] = []
        ends: dict[int, str] = {}

        async def fault() -> None:
            for _ in range(clients):
                s = socket.create_connection(("127.0.0.1", dep.port), timeout=2)
                s.setblocking(False)
                s.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                socks.append(s)

        async def drip() -> None:
            while True:
                await asyncio.sleep(1)
                for i, s in enumerate(socks):
                    if i not in ends:
                        try:
                            s.send(b"X")
                        except OSError:
                            pass
                        ends.update({i: e} if (e := _peer_end(s)) else {})

        dripping = asyncio.create_task(drip())
        try:
            await _under_load(dep, t, res, ["tiny"], fault)
        finally:
            dripping.cancel()
            for i, s in enumerate(socks):
                ends.setdefault(i, _peer_end(s) or "open")
                s.close()
        res.peer_ends = dict(sorted(Counter(ends.values()).items()))
        cut = sum(n for e, n in res.peer_ends.items() if e != "open")
        res.notes.append(
            f"{cut}/{clients} slow connections cut by chimera while they dripped "
            f"(header timeout {HEADER_TIMEOUT_S} s): {res.peer_ends}"
        )
        await asyncio.sleep(t.settle_s)
        res.after = dep.resources()  # after the slow clients left

    await _with(folder, static_one(), run)
    return res


def _peer_end(s: socket.socket) -> str | None:
    """How chimera ended a raw connection: ``"408"`` (its answer's status), ``"closed"``
    without an answer, ``"reset"``; None while it is still open."""
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return "reset"
    if data.startswith(b"HTTP/1."):
        return data.split(b" ", 2)[1].decode(errors="replace")
    return "closed" if data == b"" else None


BAD_INPUTS: list[tuple[str, dict[str, str], bytes]] = [
    (
        "body over the limit (40 MiB)",
        {"content-type": "application/json"},
        b'{"model": "tiny", "x": "' + b"a" * (40 << 20) + b'"}',
    ),
    ("header of 100 KiB", {"x-big": "a" * (100 << 10)}, b'{"model": "tiny", "messages": []}'),
    ("JSON nested 5000 levels", {}, b'{"model": "tiny", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("not JSON", {}, b"{nope"),
    ('"stream": 1', {}, b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": 1}'),
    ("unknown model", {}, b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}'),
]


async def oversized_input(folder: Path, t: Timing, rounds: int = 3) -> Result:
    """Malformed and oversized requests beside the load: each must get a 4xx envelope."""
    res = Result("oversized/bad input")

    async def run(dep: Deployment) -> None:
        bad = Tally()

        async def fault() -> None:
            async with httpx.AsyncClient(trust_env=False, timeout=t.bound_s) as c:
                for _ in range(rounds):
                    for name, headers, content in BAD_INPUTS:
                        bad.outcomes.append(await _raw(c, f"{dep.base}/v1/chat/completions", headers, content, name))

        await _under_load(dep, t, res, ["tiny"], fault)
        res.notes.append(f"bad requests: {bad.counts()} {bad.examples(('reset', 'hung'))}")
        for k, v in bad.counts().items():
            res.counts[k] = res.counts.get(k, 0) + v

    await _with(folder, static_one(), run)
    return res


async def _raw(c: httpx.AsyncClient, url: str, headers: dict[str, str], content: bytes, name: str) -> Outcome:
    t0 = time.monotonic()
    try:
        r = await c.post(url, headers=headers, content=content)
        ok = 400 <= r.status_code < 500 and is_envelope(r.text)
        return Outcome(t0, time.monotonic(), "error" if ok else "reset", r.status_code, f"{name}: {r.text[:100]}")
    except httpx.TimeoutException:
        return Outcome(t0, time.monotonic(), "hung", 0, name)
    except httpx.TransportError as exc:
        return Outcome(t0, time.monotonic(), "reset", 0, f"{name}: {type(exc).__name__}")


async def client_disconnects(folder: Path, t: Timing, clients: int = 40) -> Result:
    """Clients that leave: streams closed after their first frame, whole answers abandoned
    after 0.2 s; then the engine must run nothing and chimera's descriptors come back."""
    res = Result("client disconnects")

    async def run(dep: Deployment) -> None:
        left = Tally()

        async def leave(i: int) -> None:
            t0 = time.monotonic()
            stream = i % 2 == 0
            payload = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "go"}],
                # long, and within tiny-llama's 2048-token context (4000 was refused at once)
                "max_tokens": 1500,
                "ignore_eos": True,
                "stream": stream,
            }
            async with httpx.AsyncClient(trust_env=False, timeout=t.bound_s) as c:
                if stream:
                    async with c.stream("POST", f"{dep.base}/v1/chat/completions", json=payload) as r:
                        async for _ in r.aiter_lines():
                            break
                else:
                    task = asyncio.create_task(c.post(f"{dep.base}/v1/chat/completions", json=payload))
                    await asyncio.sleep(0.2)
                    task.cancel()  # the client goes away: its connection closes
            left.outcomes.append(Outcome(t0, time.monotonic(), "left", 0, "stream" if stream else "whole"))

        async def fault() -> None:
            await asyncio.gather(*(leave(i) for i in range(clients)))

        await _under_load(dep, t, res, ["tiny"], fault)
        eng = dep.engines()["tiny@gpu0"]
        running = await _engine_running(eng.base_url)
        res.notes.append(f"engine running/queued after the load: {running}")
        res.counts["left"] = len(left.outcomes)

    await _with(folder, static_one(), run)
    return res


async def _engine_running(base_url: str) -> float:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
        text = (await c.get(f"{base_url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("sglang:num_running_reqs", "sglang:num_queue_reqs"))
    )


FD_LIMIT = 256  # chimera's RLIMIT_NOFILE: a budget of (256 - 128) / 2 = 64 client connections


# fd-exhaustion: the idle clients leave this long before the load ends (at most half of it),
# so that the load must be served again once they are gone (the scenario's recovery)
IDLE_LEAVE_BEFORE_END_S = 1.5


async def fd_exhaustion(folder: Path, t: Timing, idle: int = 400) -> Result:
    """chimera under ``RLIMIT_NOFILE`` = ``FD_LIMIT`` and ``idle`` connections that send
    nothing (more than its descriptors), reopened as chimera closes them, beside the load:
    the load's requests must be answered or get a 503 envelope, never be refused or hang.
    The idle clients leave ``IDLE_LEAVE_BEFORE_END_S`` before the load ends: while they hold
    every connection chimera accepts, a load request may get nothing but 503s (a loaded host),
    so recovery is the first answer from the fault on, by the time they left at the latest."""
    res = Result("descriptor exhaustion")
    hold_s = max(t.after_s - IDLE_LEAVE_BEFORE_END_S, t.after_s / 2)

    async def run(dep: Deployment) -> None:
        socks: list[socket.socket] = []
        ends: Counter[str] = Counter()
        stop = asyncio.Event()

        async def hold_open() -> None:
            leave_at = time.monotonic() + hold_s
            while not stop.is_set() and time.monotonic() < leave_at:
                for s in list(socks):
                    if (e := _peer_end(s)) is not None:
                        ends[e] += 1
                        s.close()
                        socks.remove(s)
                while len(socks) < idle:
                    try:
                        s = socket.create_connection(("127.0.0.1", dep.port), timeout=1)
                    except OSError as exc:
                        ends[f"connect {type(exc).__name__}"] += 1
                        break
                    s.setblocking(False)
                    socks.append(s)
                await asyncio.sleep(0.2)
            for s in socks:  # the idle clients leave; the load goes on without them
                if (e := _peer_end(s)) is not None:
                    ends[e] += 1
                s.close()
            socks.clear()

        holding: asyncio.Task[None] | None = None

        async def fault() -> None:
            nonlocal holding
            holding = asyncio.create_task(hold_open())

        try:
            await _under_load(dep, t, res, ["tiny"], fault)
        finally:
            stop.set()
            if holding is not None:
                await holding  # it closes its sockets as it leaves
        res.peer_ends = dict(sorted(ends.items()))
        res.notes.append(
            f"RLIMIT_NOFILE {FD_LIMIT}; {idle} idle connections kept open for {hold_s:g} s (reopened as "
            f"chimera closed them): how they ended {res.peer_ends}; a clean error of the load: "
            f"{res.examples.get('error', 'none')[:90]}"
        )
        await asyncio.sleep(t.settle_s)
        res.after = dep.resources()  # after the idle clients left

    await _with(folder, static_one(), run, nofile=FD_LIMIT)
    return res


SCENARIOS: dict[str, Scenario] = {
    "engine-kill": engine_kill9,
    "engine-stop": engine_sigstop,
    "wake-failure": wake_failure,
    "slowloris": slowloris,
    "fd-exhaustion": fd_exhaustion,
    "oversized": oversized_input,
    "restart-usr1": lambda f, t: control_plane_restart(f, t, "SIGUSR1"),
    "restart-kill": lambda f, t: control_plane_restart(f, t, "kill -9"),
    "disconnects": client_disconnects,
}

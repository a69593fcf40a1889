"""``python -m bench.live.control_cost``: the control loop's CPU per proxied request.

Every request through chimera costs the control loop an ``acquire`` and a ``release`` of an
awake instance, whichever proxy process serves it (``up --proxies N``: the workers' reach the
loop over the channel, orchestrator/dataplane/). With N proxies that work stays in the one
control-plane process, so it bounds the data plane (docs/multi-node.md). This measures it in one
process, with no engine: a control loop over a deployment of one awake model (no-op effects),
``--requests`` acquire+release pairs from C concurrent requesters, directly (the primary
proxy's path), through a real channel on a Unix socket (a worker's path, both ends in this
process), and through the channel with the worker's end in a child process (``control side``:
what the control-plane process pays per request a worker serves, the number that bounds N
proxies). CPU seconds of the (control-plane) process per request, by ``time.process_time``.

    python -m bench.live.control_cost --out runs/control-cost
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import write_json
from orchestrator.config import InstanceSpec, ModelSpec, parse_config
from orchestrator.control.events import Started
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.control.router import Router
from orchestrator.dataplane.channel import Channel
from orchestrator.dataplane.remote import RemoteRouter
from orchestrator.deployment import derive
from orchestrator.types import Endpoint, InstanceView, ModelView

CONFIG = parse_config(
    {
        "mode": "static",
        "host": {"gpus": 1},
        "models": [{"name": "m", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}],
    }
)
INSTANCE = "m@gpu0"


class NoEffects:
    """The loop's Effects doing nothing: only the loop's own work is measured."""

    def start(self, spec: InstanceSpec) -> None: ...
    def park(self, spec: InstanceSpec, reason: str) -> None: ...
    def wake(self, spec: InstanceSpec) -> None: ...
    def probe(self, spec: InstanceSpec, timeout_s: float) -> None: ...
    def kill(self, spec: InstanceSpec, reason: str) -> None: ...
    def state_changed(self, view: InstanceView) -> None: ...
    def observe(self, kind: str, model: str, value: float, label: str = "") -> None: ...
    async def stop_all(self) -> None: ...


class Counted:
    """The control loop as the channel's Router, counting the releases that reach it, so that a
    run's CPU includes every release it sent (a worker's are frames that arrive later)."""

    def __init__(self, loop: ControlLoop) -> None:
        self.loop = loop
        self.released = 0

    def resolve(self, name: str) -> ModelSpec | None:
        return self.loop.resolve(name)

    def known_names(self) -> list[str]:
        return self.loop.known_names()

    def models(self) -> list[ModelView]:
        return self.loop.models()

    def instances(self) -> list[InstanceView]:
        return self.loop.instances()

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        return await self.loop.acquire(model, timeout_s)

    def release(self, endpoint: Endpoint) -> None:
        self.released += 1
        self.loop.release(endpoint)

    def suspect(self, instance_id: str, detail: str) -> None:
        self.loop.suspect(instance_id, detail)


async def _drive(router: Router, per: int, concurrency: int) -> None:
    """``concurrency`` requesters, each ``per`` acquire+release pairs of the model."""
    spec = router.resolve("m")
    assert spec is not None

    async def requester() -> None:
        for _ in range(per):
            router.release(await router.acquire(spec, 10.0))

    await asyncio.gather(*(requester() for _ in range(concurrency)))


async def _all_released(counted: Counted, expected: int) -> None:
    """Until ``expected`` releases have reached the loop (a worker's are frames that arrive
    later; the loop applies them in order after)."""
    for _ in range(10_000):
        if counted.released >= expected:
            return
        await asyncio.sleep(0)
    raise RuntimeError(f"{expected - counted.released} releases never reached the loop")


async def _requests(router: Router, counted: Counted, total: int, concurrency: int) -> float:
    """CPU seconds per acquire+release of ``total`` requests from ``concurrency`` requesters,
    until their releases have reached the loop."""
    per = max(1, total // concurrency)
    expected = counted.released + per * concurrency
    t = time.process_time()
    await _drive(router, per, concurrency)
    await _all_released(counted, expected)
    return (time.process_time() - t) / (per * concurrency)


async def _worker_side(sock: Path, counted: Counted, total: int, concurrency: int) -> float:
    """CPU seconds of this (the control-plane) process per acquire+release of ``total``
    requests that ``concurrency`` requesters in a child process send over the channel."""
    per = max(1, total // concurrency)
    expected = counted.released + per * concurrency
    t = time.process_time()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.live.control_cost",
        "--worker-of",
        str(sock),
        "--requests",
        str(per * concurrency),
        "--levels",
        str(concurrency),
    )
    if await child.wait() != 0:
        raise RuntimeError(f"the worker process failed (exit code {child.returncode})")
    await _all_released(counted, expected)
    return (time.process_time() - t) / (per * concurrency)


async def _worker(sock: Path, total: int, concurrency: int) -> None:
    """The child of ``_worker_side``: a worker's RemoteRouter and its requesters."""
    remote = RemoteRouter(CONFIG)
    await remote.connect(sock)
    try:
        await _drive(remote, max(1, total // concurrency), concurrency)
        await asyncio.sleep(0.05)  # the last release frames leave before the socket closes
    finally:
        await remote.aclose()


async def measure(total: int, levels: list[int]) -> list[dict[str, Any]]:
    loop = ControlLoop(derive(CONFIG), NoEffects(), clock=time.monotonic)
    task = asyncio.create_task(loop.run())
    loop.post(Started(INSTANCE, Endpoint(INSTANCE, "http://127.0.0.1:1", "m")))
    counted = Counted(loop)
    with tempfile.TemporaryDirectory() as d:
        channel = Channel(counted)
        sock = Path(d) / "control.sock"
        await channel.serve(sock)
        remote = RemoteRouter(CONFIG)
        await remote.connect(sock)
        rows = []
        try:
            for c in levels:
                direct = await _requests(counted, counted, total, c)
                channelled = await _requests(remote, counted, total, c)
                control = await _worker_side(sock, counted, total, c)
                rows.append(
                    {
                        "concurrency": c,
                        "direct_us": direct * 1e6,
                        "channel_us": channelled * 1e6,
                        "control_side_us": control * 1e6,
                    }
                )
        finally:
            await remote.aclose()
            await channel.close()
            await cancel_and_wait(task)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.live.control_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="acquire+release pairs per level (default %(default)s)")
    p.add_argument("--levels", default="1,16,64", help="concurrent requesters, comma-separated (default %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="folder for results.json")
    p.add_argument("--worker-of", type=Path, default=None, help=argparse.SUPPRESS)  # the child's side
    args = p.parse_args(argv)
    try:
        levels = [int(x) for x in args.levels.split(",")]
    except ValueError:
        p.error(f"--levels: integers separated by commas, not {args.levels!r}")
    if args.requests < 1 or any(c < 1 for c in levels):
        p.error("--requests and --levels must be positive")
    if args.worker_of is not None:
        asyncio.run(_worker(args.worker_of, args.requests, levels[0]))
        return 0
    rows = asyncio.run(measure(args.requests, levels))
    for r in rows:
        print(
            f"concurrency {r['concurrency']:>4}: {r['direct_us']:6.1f} us of CPU per request directly, "
            f"{r['channel_us']:6.1f} us through the channel (both ends), "
            f"{r['control_side_us']:6.1f} us on the control side (the worker in another process)"
        )
    if args.out is not None:
        write_json(args.out / "results.json", {"requests": args.requests, "rows": rows})
        print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

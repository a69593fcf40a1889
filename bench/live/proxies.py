"""``python -m bench.live.proxies``: requests/s through 1 vs N proxy processes (``up --proxies``).

SIMULATED engines: chimera runs one tiny model with ``--engines`` instances on the sim engine at
``--sim-speed 0`` (no modelled compute), mode static, so what limits the rate is the proxy
processes' CPU (and the client's, and the engines' event loops). Closed-loop load from
``--clients`` client processes (httpx, keep-alive connections, which SO_REUSEPORT spreads over
the proxies), non-streamed /v1/completions of 4 tokens, at each concurrency in ``--levels`` for
``--seconds``. Per run: requests/s, end-to-end p50/p99 and CPU cores by role (the control-plane
process, which also proxies; the workers; the engines; the clients), each as a total and its
busiest process (a process near 1.0 core is the bottleneck: Python proxies on one core).
"Equal added latency": for each proxy count, the highest rate whose p50 stays within
``--latency-ms``; the ratio of those is the scale-out.

``--primary-shares`` runs each N > 1 once per share of the connections the primary takes
(``up --primary-share``; ``even``: the kernel's 1/N): the primary also runs the control loop and
every worker's channel, so it binds first.

The issue's target (>= 3x with 4 processes) is for a 16-core host; on fewer cores client,
proxies and engines compete for the same CPUs and the ratio says so. The GPU host's command:

    python -m bench.live.proxies --proxies 1,4 --primary-shares even,0.15,0 --engines 4 --clients 6 \\
        --levels 32,64,128,256 --seconds 10 --out bench/results/proxies-h200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bench.live.process import start_chimera
from bench.report import write_json

EVEN = "even"  # the kernel's spread of connections over the proxy processes
LABEL = "SIMULATED (sim engine at --sim-speed 0: no modelled compute)"


def placements(engines: int) -> dict[str, Any]:
    return {
        "mode": "static",
        "host": {"gpus": engines},
        "models": [{"name": "tiny", "model_path": "tiny-llama", "placements": [{"gpus": [g]} for g in range(engines)]}],
    }


def _client(base: str, streams: int, seconds: float) -> tuple[list[float], float]:
    """One client process: ``streams`` closed-loop requesters for ``seconds``; the latencies of
    the requests that succeeded (a failure is counted as -1), and the CPU seconds it used."""

    async def run() -> list[float]:
        out: list[float] = []
        limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, trust_env=False) as c:
            end = time.perf_counter() + seconds

            async def one() -> None:
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    try:
                        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
                        out.append(time.perf_counter() - t if r.status_code == 200 else -1.0)
                    except httpx.HTTPError:
                        out.append(-1.0)

            await asyncio.gather(*(one() for _ in range(streams)))
        return out

    t = time.process_time()
    latencies = asyncio.run(run())
    return latencies, time.process_time() - t


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) so far of each process still alive."""
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def role(p: psutil.Process, control_pid: int) -> str:
    if p.pid == control_pid:
        return "control"
    try:
        return "workers" if "orchestrator.dataplane.worker" in " ".join(p.cmdline()) else "engines"
    except psutil.Error:
        return "engines"


def cores_by_role(
    before: dict[int, float], after: dict[int, float], roles: dict[int, str], wall: float
) -> dict[str, float]:
    """``<role>_cpu_cores`` (all its processes) and ``<role>_busiest_cores`` (its busiest)."""
    out: dict[str, float] = {}
    for r in ("control", "workers", "engines"):
        used = [(after[pid] - before.get(pid, 0.0)) / wall for pid, rr in roles.items() if rr == r and pid in after]
        out[f"{r}_cpu_cores"] = sum(used)
        out[f"{r}_busiest_cores"] = max(used, default=0.0)
    return out


def level(base: str, clients: int, streams: int, seconds: float, procs: list[psutil.Process]) -> dict[str, Any]:
    per = max(1, streams // clients)
    roles = {p.pid: role(p, procs[0].pid) for p in procs}
    cpu0, t0 = _cpu(procs), time.perf_counter()
    with ProcessPoolExecutor(clients) as pool:
        results = list(pool.map(_client, [base] * clients, [per] * clients, [seconds] * clients))
    wall = time.perf_counter() - t0
    cpu1 = _cpu(procs)
    parts = [r[0] for r in results]
    lat = sorted(x for part in parts for x in part if x >= 0)
    failed = sum(1 for part in parts for x in part if x < 0)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {
        "streams": per * clients,
        "requests": len(lat),
        "failed": failed,
        "rps": len(lat) / seconds,
        "p50_ms": 1e3 * q[49],
        "p99_ms": 1e3 * q[98],
        "chimera_cpu_cores": sum(cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1) / wall,  # every process below
        **cores_by_role(cpu0, cpu1, roles, wall),
        "clients_cpu_cores": sum(r[1] for r in results) / wall,
        "clients_busiest_cores": max(r[1] for r in results) / wall,
    }


def run(n: int, share: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """One chimera with ``n`` proxy processes, the primary taking ``share`` of the connections
    (``up --primary-share``: ``even``, the kernel's spread, or a number)."""
    pl = work / "placements.yaml"
    pl.write_text(yaml.safe_dump(placements(args.engines)))
    flags = ("--proxies", str(n), "--log-level", "warning", *(() if n == 1 else ("--primary-share", share)))
    ch = start_chimera(pl, work / f"proxies-{n}-{share}", env={"CHIMERA_SIM_SPEED": "0"}, args=flags)
    try:
        deadline = time.monotonic() + 30
        procs: list[psutil.Process] = []
        while time.monotonic() < deadline:  # the workers import, then listen
            procs = [psutil.Process(ch.proc.pid), *psutil.Process(ch.proc.pid).children(recursive=True)]
            workers = [p for p in procs if "orchestrator.dataplane.worker" in " ".join(p.cmdline())]
            if len(workers) == n - 1 and all(p.net_connections("tcp") for p in workers):
                break
            time.sleep(0.2)
        time.sleep(1.0)
        level(ch.base, args.clients, min(args.levels), 1.0, procs)  # warm-up: connections, caches
        out = []
        for c in args.levels:
            r = {"proxies": n, "primary_share": share, **level(ch.base, args.clients, c, args.seconds, procs)}
            name = f"proxies={n}" + ("" if share == EVEN else f" share={share}")
            print(
                f"{name} streams={r['streams']:4d}: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                f"p99 {r['p99_ms']:6.1f} ms  failed {r['failed']}  CPU cores: control {r['control_cpu_cores']:.2f}, "
                f"workers {r['workers_cpu_cores']:.2f} (busiest {r['workers_busiest_cores']:.2f}), "
                f"engines {r['engines_cpu_cores']:.2f} (busiest {r['engines_busiest_cores']:.2f}), "
                f"clients {r['clients_cpu_cores']:.2f} (busiest {r['clients_busiest_cores']:.2f})",
                flush=True,
            )
            out.append(r)
        return out
    finally:
        ch.stop()


def at_latency(rows: list[dict[str, Any]], latency_ms: float) -> float:
    """The best rate among the levels whose p50 is within ``latency_ms`` (0 when none is)."""
    return max((r["rps"] for r in rows if r["p50_ms"] <= latency_ms and r["failed"] == 0), default=0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.live.proxies", description=__doc__.split("\n\n")[0])
    p.add_argument("--proxies", default="1,4", help="proxy process counts to compare (default: %(default)s)")
    p.add_argument("--engines", type=int, default=4, help="sim engine instances of the model (default: %(default)s)")
    p.add_argument("--clients", type=int, default=4, help="client processes (default: %(default)s)")
    p.add_argument("--levels", default="16,64,128", help="concurrent streams per run (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=8.0, help="(default: %(default)s)")
    p.add_argument(
        "--latency-ms", type=float, default=50.0, help="the p50 bound of 'equal latency' (default: %(default)s)"
    )
    p.add_argument(
        "--primary-shares",
        default=EVEN,
        help="for N > 1: the primary's shares of the connections to run, each a chimera of its own "
        "(`even`: the kernel's 1/N; a number: up --primary-share), e.g. even,0.15,0 (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = p.parse_args(argv)
    shares = args.primary_shares.split(",")
    args.levels = [int(x) for x in args.levels.split(",")]
    counts = [int(x) for x in args.proxies.split(",")]
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        cpu = f"{name}, {os.cpu_count()} logical CPUs" if name else cpu
    except OSError:
        pass
    print(f"{LABEL}; CPU: {cpu}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chimera-proxies-") as tmp:
        for n in counts:
            for share in shares if n > 1 else [EVEN]:
                rows += run(n, share, args, Path(tmp))
    runs = list(dict.fromkeys((r["proxies"], r["primary_share"]) for r in rows))
    best = {
        f"{n}" if s == EVEN else f"{n} share={s}": at_latency(
            [r for r in rows if (r["proxies"], r["primary_share"]) == (n, s)], args.latency_ms
        )
        for n, s in runs
    }
    base = next(iter(best.values()))
    for name, rps in best.items():
        ratio = rps / base if base else float("nan")
        print(f"{name} proxies: {rps:.0f} req/s at p50 <= {args.latency_ms:g} ms ({ratio:.2f}x of {counts[0]})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(
            args.out / "results.json",
            {
                "label": LABEL,
                "cpu": cpu,
                "args": {k: v for k, v in vars(args).items() if k != "out"},
                "rows": rows,
                "at_latency": best,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

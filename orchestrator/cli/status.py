"""``chimera-orch status [URL]``: the dashboard's state table in the terminal, ``kubectl get``
style, from a running chimera's ``GET /dashboard/state`` (the same JSON the page draws, built by
orchestrator/dashboard/state.py). ``--watch`` redraws it every ``--interval`` seconds (rich
Live) until Ctrl-C. Exit code 1, with one line saying why, when nothing answers at URL or what
answers is not chimera."""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.cli.args import DEFAULT_URL
from orchestrator.dashboard.routes import STATE_PATH

__all__ = ["DEFAULT_URL", "run"]

TIMEOUT_S = 5.0
GIB = 1 << 30
STYLES = {"awake": "green", "draining": "yellow", "parked": "dim", "failed": "red", "stopped": "dim"}


class StatusError(Exception):
    """Nothing usable answered at the URL; the message says what happened."""


def run(args: argparse.Namespace, console: Console | None = None, transport: httpx.BaseTransport | None = None) -> int:
    con = console or Console()
    url = args.url.rstrip("/") + STATE_PATH
    with httpx.Client(transport=transport, timeout=TIMEOUT_S, trust_env=False) as client:
        try:
            if not args.watch:
                con.print(render(fetch(client, url)))
                return 0
            with Live(render(fetch(client, url)), console=con, auto_refresh=False) as live:
                while True:
                    time.sleep(max(0.1, args.interval))
                    live.update(render(fetch(client, url)), refresh=True)
        except StatusError as exc:
            Console(stderr=True).print(f"[bold red]chimera-orch status:[/] {exc}", highlight=False)
            return 1
        except KeyboardInterrupt:
            return 0


def fetch(client: httpx.Client, url: str) -> dict[str, Any]:
    try:
        r = client.get(url)
    except httpx.TransportError as exc:
        raise StatusError(
            f"nothing answers at {url} ({type(exc).__name__}: {exc or 'no detail'}); is chimera-orch up running there?"
        ) from exc
    if r.status_code != 200:
        raise StatusError(f"{url} answered HTTP {r.status_code}: not a chimera-orch with a dashboard")
    try:
        state = r.json()
    except ValueError as exc:
        raise StatusError(f"{url} did not answer JSON: not a chimera-orch with a dashboard") from exc
    if not isinstance(state, dict) or not {"models", "gpus", "now"} <= state.keys():
        raise StatusError(f"{url} answered JSON without models and gpus: not a chimera-orch dashboard")
    return state


def render(state: dict[str, Any]) -> Group:
    """The models table, then the GPUs table (both plain columns, as ``kubectl get`` prints)."""
    now = float(state["now"])
    models = Table(box=None, pad_edge=False, header_style="bold")
    for col in (
        "MODEL",
        "STATE",
        "INSTANCES",
        "REQUESTS",
        "IN-FLIGHT",
        "HELD",
        "SHED",
        "TTFT P50/P99 (SLO)",
        "TPOT P50/P99 (SLO)",
        "SLO MET",
        "GPU-S",
    ):
        models.add_column(col, justify="right" if col in ("REQUESTS", "IN-FLIGHT", "HELD", "SHED") else "left")
    models.add_column("WAKES (S)")
    models.add_column("PARKS (S)")
    models.add_column("AGE", justify="right")
    for m in state["models"]:
        ttft, tpot, met = m["ttft"], m["tpot"], m["attainment"]["joint"]
        insts = ",".join(f"{i['id']}={_instance_state(i)}" for i in m["instances"])
        since = max((tl[-1][0] for tl in m["timeline"].values() if tl), default=None)
        models.add_row(
            m["name"],
            Text(m["state"], style=STYLES.get(m["state"], "yellow")),
            insts,
            str(m["requests"]),
            str(m["in_flight"]),
            str(m["held"]),
            str(m["shed"]),
            f"{_s(ttft['p50'])}/{_s(ttft['p99'])} ({_s(ttft['slo'])})" if ttft["count"] else f"-/- ({_s(ttft['slo'])})",
            f"{_s(tpot['p50'])}/{_s(tpot['p99'])} ({_s(tpot['slo'])})" if tpot["count"] else f"-/- ({_s(tpot['slo'])})",
            f"{100 * met:.0f}%" if met is not None else "-",
            f"{m['gpu_seconds']:.1f}",
            " ".join(f"{x:.2f}" for x in m["wakes"]) or "-",
            " ".join(f"{x:.2f}" for x in m["parks"]) or "-",
            _age(now - since) if since is not None else "-",
        )
    gpus = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("GPU", "USED GIB", "FREE GIB", "HOST GIB", "HELD BY"):
        gpus.add_column(col, justify="left" if col in ("GPU", "HELD BY") else "right")
    for g in state["gpus"]:
        held: dict[str, int] = {}
        for _inst, model, _kind, b in g["parts"]:
            held[model] = held.get(model, 0) + b
        gpus.add_row(
            str(g["gpu"]),
            f"{(g['capacity'] - g['free']) / GIB:.1f}",
            f"{g['free'] / GIB:.1f}",
            f"{sum(p[3] for p in g.get('host', [])) / GIB:.1f}",  # its ranks' weight backups in host RAM
            " ".join(f"{m}:{b / GIB:.1f}" for m, b in sorted(held.items(), key=lambda kv: -kv[1])) or "-",
        )
    host = state.get("host", {}).get("held", 0)  # absent from an older chimera's state
    head = Text(
        f"mode {state.get('mode', '?')} · {len(state['models'])} models on {len(state['gpus'])} GPUs"
        f" · {host / GIB:.1f} GiB of host RAM in weight backups"
    )
    return Group(head, models, Text(""), gpus)


def _instance_state(i: dict[str, Any]) -> str:
    """``awake``, or ``draining(migration)`` while a plan drains it (the reason it parks for)."""
    draining = i.get("draining")  # absent from an older chimera's state
    return f"draining({draining})" if draining else str(i["state"])


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def _age(s: float) -> str:
    """kubectl's AGE: 45s, 12m, 3h."""
    s = max(0.0, s)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h"

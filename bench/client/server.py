"""What the benchmark asks chimera besides generation: the models (``GET /v1/models``), whether
the engines are simulated, and a timeline of instance states from ``GET /metrics``.

Engine label. chimera's API does not say which engine serves (an engine's /server_info is not
reachable through the proxy), so the label comes from, in order: ``--engine-label``; the engine
the runner started chimera with; else a probe: a batched ``/generate`` (``"text": [..]``,
one new token) to an awake model. The sim refuses it with a message that says "SIMULATED"
(simsglang/api.py); stock SGLang serves it (200).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SIMULATED = "simulated"


@dataclass(frozen=True)
class ServedModel:
    name: str  # the canonical name (``root``)
    state: str


async def served_models(client: httpx.AsyncClient, base: str) -> list[ServedModel]:
    """Canonical models in the proxy's order (aliases folded into their root)."""
    r = await client.get(base + "/v1/models")
    r.raise_for_status()
    out: dict[str, ServedModel] = {}
    for m in r.json()["data"]:
        root = m.get("root") or m["id"]
        out.setdefault(root, ServedModel(root, str(m.get("state", "unknown"))))
    return list(out.values())


async def probe_engine(client: httpx.AsyncClient, base: str, models: list[ServedModel]) -> str:
    """ "simulated", "sglang" or "unknown" (see the module doc)."""
    awake = [m for m in models if m.state == "awake"]
    if not awake:
        return "unknown"
    body = {"model": awake[0].name, "text": ["probe", "probe"], "sampling_params": {"max_new_tokens": 1}}
    try:
        r = await client.post(base + "/generate", json=body, timeout=60.0)
    except httpx.HTTPError:
        return "unknown"
    if "SIMULATED" in r.text:
        return SIMULATED
    return "sglang" if r.status_code == 200 else "unknown"


def engine_info(label: str, how: str) -> dict[str, Any]:
    simulated = label == SIMULATED or label.startswith("sim")
    return {
        "label": SIMULATED if simulated else label,
        "simulated": simulated,
        "how": how,
        "note": ("SIMULATED: latencies come from the sim engine's H100 model running on this CPU, not from a GPU")
        if simulated
        else "",
    }


_CHIMERA_LINES = ("chimera_", "# HELP chimera_", "# TYPE chimera_")


def chimera_families(text: str) -> Iterator[Metric]:
    """chimera's own families of a /metrics text, parsed without the engines' ``sglang:*``
    families chimera re-exposes beside them (thousands of lines with six engines: parsing
    them took a third of a second, and a poller that parsed them on the load generator's event
    loop held every stream it was timing meanwhile)."""
    return text_string_to_metric_families("\n".join(ln for ln in text.splitlines() if ln.startswith(_CHIMERA_LINES)))


def parse_metrics(text: str) -> dict[str, Any]:
    """One /metrics snapshot: the current state of each instance, plus every other chimera
    gauge (memory ledgers and KV limits when the orchestrator exports them)."""
    states: dict[str, dict[str, str]] = {}
    gauges: dict[str, float] = {}
    for fam in chimera_families(text):
        if fam.type != "gauge":
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            if fam.name == "chimera_instance_state":
                if s.value == 1:
                    states[s.labels["server"]] = {"model": s.labels.get("model", ""), "state": s.labels["state"]}
            else:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                gauges[f"{s.name}{{{labels}}}"] = s.value
    return {"states": states, "gauges": gauges}


@dataclass
class MetricsPoller:
    """Polls /metrics every ``interval_s`` while running; snapshots carry ``t_s`` (seconds from
    ``t0``). A failed poll is recorded, not raised: the benchmark goes on."""

    client: httpx.AsyncClient
    base: str
    t0: float
    interval_s: float = 0.5
    now: Callable[[], float] = time.perf_counter
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0

    async def run(self) -> None:
        while True:
            try:
                r = await self.client.get(self.base + "/metrics", timeout=10.0)
                snap = parse_metrics(r.text)
                snap["t_s"] = self.now() - self.t0
                self.snapshots.append(snap)
            except (httpx.HTTPError, ValueError):
                self.errors += 1
            await asyncio.sleep(self.interval_s)

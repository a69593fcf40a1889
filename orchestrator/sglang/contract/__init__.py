"""SGLang's serving contract (CLI flags, HTTP routes, Prometheus metrics) per supported release.

The JSON files next to this module are generated from the released wheels by ``extract.py``
(stdlib only, never imports SGLang) and checked in, so the contract tests run on any machine:

    pip download --no-deps --only-binary=:all: sglang==0.5.23 -d /tmp/sgl
    python -m orchestrator.sglang.contract.extract /tmp/sgl/sglang-0.5.23-*.whl

The extracted flag lists equal the option strings of SGLang's real argparse parser
(``ServerArgs.add_cli_args``) for both versions, and the routes equal ``app.routes`` of
``http_server.py`` apart from FastAPI's own docs pages and ``/metrics``, which SGLang mounts at
start-up (checked once by importing SGLang with its GPU-only dependencies stubbed out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

HERE = Path(__file__).parent
SUPPORTED_VERSIONS = ("0.5.17", "0.5.23")

MetricType = Literal["counter", "gauge", "histogram", "summary", "info", "stateset"]

# Samples prometheus_client exposes per family type (multiprocess mode, as SGLang runs it:
# no ``_created`` samples).
_SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
}


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str]  # "*" = a mount that answers any method (SGLang's /metrics)
    only_if: str | None = None  # served only when this condition of SGLang's source holds
    env: str | None = None  # the environment variable that can move this route

    def serves(self, method: str) -> bool:
        return "*" in self.methods or method.upper() in self.methods


@dataclass(frozen=True)
class Metric:
    name: str  # family name, as prometheus_client registers it (counters without "_total")
    type: MetricType

    @property
    def samples(self) -> tuple[str, ...]:
        """Sample names on the wire, e.g. ``x_total`` for counter ``x``."""
        return tuple(self.name + s for s in _SAMPLE_SUFFIXES[self.type])


@dataclass(frozen=True)
class Contract:
    version: str
    wheel: str
    sha256: str
    flags: frozenset[str]
    deprecated_flags: frozenset[str]
    routes: tuple[Route, ...]
    metrics: tuple[Metric, ...]

    def route(self, path: str) -> Route | None:
        return next((r for r in self.routes if r.path == path), None)

    def serves(self, path: str, method: str) -> bool:
        """True if a default-configured server answers ``method path`` (conditional routes,
        like those behind an environment variable, do not count)."""
        r = self.route(path)
        return r is not None and r.only_if is None and r.serves(method)

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


class ContractError(ValueError):
    """No contract file for a version, or a malformed one (fatal: regenerate with extract.py)."""


@cache
def load_contract(version: str) -> Contract:
    path = HERE / f"sglang-{version}.json"
    if not path.is_file():
        raise ContractError(f"no SGLang contract for version {version!r} (supported: {', '.join(SUPPORTED_VERSIONS)})")
    try:
        raw = json.loads(path.read_text())
        return Contract(
            version=raw["version"],
            wheel=raw["wheel"],
            sha256=raw["sha256"],
            flags=frozenset(raw["flags"]),
            deprecated_flags=frozenset(raw["deprecated_flags"]),
            routes=tuple(
                Route(r["path"], frozenset(r["methods"]), r.get("only_if"), r.get("env")) for r in raw["routes"]
            ),
            metrics=tuple(Metric(m["name"], m["type"]) for m in raw["metrics"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(
            f"{path}: malformed contract ({exc!r}); regenerate it with python -m orchestrator.sglang.contract.extract"
        ) from exc


__all__ = ["SUPPORTED_VERSIONS", "Contract", "ContractError", "Metric", "MetricType", "Route", "load_contract"]

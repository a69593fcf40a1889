"""The dashboard's routes on the proxy: the page at ``/`` and ``/dashboard``, its snapshot at
``GET /dashboard/state`` (JSON, polled by the page every second and read by ``chimera-orch
status``), and its static files at ``/dashboard/static/<name>`` (read once at start; only the
files of ``static/`` are served, by exact name)."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.dashboard import readings, state
from orchestrator.dashboard.history import History
from orchestrator.deployment import Deployment
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy.errors import ProxyError
from orchestrator.types import ModelView

STATE_PATH = "/dashboard/state"
STATIC_PREFIX = "/dashboard/static/"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


def static_files() -> dict[str, tuple[bytes, str]]:
    """Every servable file of ``static/``: name → (body, content type)."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("orchestrator.dashboard").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in CONTENT_TYPES:
            out[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return out


class Dashboard:
    """Owns the history the page shows; ``observe`` is a supervisor observer."""

    def __init__(
        self,
        dep: Deployment,
        models: Callable[[], list[ModelView]],
        metrics: ChimeraMetrics,
        history: History | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dep = dep
        self._models = models
        self._metrics = metrics
        self._clock = clock
        self.history = history or History(clock=clock)
        self.history.seed(i for m in models() for i in m.instances)
        self.observe = self.history.observe
        self._files = static_files()
        # up --proxies N: the secondary proxy processes' readings (dataplane/pool.py)
        self.proxies: Callable[[], list[readings.Readings]] | None = None

    def snapshot(self) -> dict[str, Any]:
        read = readings.read(self._metrics)
        if self.proxies is not None:
            read = readings.with_proxies(read, self.proxies())
        return state.build(self._models(), self._dep, read, self.history, self._clock())

    def routes(self) -> list[Route]:
        page, page_type = self._files["index.html"]

        async def index(request: Request) -> Response:
            return Response(page, media_type=page_type, headers={"cache-control": "no-cache"})

        async def snapshot(request: Request) -> Response:
            return Response(orjson.dumps(self.snapshot()), media_type="application/json")

        async def static(request: Request) -> Response:
            name = request.path_params["name"]
            found = self._files.get(name)
            if found is None:
                return ProxyError(404, f"no dashboard file {name!r}", code="not_found").response()
            return Response(found[0], media_type=found[1], headers={"cache-control": "max-age=3600"})

        return [
            Route("/", index, methods=["GET"]),
            Route("/dashboard", index, methods=["GET"]),
            Route(STATE_PATH, snapshot, methods=["GET"]),
            Route(STATIC_PREFIX + "{name}", static, methods=["GET"]),
        ]

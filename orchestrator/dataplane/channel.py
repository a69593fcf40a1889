"""The control plane's private channel to the secondary proxy processes: a small HTTP app on a
Unix socket in the run folder (mode 0700, so only chimera's user reaches it; never on a TCP
port). It exposes the control loop's Router, nothing else:

- ``POST /acquire {"model", "timeout_s"}``: ``router.acquire`` (the request is held and its
  model woken exactly as for the primary proxy's own requests); 200 with the endpoint, 404 for
  an unknown model, 503 ``{"error", "retry_after_s"}`` when it was not served in time. A worker
  that gives up (its client left) closes the connection: the acquire is cancelled, and an
  endpoint handed out at that moment is released (ControlLoop.acquire does that).
- ``POST /release {"instances": [id, ...]}``: ``router.release`` for each (batched by workers).
- ``POST /suspect {"instance_id", "detail"}``: ``router.suspect``.
- ``GET /views``: the models' and instances' views (pickled: same code, same user, private
  socket), for /v1/models and /metrics of the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.control.router import Router
from orchestrator.errors import EngineUnavailable
from orchestrator.types import Endpoint

SOCKET_NAME = "control.sock"


def channel_app(router: Router) -> Starlette:
    async def acquire(request: Request) -> Response:
        body = await _json(request)
        spec = router.resolve(str(body.get("model", "")))
        if spec is None:
            return JSONResponse({"error": f"unknown model {body.get('model')!r}"}, status_code=404)
        task = asyncio.create_task(router.acquire(spec, float(body.get("timeout_s", 300.0))))
        gone = asyncio.create_task(_disconnected(request))
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not task.done():  # the worker left: cancel the hold (an endpoint given meanwhile is released)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return Response(status_code=499)
        try:
            ep = task.result()
        except EngineUnavailable as exc:
            return JSONResponse({"error": str(exc), "retry_after_s": exc.retry_after_s}, status_code=503)
        return JSONResponse({"instance_id": ep.instance_id, "base_url": ep.base_url, "served_name": ep.served_name})

    async def release(request: Request) -> Response:
        for iid in (await _json(request)).get("instances", []):
            router.release(Endpoint(str(iid), "", ""))
        return Response(status_code=204)

    async def suspect(request: Request) -> Response:
        body = await _json(request)
        router.suspect(str(body.get("instance_id", "")), str(body.get("detail", "")))
        return Response(status_code=204)

    async def views(request: Request) -> Response:
        return Response(pickle.dumps((router.models(), router.instances())), media_type="application/octet-stream")

    return Starlette(
        routes=[
            Route("/acquire", acquire, methods=["POST"]),
            Route("/release", release, methods=["POST"]),
            Route("/suspect", suspect, methods=["POST"]),
            Route("/views", views, methods=["GET"]),
        ]
    )


async def _json(request: Request) -> dict[str, Any]:
    data = json.loads(await request.body() or b"{}")
    return data if isinstance(data, dict) else {}


async def _disconnected(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return

"""The primary proxy's own routes reached from a secondary proxy process. SO_REUSEPORT hands a
connection to any process on the port, but the admin API, the dashboard and the control plane's
``/metrics`` live only in the primary (the control plane's process). The primary also serves
its app on a Unix socket in the run folder (pool.py ``PrimaryServer``; mode 0600: chimera's user
only, never a TCP port), and a worker passes every request for a route it does not serve itself
there, streamed both ways, with the client's own headers (the admin key is checked by the
primary as for a direct request).
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from orchestrator.proxy.errors import ProxyError

log = logging.getLogger("chimera.dataplane")
SOCKET_NAME = "primary.sock"
# hop-by-hop headers (RFC 9110 7.6.1) and those the two HTTP stacks set themselves
_DROP = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"content-length"})
_DROP_OUT = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def to_primary_route(socket_dir: Path) -> Route:
    """A worker's catch-all route (put last): the request, as it came, to the primary."""
    client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(socket_dir / SOCKET_NAME)),
        base_url="http://primary",
        timeout=httpx.Timeout(30.0, read=None),  # an event stream stays open
        trust_env=False,
    )

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _DROP]
        url = httpx.URL(path=request.url.path, query=request.url.query.encode())
        upstream = client.build_request(request.method, url, headers=headers, content=await request.body())
        try:
            r = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            log.warning("a request for %s could not reach the primary proxy: %r", request.url.path, exc)
            return ProxyError.unavailable("chimera's control plane did not answer", 1.0).response()
        out = [(k, v) for k, v in r.headers.multi_items() if k.lower() not in _DROP_OUT]
        return StreamingResponse(
            r.aiter_raw(), status_code=r.status_code, headers=dict(out), background=BackgroundTask(r.aclose)
        )

    return Route("/{path:path}", forward, methods=METHODS)

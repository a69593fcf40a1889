"""The proxy's Starlette app: one OpenAI-compatible endpoint (plus SGLang's /generate) in front
of every model, routed by the body's ``model``.

Routes: POST /v1/chat/completions, /v1/completions, /generate (forward.py); GET /v1/models,
/v1/models/{id} (OpenAI's retrieve),
/metrics (chimera's own registry), /health (the proxy's liveness, not the engines').
Every error, including unknown routes and unexpected exceptions, is the envelope of errors.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.control.router import Router
from orchestrator.metrics import ChimeraMetrics
from orchestrator.metrics.federate import engine_metrics, with_proxies
from orchestrator.proxy.auth import AuthMiddleware, ClientKeys, client_of
from orchestrator.proxy.body import ModelField
from orchestrator.proxy.errors import ProxyError, public, status_code
from orchestrator.proxy.forward import ForwardEndpoint
from orchestrator.proxy.limits import DEFAULT_MAX_BODY_BYTES
from orchestrator.proxy.upstream import EngineClient, HttpxUpstream, Limits, Upstream
from orchestrator.sglang.api import CHAT_COMPLETIONS, COMPLETIONS, GENERATE, MODEL_CARD, MODELS, max_model_len
from orchestrator.types import InstanceState, ModelView

log = logging.getLogger(__name__)

# SGLang's serving routes, forwarded at the same path
PROXIED_ROUTES: tuple[tuple[str, ModelField], ...] = (
    (CHAT_COMPLETIONS.path, "rewrite"),
    (COMPLETIONS.path, "rewrite"),
    (GENERATE.path, "drop"),
)

# The /metrics scrape of the engines (the proxied requests use upstream.Limits): a connect
# that takes seconds means the engine is gone; no pool timeout (pools never limit).
SCRAPE_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)


def create_app(
    router: Router,
    metrics: ChimeraMetrics,
    *,
    hold_timeout_s: float = 300.0,
    transport: httpx.AsyncBaseTransport | None = None,
    extra_routes: list[Route] | None = None,
    upstream_limits: Limits | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    engine_headers: Mapping[str, str] | None = None,
    client_keys: ClientKeys | None = None,
    own_metrics: bool = True,
) -> Starlette:
    """The proxy app. ``hold_timeout_s``: how long a request may wait for its model to wake
    before a 503. ``transport``: an httpx transport that replaces the engines (tests pass a
    fake engine); without it the proxy talks to them with upstream.EngineClient, whose
    ``upstream_limits`` bound connects, writes and waits on a hung engine. ``max_body_bytes``:
    the largest request body a proxied route reads (413 beyond; the head limit is the
    server's, limits.uvicorn_http_options). ``engine_headers``: sent with every request to an
    engine, proxied or scraped (the engines' API key, sglang/auth.py). ``client_keys``: the API
    keys the OpenAI routes require (auth.py); None: no authentication. ``own_metrics``: False in
    a secondary proxy process, whose ``/metrics`` is the primary's (dataplane/primary.py), with
    the secondary proxies' request series put in as ``app.state.proxy_metrics`` gives them."""
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstream: Upstream = (
            HttpxUpstream(transport, upstream_limits, engine_headers)
            if transport is not None
            else EngineClient(upstream_limits, engine_headers)
        )
        async with AsyncExitStack() as stack:  # closes both, even if one close fails
            stack.push_async_callback(upstream.aclose)
            # For scraping the engines' /metrics. trust_env=False: HTTP(S)_PROXY from the
            # environment must never reroute loopback calls; verify=False: plain HTTP, so no CA
            # bundle to load (~80 ms before the proxy serves).
            app.state.scraper = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=transport, timeout=SCRAPE_TIMEOUT, trust_env=False, verify=False, headers=engine_headers
                )
            )
            app.state.upstream = upstream
            try:
                yield
            finally:
                del app.state.upstream, app.state.scraper

    def card(view: ModelView, name: str) -> dict[str, Any]:
        """One model id as SGLang's ModelCard has it (``max_model_len``), plus chimera's view."""
        spec = view.spec
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "chimera",
            "root": spec.name,  # the canonical name this id refers to
            "max_model_len": max_model_len(spec.shape.max_context, spec.engine_args),
            "aliases": list(spec.aliases),
            "state": view.state.value,
            # why it failed for good, for operators (restarts gave up)
            **({"error": _errors(view)} if view.state is InstanceState.FAILED else {}),
        }

    def visible(request: Request) -> list[ModelView]:
        """The models the caller's key may use (every model without authentication)."""
        key = client_of(request.scope)
        return [v for v in router.models() if key is None or key.allows(v.spec.name)]

    async def list_models(request: Request) -> Response:
        data = [card(view, name) for view in visible(request) for name in (view.spec.name, *view.spec.aliases)]
        return _json({"object": "list", "data": data})

    async def retrieve_model(request: Request) -> Response:
        """OpenAI's ``GET /v1/models/{id}``: a name or an alias; 404 envelope otherwise (also
        for a model the caller's key may not use: its existence is not told)."""
        name: str = request.path_params["model"]
        spec = router.resolve(name)
        models = visible(request)
        view = next((v for v in models if spec is not None and v.spec.name == spec.name), None)
        if view is None:
            known = [n for v in models for n in (v.spec.name, *v.spec.aliases)]
            return ProxyError.model_not_found(name, known).response()
        return _json(card(view, name))

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        proxies = getattr(request.app.state, "proxy_metrics", None)  # up --proxies N: dataplane/pool.py
        if proxies is not None:
            body = with_proxies(body, proxies())
        # the engines' own sglang:* series, labelled by instance
        body += await engine_metrics(request.app.state.scraper, router.instances())
        return Response(body, headers={"content-type": content_type})

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    routes = [
        Route(MODELS.path, list_models, methods=[MODELS.method]),
        Route(MODEL_CARD.path, retrieve_model, methods=[MODEL_CARD.method]),
        *([Route("/metrics", prometheus, methods=["GET"])] if own_metrics else []),
        Route("/health", health, methods=["GET"]),
        *(
            Route(path, ForwardEndpoint(path, field, router, metrics, hold_timeout_s, max_body_bytes), methods=["POST"])
            for path, field in PROXIED_ROUTES
        ),
        *(extra_routes or []),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(AuthMiddleware, keys=client_keys)] if client_keys else [],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


def _errors(view: ModelView) -> str:
    """Why the model failed, as a client may read it (errors.public: no log tail or path)."""
    return "; ".join(f"{i.id}: {public(i.error)}" for i in view.instances if i.error)


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in the envelope."""
    assert isinstance(exc, HTTPException)
    err = ProxyError(
        exc.status_code,
        f"{request.method} {request.url.path}: {exc.detail}",
        code=status_code(exc.status_code),  # not_found, method_not_allowed
        headers=exc.headers,
    )
    return err.response()


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Last resort for a bug outside the forwarded routes: log the traceback, answer 500 in
    the envelope (never the traceback)."""
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return ProxyError.internal().response()

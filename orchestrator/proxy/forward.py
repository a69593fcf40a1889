"""One proxied request, start to end: parse, resolve, hold for an instance, forward to it,
relay the answer, release the instance, record metrics.

Contracts:
- ``router.release(endpoint)`` runs exactly once for every ``acquire`` that returned, whatever
  happens after it (engine error, client disconnect, cancellation): one try/finally.
- The whole exchange (the hold in ``acquire`` included) races a watcher of the client's
  connection; when the client leaves, the exchange is cancelled, which closes the upstream
  response (SGLang aborts a request whose connection closes). ``Router.acquire`` must therefore
  be cancellation-safe: cancelled, it hands out no endpoint.
- Streamed answers are relayed chunk by chunk as the engine sends them (no buffering, no SSE
  parsing); other answers are read whole (they are one JSON object) and sent with their status.
- Metrics: ``chimera_requests_total`` counts every request by the status the client got (499:
  it left first; 502: the engine broke off a stream already answered 200). TTFT is observed
  for streamed 2xx answers only: a non-streamed answer's first byte is its last, so its TTFT
  would be its e2e and would skew TTFT SLO attainment. e2e is observed for complete 2xx answers.
  A stream relayed up to ``data: [DONE]`` is complete even if the client closes before the
  proxy ends the response (the sync ``openai`` client does): it counts with its status, its e2e
  ends at ``[DONE]``. Such streams also observe TPOT and count SLO attainment (tokens.py).
"""

from __future__ import annotations

import logging
import time

import anyio
from starlette.types import Receive, Scope, Send

from orchestrator.config import ModelSpec
from orchestrator.control.router import Router
from orchestrator.errors import EngineUnavailable
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy.admission import admitted
from orchestrator.proxy.auth import client_of, forbidden
from orchestrator.proxy.body import ClientRequest, ModelField, engine_body, parse_request
from orchestrator.proxy.context import check_context
from orchestrator.proxy.downstream import ClientGone, Downstream, wait_for_disconnect
from orchestrator.proxy.errors import ProxyError, StreamErrors, normalize_engine_error
from orchestrator.proxy.limits import DEFAULT_MAX_BODY_BYTES, read_limited
from orchestrator.proxy.tokens import StreamMeter, answer_tokens, answer_tpot
from orchestrator.proxy.upstream import Upstream, UpstreamError, UpstreamResponse, UpstreamTimeout
from orchestrator.types import Endpoint

log = logging.getLogger(__name__)

UNRESOLVED = "unknown"  # `model` label of requests that name no served model (bounded labels)
JSON = "application/json"


def upstream_of(scope: Scope) -> Upstream:
    """The app's client to the engines, created by its lifespan (see app.py)."""
    upstream: Upstream | None = getattr(scope["app"].state, "upstream", None)
    if upstream is None:
        raise RuntimeError(
            "the proxy's upstream connections are created by the app lifespan, which has not "
            "run: serve the app with a server that runs lifespan (uvicorn does) or enter "
            "app.router.lifespan_context(app) first"
        )
    return upstream


def translate(exc: UpstreamError, instance: str) -> ProxyError:
    """A failure talking to an engine -> 504 (timeout) or 502 (anything else)."""
    if isinstance(exc, UpstreamTimeout):
        return ProxyError.engine_timeout(instance, exc)
    return ProxyError.engine_unreachable(instance, exc)


class ForwardEndpoint:
    """ASGI app of one proxied route (POST only; Starlette's Route checks the method)."""

    def __init__(
        self,
        route: str,
        model_field: ModelField,
        router: Router,
        metrics: ChimeraMetrics,
        hold_timeout_s: float,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.route = route
        self.model_field: ModelField = model_field
        self.router = router
        self.metrics = metrics
        self.hold_timeout_s = hold_timeout_s
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _Exchange(self, scope, send).run(receive)


class _Exchange:
    """The state of one request while it is proxied (one per request, never shared)."""

    def __init__(self, ep: ForwardEndpoint, scope: Scope, send: Send) -> None:
        self.ep = ep
        self.scope = scope
        self.down = Downstream(send)
        self.received_at = time.monotonic()
        self.model = UNRESOLVED
        self.spec: ModelSpec | None = None
        self.stream = False
        self.meter = StreamMeter()
        self.client_gone = False
        self.engine_broke_stream = False
        self.answer_tokens: float | None = None  # output tokens per choice of a whole answer

    async def run(self, receive: Receive) -> None:
        try:
            try:
                raw = await read_limited(self.scope, receive, self.ep.max_body_bytes)
            except ProxyError as err:  # 413: answered without reading the rest
                await self.fail(err)
                return
            if raw is None:
                self.client_gone = True
                return
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    await wait_for_disconnect(receive)
                    if not self.down.completed:
                        self.client_gone = True
                        tg.cancel_scope.cancel()  # cancels serve() at its current await

                tg.start_soon(watch)
                await self.serve(raw)  # raises nothing but cancellation
                tg.cancel_scope.cancel()
        finally:
            self.record()

    async def serve(self, raw: bytes) -> None:
        try:
            req = parse_request(raw)
            spec = self.ep.router.resolve(req.model)
            key = client_of(self.scope)
            if spec is None:
                known = self.ep.router.known_names()
                if key is not None:  # only the names the key may use
                    known = [n for n in known if (s := self.ep.router.resolve(n)) and key.allows(s.name)]
                raise ProxyError.model_not_found(req.model, known)
            if key is not None and not key.allows(spec.name):
                raise forbidden(req.model)
            self.model, self.spec, self.stream = spec.name, spec, req.stream
            check_context(self.ep.route, spec, req.body)  # 400 before any hold or wake
            with self.ep.metrics.in_flight.labels(spec.name).track_inprogress():
                await self.hold_and_forward(spec, req)
        except ProxyError as err:
            await self.fail(err)
        except ClientGone:
            self.client_gone = True
        except Exception:
            log.exception("internal error proxying %s (model %s)", self.ep.route, self.model)
            await self.fail(ProxyError.internal())

    async def hold_and_forward(self, spec: ModelSpec, req: ClientRequest) -> None:
        try:
            endpoint = await self.ep.router.acquire(spec, self.ep.hold_timeout_s)
        except EngineUnavailable as exc:
            raise ProxyError.unavailable(str(exc), exc.retry_after_s) from exc
        try:
            # local admission (mode full): EDF per GPU group, KV room, 429 when infeasible
            async with admitted(self.scope, spec, req.body, endpoint.instance_id, self.received_at):
                await self.forward(endpoint, req)
        finally:
            self.ep.router.release(endpoint)

    async def forward(self, endpoint: Endpoint, req: ClientRequest) -> None:
        body = engine_body(req, self.ep.model_field, endpoint.served_name)
        try:
            upstream = await upstream_of(self.scope).post(endpoint.base_url, self.ep.route, body)
        except UpstreamError as exc:
            raise self.engine_failed(exc, endpoint.instance_id) from exc
        try:
            if req.stream and 200 <= upstream.status < 300:
                await self.relay(endpoint, upstream)
            else:
                await self.answer(endpoint, upstream)
        finally:
            with anyio.CancelScope(shield=True):  # close even while being cancelled
                await upstream.aclose()

    async def answer(self, endpoint: Endpoint, upstream: UpstreamResponse) -> None:
        """A whole (non-streamed or error) answer, passed on with its status."""
        try:
            body = await upstream.read()
        except UpstreamError as exc:
            raise self.engine_failed(exc, endpoint.instance_id) from exc
        status = upstream.status
        instance = [("x-chimera-instance", endpoint.instance_id)]
        if 200 <= status < 300:
            ctype = upstream.content_type or JSON
            self.answer_tokens = answer_tokens(body)
            await self.down.respond(status, body, ctype, instance)
            return
        if status >= 500:
            log.warning("engine instance %s answered HTTP %d: %.300r", endpoint.instance_id, status, body)
        await self.down.respond(status, normalize_engine_error(status, body), JSON, instance)

    async def relay(self, endpoint: Endpoint, upstream: UpstreamResponse) -> None:
        """A streamed answer, chunk by chunk as the engine sends it."""
        await self.down.start(
            upstream.status,
            [
                ("content-type", upstream.content_type or "text/event-stream"),
                ("cache-control", "no-cache"),
                ("x-accel-buffering", "no"),  # tell a reverse proxy in front not to buffer either
                ("x-chimera-instance", endpoint.instance_id),
            ],
        )
        ends_frame, errors = True, StreamErrors()
        try:
            # raw: passed on as the engine framed them, undecoded (identity was asked for), but
            # for its error frames, put in the envelope (errors.StreamErrors)
            async for chunk in upstream.iter_raw():
                if out := errors.feed(chunk):
                    await self.down.chunk(out)
                    self.meter.feed(out, time.monotonic())
                    ends_frame = out.endswith(b"\n\n")
            if rest := errors.flush():
                await self.down.chunk(rest)
                self.meter.feed(rest, time.monotonic())
        except UpstreamError as exc:
            # The status line is gone; tell the client in the stream, as SGLang does.
            self.engine_broke_stream = True
            log.warning("engine instance %s broke off a stream: %s: %s", endpoint.instance_id, type(exc).__name__, exc)
            err = self.engine_failed(exc, endpoint.instance_id)
            frame = b"data: " + err.body() + b"\n\ndata: [DONE]\n\n"
            if rest := errors.flush():  # an incomplete frame: terminated before the error frame
                await self.down.chunk(rest)
                ends_frame = False
            await self.down.chunk(frame if ends_frame else b"\n\n" + frame)
        await self.down.finish()

    def engine_failed(self, exc: UpstreamError, instance: str) -> ProxyError:
        """The client's error for a failed exchange; a timeout (the engine sent nothing within
        the upstream's limit) also asks the owner to check whether the engine is hung."""
        if isinstance(exc, UpstreamTimeout):
            self.ep.router.suspect(instance, f"a request timed out: {exc}")
        log.warning("%s %s on %s: %s", self.ep.route, type(exc).__name__, instance, exc)  # the client gets less
        return translate(exc, instance)

    async def fail(self, err: ProxyError) -> None:
        """Answer ``err`` in the envelope, or end a response already started."""
        try:
            if not self.down.started:
                await self.down.respond(err.status, err.body(), JSON, err.headers.items())
            elif not self.down.completed:
                await self.down.finish(b"data: " + err.body() + b"\n\ndata: [DONE]\n\n")
        except ClientGone:
            self.client_gone = True

    def record(self) -> None:
        m, down = self.ep.metrics, self.down
        # read to [DONE] (the engine's own, never the proxy's error frame) = the whole answer
        read_to_done = self.meter.done and not self.engine_broke_stream
        if down.completed:
            status = "502" if self.engine_broke_stream else str(down.status)
        elif read_to_done:  # the client closed right after [DONE], before the proxy's last message
            status = str(down.status)
        elif self.client_gone:
            status = "499"
        else:  # cancelled from outside (server shutdown) before the response ended
            status = str(down.status or 500)
        m.requests.labels(self.model, self.ep.route, status).inc()
        if down.status is None or not 200 <= down.status < 300:
            return
        first = down.first_chunk_at
        if self.stream and first is not None:
            m.ttft.labels(self.model).observe(first - self.received_at)
        end = down.completed_at if down.completed else self.meter.done_at
        if end is not None and not self.engine_broke_stream:
            m.e2e.labels(self.model).observe(end - self.received_at)
            tpot = answer_tpot(end - self.received_at, self.answer_tokens) if not self.stream else None
            if tpot is not None:  # a whole answer: an upper bound (tokens.py)
                m.tpot.labels(self.model).observe(tpot)
        if read_to_done and first is not None and self.spec is not None:
            slo = self.spec.slo
            tpot = self.meter.tpot(first)
            m.record_slo(self.model, first - self.received_at, tpot, slo.ttft_or_default, slo.tpot_or_default)

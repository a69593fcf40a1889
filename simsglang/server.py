"""The simulated SGLang server: settings, the per-app runtime, and the Starlette app.

``create_app(settings)`` builds an app whose state (memory tags, batcher task, metrics) is made
in the lifespan and kept on ``app.state.sim``; nothing is module-global, so tests can run many
apps in one process. Routes (all plain ``starlette.routing.Route``) are in api.py (generation),
admin.py (health, info, loads, metrics) and park.py (pause, release, resume, weight update);
paths, bodies and status codes follow SGLang 0.5.17's ``srt/entrypoints/http_server.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.perf import calibration as cal
from orchestrator.perf.model import LatencyModel, plan_memory
from orchestrator.shapes import ModelShape, load_shape
from simsglang.batcher import Batcher, Clock, SimRequest, StepEvent, WallClock
from simsglang.lora import LoraSettings, LoraState
from simsglang.memory import MemoryTags
from simsglang.metrics import SimMetrics
from simsglang.sampling import Sampling
from simsglang.structured import pieces
from simsglang.tokenizer import OUTPUT_ID_BASE, WORDS, ToyTokenizer, prompt_key

NO_SAMPLING = Sampling()
DISCONNECT_POLL_S = 4.0  # SGLang's _REQUEST_STATE_WAIT_TIMEOUT: check for a gone client this often


class ClientGone(Exception):
    """The client of a non-streaming request disconnected; the request was aborted."""


@dataclass(frozen=True)
class SimSettings:
    shape: ModelShape
    model_path: str
    served_name: str
    tp_size: int = 1
    gpu_memory_gb: float = 80.0  # GiB per GPU, as in the placements file's host.gpu_memory_gb
    mem_fraction_static: float | None = None  # None = SGLang's default for this GPU size
    max_total_tokens: int | None = None
    max_running_requests: int | None = None
    chunked_prefill_size: int | None = None
    context_length: int | None = None
    cuda_graph_max_bs: int | None = None  # None: SGLang's default for the GPU size; 0: no graphs
    speed: float = 1.0  # time scale of every modelled duration (0 = no compute time)
    start_delay_s: float = 0.0  # simulated boot time before the port opens
    # The CLI defaults these three to off, like SGLang; chimera always passes them.
    enable_metrics: bool = True
    enable_memory_saver: bool = True  # off: /release_memory_occupation frees nothing (SGLang)
    enable_weights_cpu_backup: bool = True  # off: released weights come back as garbage
    host: str = "127.0.0.1"
    port: int = 30000
    weight_version: str = "default"
    api_key: str | None = field(default=None, repr=False)  # --api-key (simsglang/auth.py)
    lora: LoraSettings = LoraSettings()  # --enable-lora and its limits (simsglang/lora.py)
    weights_load_bw: float | None = None  # bytes/s of /update_weights_from_disk (None: calibrated disk)

    @classmethod
    def from_shape(cls, shape_name: str, **overrides: Any) -> SimSettings:
        """Settings for a shipped shape; ``model_path`` and ``served_name`` default to its name."""
        model_path = overrides.pop("model_path", shape_name)
        served = overrides.pop("served_name", model_path)
        shape = overrides.pop("shape", None) or load_shape(shape_name)
        return cls(shape=shape, model_path=model_path, served_name=served, **overrides)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("shape", "api_key", "lora")}
        return {**out, "shape": self.shape.name}


class SimServer:
    """Everything one simulated server owns. Made by the lifespan; routes reach it through
    ``request.app.state.sim``. All methods run on the app's event loop."""

    def __init__(self, settings: SimSettings, clock: Clock) -> None:
        s = settings
        self.settings, self.clock = s, clock
        self.context_len = s.context_length or s.shape.max_context
        self.plan = plan_memory(
            s.shape,
            tp_size=s.tp_size,
            gpu_memory_gb=s.gpu_memory_gb,
            mem_fraction_static=s.mem_fraction_static,
            max_total_tokens=s.max_total_tokens,
            max_running_requests=s.max_running_requests,
            chunked_prefill_size=s.chunked_prefill_size,
            context_length=self.context_len,
            cuda_graph_max_bs=s.cuda_graph_max_bs,
        )
        self.memory = MemoryTags(self.plan, s.enable_memory_saver, s.enable_weights_cpu_backup, tp_size=s.tp_size)
        self.model = LatencyModel(s.shape, s.tp_size, s.speed)
        self.metrics = SimMetrics(s.served_name, self.gauges)
        self.batcher = Batcher(self.model, self.plan, clock, self.metrics.queue_time)
        self.lora = LoraState(s.lora, s.shape, s.speed)
        if s.lora.enabled:
            self.batcher.max_loras_per_batch = s.lora.max_loras_per_batch
        self.tokenizer = ToyTokenizer(s.shape.vocab_size)
        # SGLang's tp_worker: max_req_len = min(context_len - 1, max_total_num_tokens - 1)
        self.max_req_len = min(self.context_len - 1, self.plan.kv_capacity_tokens - 1)
        self.max_req_input_len = self.max_req_len - 5
        self.up = False  # False while "starting": /health answers 503
        self.startup_time = time.time()
        self.not_paused = asyncio.Event()  # requests arriving while paused wait on this
        self.not_paused.set()
        self.memory_lock = asyncio.Lock()  # one release/resume/weight update at a time
        self.model_path = s.model_path  # changed by /update_weights_from_disk
        self.weight_version = s.weight_version
        self.disconnect_poll_s = DISCONNECT_POLL_S  # tests shorten it
        self.fail_resumes = 0  # fault injection (POST /sim/fail_next_resume): resumes left to fail

    def weights_key(self) -> str:
        """What the loaded weights are, for the output: the original model's are ``""``."""
        key = "" if self.model_path == self.settings.model_path else self.model_path
        return key if self.memory.weights_intact else key + "#garbage"

    @property
    def paused(self) -> bool:
        return not self.not_paused.is_set()

    def gauges(self) -> dict[str, float]:
        snap, p = self.batcher.snapshot(), self.plan
        used = snap.used_tokens + self.batcher.held_back_tokens()  # as a shimmed SGLang counts them
        return {
            "num_running_reqs": snap.num_running,
            "num_queue_reqs": snap.num_waiting,
            "num_used_tokens": used,
            "token_usage": used / snap.capacity,
            "gen_throughput": snap.gen_throughput,
            "num_retracted_reqs": snap.num_retracted,
            "num_paused_reqs": snap.num_paused,
            "max_total_num_tokens": p.kv_capacity_tokens,
            "weight_memory_usage_gb": p.weight_bytes / cal.GIB,
            "kv_cache_memory_usage_gb": p.kv_bytes / cal.GIB,
            "context_len": self.context_len,
            "page_size": 1,
        }

    def prepare(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int | None,
        ignore_eos: bool,
        rid: str | None = None,
        sampling: Sampling = NO_SAMPLING,
        index: int = 0,
        adapter: str | None = None,
    ) -> SimRequest:
        """Validate like SGLang's tokenizer manager and scheduler (same messages; a ValueError
        becomes a 400) and plan the request's output: choice ``index`` of ``sampling.n``."""
        n = len(prompt_ids)
        if n == 0:
            raise ValueError("Either text, input_ids or input_embeds should be provided.")
        if n >= self.context_len:
            raise ValueError(
                f"The input ({n} tokens) is longer than the model's context length ({self.context_len} tokens)."
            )
        if max_new_tokens is not None and max_new_tokens + n > self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of "
                f"{self.context_len} tokens. You requested a total of {max_new_tokens + n} "
                f"tokens: {n} tokens from the input messages and {max_new_tokens} tokens for the "
                f"completion. Please reduce the number of tokens in the input messages or the "
                f"completion to fit within the limit."
            )
        if n >= self.max_req_input_len:
            raise ValueError(
                f"Input length ({n} tokens) exceeds the maximum allowed length "
                f"({self.max_req_input_len} tokens). Use a shorter input or enable "
                f"--allow-auto-truncate."
            )
        cap = min(
            1 << 30 if max_new_tokens is None else max_new_tokens,
            self.max_req_len - n - 1,
            self.plan.kv_capacity_tokens - n - 2,
        )
        weights = self.weights_key()
        if adapter is not None:  # LoraError (a ValueError): SGLang's refusal, a 400
            weights += "+lora=" + self.lora.check(adapter)
        seed = sampling.choice_seed(index)
        forced = sampling.constrained_text(prompt_key(prompt_ids, seed))
        plan = self.tokenizer.plan(
            prompt_ids,
            max(0, cap),
            ignore_eos,
            weights,
            seed=seed,
            stop=sampling.stop,
            forced=pieces(forced) if forced is not None else (),
        )
        return SimRequest(rid or uuid.uuid4().hex, n, plan, top_logprobs=sampling.top_logprobs, adapter=adapter)

    async def generate(
        self, req: SimRequest, stream: bool, request: Request | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """SGLang's ``generate_request``: yields output dicts (``text``, ``output_ids``,
        ``meta_info``): each new token when streaming (cumulative text), else only the last.
        Closing the generator early aborts the request and frees its KV."""
        arrival = self.clock.now()
        await self.not_paused.wait()
        if req.adapter is not None:  # re-loads an evicted adapter first, as SGLang does
            await self.lora.acquire(req.adapter, self.clock.sleep)
        try:
            self.batcher.submit(req)
        except BaseException:
            if req.adapter is not None:
                self.lora.release(req.adapter)
            raise
        ids: list[int] = []
        text, last, first = "", arrival, True
        try:
            while True:
                ev = await self._next_event(req, request)
                new = req.plan.tokens(len(ids), ev.generated)
                ids.extend(new)
                text += req.plan.text(len(ids) - len(new), len(ids))
                if new and first:
                    self.metrics.first_token(ev.time - arrival, stream)
                    first = False
                elif new:
                    self.metrics.tokens(ev.time - last, len(new))
                last = ev.time
                if not (stream or ev.finish):
                    continue
                meta: dict[str, Any] = {
                    "id": req.rid,
                    "finish_reason": ev.finish,
                    "prompt_tokens": req.prompt_len,
                    "weight_version": self.weight_version,
                    "num_retractions": req.retractions,
                    "reasoning_tokens": 0,
                    "completion_tokens": len(ids),
                    "cached_tokens": 0,
                }
                if req.top_logprobs is not None:
                    meta.update(_logprobs(req, len(ids)))
                if ev.finish and isinstance(ev.finish.get("matched"), str):
                    # the detokenizer trims a matched stop string and what follows it
                    at = text.find(str(ev.finish["matched"]))
                    text = text[:at] if at >= 0 else text
                if ev.finish:
                    meta["e2e_latency"] = ev.time - arrival
                    aborted = ev.finish.get("type") == "abort"
                    self.metrics.finished(req.prompt_len, len(ids), ev.time - arrival, stream, aborted)
                yield {"text": text, "output_ids": list(ids), "meta_info": meta}
                if ev.finish:
                    return
        finally:
            if req.state != "done":
                self.batcher.abort(req, "Client disconnected")
                self.metrics.finished(req.prompt_len, len(ids), self.clock.now() - arrival, stream, True)
            if req.adapter is not None:
                self.lora.release(req.adapter)

    async def _next_event(self, req: SimRequest, request: Request | None) -> StepEvent:
        """The request's next step. Like SGLang's ``_wait_one_response``, a non-streaming
        request (``request`` given) checks every ``disconnect_poll_s`` whether its client is
        gone and then aborts (ClientGone): the caller's ``finally`` frees its slot and KV at once
        instead of generating to the end for nobody. Wall time, not the sim's clock: a virtual
        clock in auto mode would jump ahead by every poll."""
        while True:
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(self.disconnect_poll_s):
                    return await req.events.get()
            except TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise ClientGone(req.rid) from None


def _logprobs(req: SimRequest, n: int) -> dict[str, Any]:
    """meta_info's ``output_token_logprobs`` ([logprob, id, text] per token so far, as with
    return_text_in_logprobs) and, when top ones are asked, ``output_top_logprobs``: the chosen
    token first, then other words with lower logprobs."""
    plan, k = req.plan, req.top_logprobs or 0
    out: dict[str, Any] = {
        "output_token_logprobs": [[plan.logprob(i), plan.token(i), plan.piece(i)] for i in range(n)],
        "output_token_logprobs_length": n,
    }
    if k:
        top = []
        for i in range(n):
            row = [[plan.logprob(i), plan.token(i), plan.piece(i)]]
            for j in range(1, k):
                alt = OUTPUT_ID_BASE + (plan.token(i) + 7 * j) % len(WORDS)
                row.append([plan.logprob(i) - 0.5 * j, alt, ToyTokenizer.decode([alt])])
            top.append(row)
        out["output_top_logprobs"] = top
    return out


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette, settings: SimSettings, clock: Clock) -> AsyncIterator[None]:
    sim = SimServer(settings, clock)
    await _boot(sim, settings.start_delay_s, clock)  # uvicorn binds the port only after it
    sim.up = True
    app.state.sim = sim
    # [chimera: cumem_shim] the KV limit's control channel (shim_channel.py): a no-op unless
    # CHIMERA_SHIM_SOCKET is set; entered before the batcher task starts (it swaps the batcher)
    from simsglang.shim_channel import mounted

    async with mounted(sim):
        task = asyncio.create_task(sim.batcher.run(), name="sim-batcher")
        try:
            yield
        finally:
            sim.batcher.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# Shares of the simulated boot spent in each phase (an 8B shape's cold start on the H100 is
# roughly: init 40%, weights 20%, KV 5%, graphs 25%, the rest to the HTTP server).
_BOOT_SHARES = (("init", 0.4), ("weights", 0.2), ("kv", 0.05), ("graphs", 0.25))


async def _boot(sim: SimServer, delay_s: float, clock: Clock) -> None:
    """Print stock SGLang's start-up log lines (the marks the supervisor times phases by),
    spread over the simulated boot."""
    p = sim.plan
    gib = 2**30

    def say(line: str) -> None:
        print(f"{line} (SIMULATED)", file=sys.stderr, flush=True)

    async def spend(share: float) -> None:
        if delay_s > 0:
            await clock.sleep(delay_s * share)

    await spend(_BOOT_SHARES[0][1])
    say(f"Load weight begin. avail mem={(p.gpu_bytes - p.context_bytes) / gib:.2f} GB")
    await spend(_BOOT_SHARES[1][1])
    say(f"Load weight end. elapsed={delay_s * _BOOT_SHARES[1][1]:.2f} s, mem usage={p.weight_bytes / gib:.2f} GB")
    await spend(_BOOT_SHARES[2][1])
    say(
        f"KV Cache is allocated. #tokens: {p.kv_capacity_tokens}, "
        f"K size: {p.kv_bytes / 2 / gib:.2f} GB, V size: {p.kv_bytes / 2 / gib:.2f} GB"
    )
    await spend(_BOOT_SHARES[3][1])
    say(
        f"Capture cuda graph end. Time elapsed: {delay_s * _BOOT_SHARES[3][1]:.2f} s. "
        f"mem usage={p.cuda_graph_bytes / gib:.2f} GB"
    )
    await spend(1.0 - sum(share for _, share in _BOOT_SHARES))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)  # FastAPI's shape


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"error": {"message": f"Internal server error: {type(exc).__name__}: {exc} (SIMULATED sglang)"}},
        status_code=500,
    )


def create_app(settings: SimSettings, clock: Clock | None = None) -> Starlette:
    from simsglang import admin, api, lora_routes, park

    the_clock = clock or WallClock()
    routes: list[Route] = [*api.routes(), *admin.routes(), *park.routes(), *lora_routes.routes()]

    def lifespan(app: Starlette) -> contextlib.AbstractAsyncContextManager[None]:
        return _lifespan(app, settings, the_clock)

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error, Exception: _server_error}
    )
    if settings.api_key:  # outermost, as SGLang adds it: unknown routes get 401 too
        from simsglang.auth import ApiKeyMiddleware

        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    return app

"""Park/wake control routes of the sim, as in SGLang 0.5.17's ``srt/entrypoints/http_server.py``:
``/pause_generation``, ``/continue_generation``, ``/release_memory_occupation``,
``/resume_memory_occupation``, ``/update_weights_from_disk``, ``/flush_cache``. Bodies follow
``srt/managers/io_struct.py``; tags are those of ``srt/constants.py``.

Deliberate differences, each towards failing fast: a release while requests are running or
queued is refused with a 400 (real SGLang asserts and the server dies), and so is a weight update
on a parked server (measured on the H100 to kill the real one).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from orchestrator.perf import calibration as cal
from orchestrator.shapes import ShapeError, resolve_shape
from simsglang.api import BadRequest, json_response, openai_error, read_json
from simsglang.server import SimServer


def _sim(request: Request) -> SimServer:
    sim = request.app.state.sim
    assert isinstance(sim, SimServer)
    return sim


def _error(message: str, status: int = 400) -> Response:
    return json_response({"error": {"message": message}}, status)  # _create_error_response


async def _body(request: Request) -> dict[str, Any]:
    return await read_json(request, openai=False) if await request.body() else {}


async def flush_cache(request: Request) -> Response:
    b = _sim(request).batcher
    if b.is_idle():
        b.flush_prefix_cache()
        return PlainTextResponse(
            "Cache flushed.\nPlease check backend logs for more details. (When there are running "
            "or waiting requests, the operation will not be performed.)\n"
        )
    return PlainTextResponse(
        f"Cache not flushed because there are pending requests. "
        f"#queue-req: {len(b.waiting)}, #running-req: {len(b.running)}",
        status_code=400,
    )


async def pause_generation(request: Request) -> Response:
    sim = _sim(request)
    try:
        mode = (await _body(request)).get("mode", "abort")
    except BadRequest as e:
        return openai_error(str(e), "Bad Request")
    if mode not in ("abort", "retract", "in_place"):
        return openai_error(f"mode: Input should be 'abort', 'retract' or 'in_place' (got {mode!r})", "Bad Request")
    sim.not_paused.clear()
    await sim.batcher.pause(mode)
    return json_response({"message": "Generation paused successfully.", "status": "ok"})


async def continue_generation(request: Request) -> Response:
    sim = _sim(request)
    sim.not_paused.set()
    sim.batcher.unpause()
    return json_response({"message": "Generation continued successfully.", "status": "ok"})


async def _tags(request: Request) -> list[str] | None:
    tags = (await _body(request)).get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise BadRequest("tags: Input should be a list of strings")
    return tags


async def release_memory(request: Request) -> Response:
    sim = _sim(request)
    try:
        tags = sim.memory.normalize(await _tags(request))
    except ValueError as e:
        return _error(str(e))
    async with sim.memory_lock:
        b = sim.batcher
        if not b.is_idle():
            return _error(
                f"release_memory_occupation should be called only when server is idle "
                f"(#running-req: {len(b.running)}, #queue-req: {len(b.waiting)}). Real SGLang "
                f"asserts here and the server dies; pause with mode 'abort' or wait until "
                f"/v1/loads shows no running or waiting requests (SIMULATED)"
            )
        moved = sim.memory.to_release(tags)
        if {"weights", "kv_cache"} & set(moved):
            await b.hold("released")
        first = sim.memory.releases == 0
        await sim.clock.sleep(sim.model.release_time(sim.plan, moved, first))
        sim.memory.release(tags)
    return json_response(None)


async def resume_memory(request: Request) -> Response:
    sim = _sim(request)
    try:
        tags = sim.memory.normalize(await _tags(request))
    except ValueError as e:
        return _error(str(e))
    async with sim.memory_lock:
        if sim.fail_resumes > 0:  # injected: what a CUDA OOM in the scheduler's resume looks like
            sim.fail_resumes -= 1
            return _error("CUDA out of memory (injected by /sim/fail_next_resume)", 500)
        await sim.clock.sleep(sim.model.resume_time(sim.plan, sim.memory.to_resume(tags)))
        sim.memory.resume(tags)
        if sim.memory.can_serve:
            sim.batcher.unhold("released")
    return json_response(None)


async def fail_next_resume(request: Request) -> Response:
    """Sim only, for chaos tests (bench/chaos): the next ``count`` (default 1) resumes answer
    500 as a wake that hit CUDA OOM would. Behind the API key like every other route."""
    sim = _sim(request)
    try:
        count = (await _body(request)).get("count", 1)
    except BadRequest as e:
        return _error(str(e))
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return _error("count: Input should be a non-negative integer")
    sim.fail_resumes = count
    return json_response({"fail_resumes": count})


async def update_weights_from_disk(request: Request) -> Response:
    """Load other weights of the same shape in place (chimera re-targets a woken server to a
    fine-tune). Waits for in-flight requests like SGLang's model-update lock, unless
    ``abort_all_requests``; requests arriving meanwhile wait too. ``flush_cache`` (default
    true, as in ``UpdateWeightFromDiskReqInput``) empties the prefix cache with the load."""
    sim = _sim(request)
    try:
        body = await _body(request)
        path = body.get("model_path")
        if not isinstance(path, str) or not path:
            raise BadRequest("model_path: Field required", "Bad Request")
    except BadRequest as e:
        return openai_error(str(e), e.err_type)

    def result(ok: bool, message: str) -> Response:
        return json_response({"success": ok, "message": message, "num_paused_requests": 0}, 200 if ok else 400)

    try:
        shape = resolve_shape(path)
    except ShapeError as exc:
        return result(False, f"Failed to update weights: {exc}.\nRolling back to original weights.")
    current = sim.settings.shape
    if (shape.hidden_size, shape.num_layers, shape.vocab_size) != (
        current.hidden_size,
        current.num_layers,
        current.vocab_size,
    ):
        return result(
            False,
            f"Failed to update weights: {path} ({shape.name}) does not have the "
            f"shape of {current.name}.\nRolling back to original weights.",
        )
    async with sim.memory_lock:
        if "weights" in sim.memory.released:
            return result(
                False,
                "update_weights_from_disk on a parked server: the real SGLang "
                "server dies here (CUDA invalid argument); resume memory first "
                "(SIMULATED)",
            )
        was_paused = sim.paused
        sim.not_paused.clear()
        try:
            if body.get("abort_all_requests"):
                await sim.batcher.pause("abort")
                sim.batcher.unpause()
            await sim.batcher.wait_idle()
            seconds = sim.plan.weight_bytes / (sim.settings.weights_load_bw or cal.DISK_LOAD_BW)
            await sim.clock.sleep(sim.settings.speed * seconds)
            sim.model_path = path
            sim.memory.weights_intact = True
            if body.get("flush_cache", True):  # WeightUpdater.flush_cache_after_weight_update
                sim.batcher.flush_prefix_cache()
            if isinstance(body.get("weight_version"), str):
                sim.weight_version = body["weight_version"]
        finally:
            if not was_paused:
                sim.not_paused.set()
    return result(True, "Succeeded to update model weights.")


def routes() -> list[Route]:
    both = ["GET", "POST"]
    return [
        Route("/flush_cache", flush_cache, methods=both),
        Route("/pause_generation", pause_generation, methods=["POST"]),
        Route("/continue_generation", continue_generation, methods=["POST"]),
        Route("/release_memory_occupation", release_memory, methods=both),
        Route("/resume_memory_occupation", resume_memory, methods=both),
        Route("/update_weights_from_disk", update_weights_from_disk, methods=["POST"]),
        Route("/sim/fail_next_resume", fail_next_resume, methods=["POST"]),
    ]

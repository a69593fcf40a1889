"""Generation routes of the sim: ``/generate``, ``/v1/chat/completions``, ``/v1/completions``.

Response shapes follow SGLang 0.5.17: native output dicts and error handling from
``srt/entrypoints/http_server.py``; OpenAI bodies and chunks from ``openai/serving_chat.py``,
``serving_completions.py``, ``sse_utils.py``, ``protocol.py`` and ``usage_processor.py``.
As in SGLang, the ``model`` of an OpenAI request is echoed, not checked, except that
``base:adapter`` names a LoRA adapter (``lora_path`` on /generate; simsglang/lora.py).
Streams are ``data: <json>\\n\\n`` frames ending with ``data: [DONE]\\n\\n``; OpenAI
streams wait for their first chunk before answering (SGLang's kick-start), so a validation error
is still a 400 and response headers arrive with the first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from simsglang.openai_shapes import ChatShape, CompletionShape, Out, sse
from simsglang.sampling import ParamError, chat_sampling, completion_sampling
from simsglang.server import ClientGone, SimServer
from simsglang.tokenizer import render_chat

BOS_TOKEN_ID = 1
DONE = b"data: [DONE]\n\n"


class BadRequest(ValueError):
    """A request SGLang would refuse before generating (400)."""

    def __init__(self, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.err_type = err_type


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def openai_error(message: str, err_type: str = "BadRequestError", status: int = 400) -> Response:
    """SGLang's ErrorResponse (protocol.py), used by the OpenAI routes and request validation."""
    return json_response(
        {"object": "error", "message": message, "type": err_type, "param": None, "code": status}, status
    )


async def read_json(request: Request, openai: bool) -> dict[str, Any]:
    """The JSON object of a body; FastAPI's validation failures become SGLang's 400."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if openai and media != "application/json":
        raise BadRequest("Unsupported Media Type: Only 'application/json' is allowed", "Bad Request")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"JSON decode error: {exc}", "Bad Request") from exc
    if not isinstance(body, dict):
        raise BadRequest("Input should be a valid dictionary or object", "Bad Request")
    return body


def _int(body: dict[str, Any], key: str, default: int | None) -> int | None:
    val = body.get(key, default)
    if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 0):
        raise BadRequest(f"{key}: Input should be a non-negative integer (got {val!r})", "Bad Request")
    return val


def _sim(request: Request) -> SimServer:
    sim = request.app.state.sim
    assert isinstance(sim, SimServer)
    return sim


async def _last(gen: AsyncGenerator[Out, None]) -> Out:
    last: Out = {}
    try:
        async for out in gen:
            last = out
    finally:
        await gen.aclose()
    return last


async def _frames(
    gen: AsyncGenerator[Out, None],
    fmt: Callable[[Out], list[bytes]],
    tail: Callable[[dict[int, Out]], list[bytes]],
) -> AsyncGenerator[bytes, None]:
    """SSE frames of a generation; closing this early (client gone) aborts the request.
    ``tail`` gets the last output of each choice."""
    lasts: dict[int, Out] = {}
    try:
        async for out in gen:
            lasts[int(out.get("index", 0))] = out
            for frame in fmt(out):
                yield frame
    finally:
        await gen.aclose()
    for frame in tail(lasts):
        yield frame
    yield DONE


async def _merged(gens: list[AsyncGenerator[Out, None]]) -> AsyncGenerator[Out, None]:
    """The outputs of n choices as they come, each tagged with its ``index`` (SGLang's n > 1
    runs n requests and streams their outputs interleaved). Closing this cancels the pumps,
    which closes each generation and aborts its request."""
    if len(gens) == 1:
        try:
            async for out in gens[0]:
                yield out
        finally:
            await gens[0].aclose()
        return
    queue: asyncio.Queue[Out | None] = asyncio.Queue()

    async def pump(i: int, gen: AsyncGenerator[Out, None]) -> None:
        try:
            async for out in gen:
                await queue.put({**out, "index": i})
        finally:
            await gen.aclose()
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        done = 0
        while done < len(gens):
            item = await queue.get()
            if item is None:
                done += 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SSEResponse(StreamingResponse):
    """Streams while watching for the client to leave, whatever the server's ASGI spec version
    (Starlette's own response only notices at the next send), then closes the body iterator,
    which aborts the generation and frees its KV at once. The ``gone`` flag covers a stream
    whose chunks come back to back (e.g. speed 0), where a task cancellation can be outrun."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = False

        async def stream() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                if gone:
                    return
                data = chunk if isinstance(chunk, bytes) else str(chunk).encode()
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            async with anyio.create_task_group() as tg:

                async def run_stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-send
                        await stream()
                    tg.cancel_scope.cancel()

                tg.start_soon(run_stream)
                await self.listen_for_disconnect(receive)
                gone = True
                tg.cancel_scope.cancel()
        finally:
            if isinstance(self.body_iterator, AsyncGenerator):
                await self.body_iterator.aclose()


def _sse_response(frames: AsyncGenerator[bytes, None]) -> Response:
    return SSEResponse(frames, media_type="text/event-stream")


async def _kick_started(frames: AsyncGenerator[bytes, None]) -> Response:
    first = await frames.__anext__()

    async def all_frames() -> AsyncGenerator[bytes, None]:
        try:
            yield first
            async for f in frames:
                yield f
        finally:
            await frames.aclose()

    return _sse_response(all_frames())


# -- /generate --------------------------------------------------------------------------------
async def generate(request: Request) -> Response:
    sim = _sim(request)
    stream = False
    try:
        body = await read_json(request, openai=False)
        stream = bool(body.get("stream", False))
        text, input_ids = body.get("text"), body.get("input_ids")
        if isinstance(text, list) or (isinstance(input_ids, list) and input_ids and isinstance(input_ids[0], list)):
            raise BadRequest("batched /generate is not supported by the SIMULATED server")
        if isinstance(text, str):
            prompt = [BOS_TOKEN_ID, *sim.tokenizer.encode(text)]
        elif isinstance(input_ids, list) and all(isinstance(t, int) for t in input_ids):
            prompt = list(input_ids)
        else:
            raise BadRequest("Either text, input_ids or input_embeds should be provided.")
        params = body.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise BadRequest("sampling_params: Input should be a valid dictionary", "Bad Request")
        rid = body.get("rid") if isinstance(body.get("rid"), str) else None
        lora = body.get("lora_path")  # GenerateReqInput.lora_path: an adapter's name
        if lora is not None and not isinstance(lora, str):
            raise BadRequest("batched lora_path is not supported by the SIMULATED server")
        max_new = _int(params, "max_new_tokens", 128)
        req = sim.prepare(prompt, max_new, bool(params.get("ignore_eos", False)), rid, adapter=lora or None)
    except BadRequest as e:
        if e.err_type == "Bad Request":
            return openai_error(str(e), "Bad Request")
        return _generate_error(e, stream)
    except ValueError as e:
        return _generate_error(e, stream)
    if stream:
        frames = _frames(sim.generate(req, True), lambda out: [sse(out)], lambda _: [])
        return _sse_response(frames)
    try:
        return json_response(await _last(sim.generate(req, False, request)))
    except ClientGone:
        return Response(status_code=499)


def _generate_error(e: ValueError, stream: bool) -> Response:
    if not stream:
        return json_response({"error": {"message": str(e)}}, 400)  # _create_error_response
    err = {"error": {"message": str(e), "type": "invalid_request_error", "code": 400, "retryable": False}}

    async def frames() -> AsyncGenerator[bytes, None]:
        yield sse(err)
        yield DONE

    return _sse_response(frames())


# -- OpenAI -----------------------------------------------------------------------------------
def _check_model(model: Any) -> tuple[str, str | None]:
    """The request's ``model`` and the LoRA adapter it names (``base:adapter``, split on the
    first colon as serving_base._parse_model_parameter does), or None."""
    if not isinstance(model, str):
        raise BadRequest("model: Input should be a valid string", "Bad Request")
    adapter = model.split(":", 1)[1].strip() if ":" in model else ""
    return model, adapter or None


async def openai_route(request: Request) -> Response:
    sim = _sim(request)
    chat = request.url.path.endswith("/chat/completions")
    try:
        body = await read_json(request, openai=True)
        model, adapter = _check_model(body.get("model", "default"))
        sampling = chat_sampling(body) if chat else completion_sampling(body)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise BadRequest("messages: Field required", "Bad Request")
            if not messages:
                raise BadRequest("Messages cannot be empty.")
            prompt_text = render_chat([m for m in messages if isinstance(m, dict)])
            max_new = _int(body, "max_completion_tokens", None) or _int(body, "max_tokens", None)
            prompt = [BOS_TOKEN_ID, *sim.tokenizer.encode(prompt_text)]
        else:
            prompt, prompt_text = _completion_prompt(sim, body.get("prompt"))
            max_new = _int(body, "max_tokens", 16)
            if max_new is not None and max_new <= 0:
                raise BadRequest("max_tokens must be positive", "Bad Request")
        ignore_eos = bool(body.get("ignore_eos", False))
        rid = uuid.uuid4().hex
        reqs = [
            sim.prepare(prompt, max_new, ignore_eos, rid if i == 0 else f"{rid}_{i}", sampling, i, adapter)
            for i in range(sampling.n)
        ]
    except ParamError as e:
        return openai_error(str(e), "Bad Request" if e.pydantic else "BadRequestError")
    except BadRequest as e:
        return openai_error(str(e), e.err_type)
    except ValueError as e:
        return openai_error(str(e))
    created = int(time.time())
    logprobs = sampling.top_logprobs is not None
    shape = (
        ChatShape(model, created, logprobs, sampling.tool_call) if chat else CompletionShape(model, created, logprobs)
    )
    if chat is False and body.get("echo"):
        shape.echo = prompt_text
    if not body.get("stream"):
        gone = False
        try:
            async with asyncio.TaskGroup() as tg:  # one choice's client-gone abort cancels the others
                tasks = [tg.create_task(_last(sim.generate(r, False, request))) for r in reqs]
        except* ClientGone:
            gone = True
        if gone:
            return Response(status_code=499)
        return json_response(shape.response([t.result() for t in tasks]))
    opts = body.get("stream_options") or {}
    shape.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    shape.continuous = bool(isinstance(opts, dict) and opts.get("continuous_usage_stats"))
    gen = _merged([sim.generate(r, True) for r in reqs])
    return await _kick_started(_frames(gen, shape.chunks, shape.tail))


def _completion_prompt(sim: SimServer, prompt: Any) -> tuple[list[int], str]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return [BOS_TOKEN_ID, *sim.tokenizer.encode(prompt)], prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt), ""
    if not prompt:
        raise BadRequest("Prompt cannot be empty")
    raise BadRequest("several prompts in one request are not supported by the SIMULATED server")


def routes() -> list[Route]:
    return [
        Route("/generate", generate, methods=["POST", "PUT"]),
        Route("/v1/chat/completions", openai_route, methods=["POST"]),
        Route("/v1/completions", openai_route, methods=["POST"]),
    ]

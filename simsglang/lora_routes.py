"""``/load_lora_adapter`` and ``/unload_lora_adapter`` of the sim (SGLang 0.5.17's
``http_server.py``): bodies ``LoadLoRAAdapterReqInput`` / ``UnloadLoRAAdapterReqInput``, answers
``LoRAUpdateOutput`` (200 on success, else 400). The adapters themselves: simsglang/lora.py."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from simsglang.api import BadRequest, json_response, openai_error, read_json
from simsglang.lora import LoraError
from simsglang.server import SimServer


def _sim(request: Request) -> SimServer:
    sim = request.app.state.sim
    assert isinstance(sim, SimServer)
    return sim


def _field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"{name}: Field required", "Bad Request")
    if not isinstance(value, str):
        raise BadRequest(f"{name}: Input should be a valid string", "Bad Request")
    return value


def _result(sim: SimServer, error: str | None) -> Response:
    """LoRAUpdateOutput: ``loaded_adapters`` maps every loaded adapter's name to its path."""
    body = {"success": error is None, "error_message": error or "", "loaded_adapters": sim.lora.loaded()}
    return json_response(body, 200 if error is None else 400)


async def load_lora_adapter(request: Request) -> Response:
    sim = _sim(request)
    try:
        body = await read_json(request, openai=False)
        name, path = _field(body, "lora_name"), _field(body, "lora_path")
    except BadRequest as e:
        return openai_error(str(e), e.err_type)
    try:
        await sim.lora.load(name, path, sim.clock.sleep)
    except LoraError as e:
        if not sim.settings.lora.enabled:  # refused before any backend call: no adapter list
            return json_response({"success": False, "error_message": str(e), "loaded_adapters": None}, 400)
        return _result(sim, str(e))
    return _result(sim, None)


async def unload_lora_adapter(request: Request) -> Response:
    sim = _sim(request)
    try:
        name = _field(await read_json(request, openai=False), "lora_name")
    except BadRequest as e:
        return openai_error(str(e), e.err_type)
    try:
        await sim.lora.unload(name)
    except LoraError as e:
        return json_response({"success": False, "error_message": str(e), "loaded_adapters": None}, 400)
    return _result(sim, None)


def routes() -> list[Route]:
    return [
        Route("/load_lora_adapter", load_lora_adapter, methods=["POST"]),
        Route("/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
    ]

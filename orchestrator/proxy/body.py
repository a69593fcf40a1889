"""A client's JSON request body: validated enough to route it, then rewritten for the engine.

The proxy reads only ``model`` (routing) and ``stream`` (how to relay the answer); everything
else is the engine's business and is forwarded as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from orchestrator.proxy.errors import ProxyError

# What happens to the body's `model` field on the way to the engine:
#  "rewrite": set to the instance's served name. SGLang's OpenAI routes parse a `model`
#             containing ':' as "<base>:<lora adapter>", so a client name is never passed on.
#  "drop":    removed. SGLang's native /generate takes a GenerateReqInput, which has no
#             `model` field; chimera accepts one there only to route the request.
ModelField = Literal["rewrite", "drop"]


# orjson decodes up to 1024 levels of nesting but encodes only up to 254 (its recursion limit);
# a body between the two parsed fine and then failed in engine_body with a 500. The proxy
# re-encodes every body, so the encoder's limit is the one a client gets told.
MAX_JSON_DEPTH = 254


@dataclass(frozen=True)
class ClientRequest:
    body: dict[str, Any]
    model: str  # the name the client sent (a name or an alias)
    stream: bool


def parse_request(raw: bytes) -> ClientRequest:
    """Raises ProxyError (400) for a body that is not a JSON object with a string `model` and,
    if present, a boolean `stream`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError.bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ProxyError.bad_request(
            f"the request body must be a JSON object, not {type(body).__name__}", code="invalid_body"
        )
    _check_encodable(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        got = "missing" if model is None else f"{type(model).__name__} {model!r}"
        raise ProxyError.bad_request(
            f"the request body needs a `model` string naming one of the served models "
            f"(GET /v1/models lists them); got {got}",
            code="missing_model",
            param="model",
        )
    return ClientRequest(body=body, model=model, stream=_stream(body.get("stream")))


def _check_encodable(body: dict[str, Any]) -> None:
    """Up front, before any hold: a body the proxy could not re-encode for the engine is the
    client's error (400), not chimera's. The only such body orjson can decode is one nested
    deeper than MAX_JSON_DEPTH."""
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise ProxyError.bad_request(
            f"the request body is nested too deeply: at most {MAX_JSON_DEPTH} levels of objects "
            f"and arrays are accepted ({exc})",
            code="json_too_deep",
        ) from exc


def _stream(value: object) -> bool:
    """`stream` is a JSON boolean (null or absent: false). Anything else is refused rather than
    guessed: the engine would read a truthy ``1`` as a stream the proxy then buffers whole."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise ProxyError.bad_request(
        f"`stream` must be true or false; got {type(value).__name__} {value!r}"[:200],
        code="invalid_stream",
        param="stream",
    )


def engine_body(req: ClientRequest, model_field: ModelField, served_name: str) -> bytes:
    """The body to send to the engine (the client's dict is not modified)."""
    body = dict(req.body)
    if model_field == "rewrite":
        body["model"] = served_name
    else:
        body.pop("model", None)
        _, sep, adapter = served_name.partition(":")
        if sep:  # a LoRA adapter served as a model (orchestrator/lora/): /generate names it so
            body["lora_path"] = adapter
    return orjson.dumps(body)

"""The one error envelope every HTTP error of chimera uses, OpenAI-shaped plus ``src``:

    {"error": {"message": str, "type": str, "param": str | None, "code": str | int | None,
               "src": "chimera" | "engine"}}

``src`` says who failed, as llama-swap does: "chimera" (the request, the proxy or the control
loop) or "engine" (an SGLang instance: unreachable, crashed, timed out, or answered an error).

ProxyError              an error the proxy answers itself; carries status, envelope fields and
                        extra headers (Retry-After). Its constructors below are the catalogue.
normalize_engine_error  an engine's non-2xx body -> the envelope (SGLang answers
                        ``{"object": "error", "message", "type", "param", "code"}`` on OpenAI
                        routes and ``{"error": {"message"}}`` on /generate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson
from starlette.responses import Response

Src = Literal["chimera", "engine"]

_MAX_TEXT = 2000  # an engine's non-JSON error body is quoted up to this many characters


class ProxyError(Exception):
    """An error answered to the client in the envelope (translated at the proxy boundary)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | int | None,
        src: Src = "chimera",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.src: Src = src
        self.param = param
        self.headers = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return envelope(self.message, type=self.type, code=self.code, src=self.src, param=self.param)

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, headers=self.headers, media_type="application/json")

    # -- the catalogue ------------------------------------------------------------------------

    @classmethod
    def bad_request(cls, message: str, *, code: str, param: str | None = None) -> ProxyError:
        return cls(400, message, type="invalid_request_error", code=code, param=param)

    @classmethod
    def model_not_found(cls, name: str, known: Iterable[str]) -> ProxyError:
        names = ", ".join(known) or "(none configured)"
        return cls(
            404,
            f"The model {name!r} does not exist. Known models: {names}",
            type="invalid_request_error",
            code="model_not_found",
            param="model",
        )

    @classmethod
    def unavailable(cls, message: str, retry_after_s: float | None) -> ProxyError:
        # Retry-After takes whole seconds (RFC 9110 delay-seconds); round up, at least 1.
        headers = {} if retry_after_s is None else {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
        return cls(503, message, type="service_unavailable_error", code="model_unavailable", headers=headers)

    @classmethod
    def deadline_unmeetable(cls, model: str, reason: str, retry_after_s: float) -> ProxyError:
        """Shed by local admission (Moore–Hodgson): 429 with an honest Retry-After."""
        retry = max(1, math.ceil(retry_after_s))
        return cls(
            429,
            f"model {model!r}: {reason}; retry in {retry} s",
            type="rate_limit_error",
            code="deadline_unmeetable",
            headers={"Retry-After": str(retry)},
        )

    @classmethod
    def engine_unreachable(cls, instance: str, exc: Exception) -> ProxyError:
        return cls(
            502,
            f"engine instance {instance} failed: {type(exc).__name__}: {exc}",
            type="server_error",
            code="engine_unreachable",
            src="engine",
        )

    @classmethod
    def engine_timeout(cls, instance: str, exc: Exception) -> ProxyError:
        return cls(
            504,
            f"engine instance {instance} timed out: {type(exc).__name__}: {exc}",
            type="server_error",
            code="engine_timeout",
            src="engine",
        )

    @classmethod
    def internal(cls) -> ProxyError:
        return cls(
            500,
            "internal error in chimera (the traceback is in the server log)",
            type="server_error",
            code="internal_error",
        )


def envelope(message: str, *, type: str, code: str | int | None, src: Src, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code, "src": src}}


def status_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status, for engine errors that carry none."""
    if status == 429:
        return "rate_limit_error"
    if status == 404:
        return "not_found_error"
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def normalize_engine_error(status: int, body: bytes) -> bytes:
    """An engine's non-2xx body in the envelope with ``src: "engine"``. A body already shaped
    ``{"error": {...}}`` keeps its fields (missing ones are filled in); anything else (SGLang's
    ``{"object": "error", ...}``, other JSON, plain text) becomes the envelope's message."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = dict(data["error"])
        err.setdefault("message", "")
        err.setdefault("type", status_type(status))
        err.setdefault("param", None)
        err.setdefault("code", status)
        err.setdefault("src", "engine")
        return orjson.dumps({**data, "error": err})
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        param = data.get("param")
        code = data.get("code")
        return orjson.dumps(
            envelope(
                data["message"],
                type=str(data.get("type") or status_type(status)),
                code=code if isinstance(code, str | int) and not isinstance(code, bool) else status,
                src="engine",
                param=param if isinstance(param, str) else None,
            )
        )
    if isinstance(data, dict) and isinstance(data.get("detail"), str):  # FastAPI's HTTPException
        message = data["detail"]
    else:
        message = body.decode("utf-8", "replace").strip()[:_MAX_TEXT]
    return orjson.dumps(
        envelope(
            message or f"engine answered HTTP {status} with an empty body",
            type=status_type(status),
            code=status,
            src="engine",
        )
    )

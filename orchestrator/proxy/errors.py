"""The one error envelope every HTTP error of chimera uses, OpenAI-shaped plus ``src``:

    {"error": {"message": str, "type": str, "param": str | None, "code": str, "src": "chimera" | "engine"}}

The convention, the same whoever raised the error (clients branch on ``type`` and ``code``):
- ``type`` is OpenAI's class of the HTTP status, ``status_type``: 400/404/405/409/422...
  ``invalid_request_error`` (OpenAI answers an unknown model with it too), 401
  ``authentication_error``, 403 ``permission_error``, 429 ``rate_limit_error``, 503
  ``service_unavailable_error``, any other 5xx ``server_error``.
- ``code`` is always a snake_case string, never an integer: chimera's own from the catalogue
  below (``model_not_found``, ``deadline_unmeetable``...); an engine's when it sends a string
  code, else the HTTP status's name (``status_code``: SGLang's integer ``code: 400`` becomes
  ``bad_request``).
- ``message`` is for a person; an engine's message is kept word for word.
- ``param`` names the offending request field, or null.

``src`` says who failed, as llama-swap does: "chimera" (the request, the proxy or the control
loop) or "engine" (an SGLang instance: unreachable, crashed, timed out, or answered an error).

ProxyError              an error the proxy answers itself; carries status, envelope fields and
                        extra headers (Retry-After). Its constructors below are the catalogue.
normalize_engine_error  an engine's non-2xx body -> the envelope (SGLang answers
                        ``{"object": "error", "message", "type", "param", "code"}`` on OpenAI
                        routes and ``{"error": {"message"}}`` on /generate).
StreamErrors            the same for an engine's error frames inside a 200 stream (SGLang's
                        ``data: {"error": {"message", "type", "code": 400}}``); every other
                        byte passes unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, Literal

import orjson
from starlette.responses import Response

Src = Literal["chimera", "engine"]

_MAX_TEXT = 2000
_STATUSES = {s.value for s in HTTPStatus}  # an engine's non-JSON error body is quoted up to this many characters


class ProxyError(Exception):
    """An error answered to the client in the envelope (translated at the proxy boundary)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        src: Src = "chimera",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = status_type(status)  # OpenAI's class of the status: never chosen per error
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

    def http_close(self) -> bytes:
        """The whole HTTP/1.1 response with ``connection: close``, for a refusal written below
        the app (limits.py, connections.py: the connection closes after it)."""
        body = self.body()
        extra = b"".join(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items())
        reason = HTTPStatus(self.status).phrase.encode("ascii") if self.status in _STATUSES else b"Error"
        return (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
            % (self.status, reason, len(body), extra, body)
        )

    # -- the catalogue ------------------------------------------------------------------------

    @classmethod
    def bad_request(cls, message: str, *, code: str, param: str | None = None) -> ProxyError:
        return cls(400, message, code=code, param=param)

    @classmethod
    def model_not_found(cls, name: str, known: Iterable[str]) -> ProxyError:
        names = ", ".join(known) or "(none configured)"
        return cls(
            404,
            f"The model {name!r} does not exist. Known models: {names}",
            code="model_not_found",
            param="model",
        )

    @classmethod
    def unavailable(cls, message: str, retry_after_s: float | None) -> ProxyError:
        """``message``: the control loop's reason, which may quote an instance's error (log
        tail, log path): only its ``public`` part is told."""
        # Retry-After takes whole seconds (RFC 9110 delay-seconds); round up, at least 1.
        headers = {} if retry_after_s is None else {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
        return cls(503, public(message), code="model_unavailable", headers=headers)

    @classmethod
    def deadline_unmeetable(cls, reason: str, retry_after_s: float) -> ProxyError:
        """Shed by local admission (Moore–Hodgson): 429 with an honest Retry-After. ``reason``
        names the model and says why, in numbers (policy/admission/queueing.py ``Shed``)."""
        retry = max(1, math.ceil(retry_after_s))
        return cls(
            429,
            f"{reason}. Retry in {retry} s, when the work ahead of it should be done (Retry-After).",
            code="deadline_unmeetable",
            headers={"Retry-After": str(retry)},
        )

    @classmethod
    def engine_unreachable(cls, instance: str, exc: Exception) -> ProxyError:
        """``exc`` (its address, the OS error) is for the log, not the client."""
        return cls(
            502,
            f"engine instance {instance} could not be reached or broke off its answer "
            f"({type(exc).__name__}; the details are in chimera's log)",
            code="engine_unreachable",
            src="engine",
        )

    @classmethod
    def engine_timeout(cls, instance: str, exc: Exception) -> ProxyError:
        return cls(
            504,
            f"engine instance {instance} timed out: {public(str(exc))}",
            code="engine_timeout",
            src="engine",
        )

    @classmethod
    def internal(cls) -> ProxyError:
        return cls(
            500,
            "internal error in chimera (the traceback is in the server log)",
            code="internal_error",
        )


# What a client is never told (operators read it in chimera's log and the engines' logs):
_LOG_REF = re.compile(r"\s*\(log: [^)]*\)")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\")]+", re.I)
_SOCKADDR = re.compile(r"\s*\(\s*'[^']*'\s*,\s*\d+\s*\)")  # ('127.0.0.1', 30001)
_ADDRESS = re.compile(r"\b(?:(?:\d{1,3}\.){3}\d{1,3}|localhost|\[[0-9a-f:]+\])(?::\d+)?\b", re.I)
_PORT = re.compile(r"\bport \d+\b", re.I)
_COMMAND = re.compile(r"\S*python[\d.]*\s+-m\s+\S+.*", re.I)
_FLAG = re.compile(r"(?<!\S)--[a-z][\w-]*(?:[= ](?!-)[^\s;,)]+)?", re.I)
# an absolute path of two or more parts, or a relative one ending in a file name; not an
# HTTP route (``/v1/...``, ``/generate``: one part)
_PATH = re.compile(
    r"(?<![\w:/])(?:~|\.{1,2})?/(?!v1/)[\w.@+-]+(?:/[\w.@+-]+)+/?"
    r"|\b[\w.-]+(?:/[\w.-]+)*/[\w.-]+\.(?:log|py|sock|json|yaml|so)\b"
)


def public(message: str) -> str:
    """``message`` as a client may read it: its first line (what follows, such as an engine's
    log tail, stays in the logs) without command lines, flags, local paths, addresses or
    ports."""
    first, newline, _ = message.strip().partition("\n")
    first = re.sub(r"[;:,]?\s*last lines:\s*$", "", first)
    for pattern, repl in (
        (_LOG_REF, ""),
        (_COMMAND, "<command>"),
        (_URL, "<address>"),
        (_SOCKADDR, ""),
        (_ADDRESS, "<address>"),
        (_PORT, "port <n>"),
        (_FLAG, "<flag>"),
        (_PATH, "<path>"),
    ):
        first = pattern.sub(repl, first)
    return first + (" (more in chimera's log)" if newline else "")


def envelope(message: str, *, type: str, code: str, src: Src, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code, "src": src}}


def status_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status (the convention above)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status == 503:
        return "service_unavailable_error"
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def status_code(status: int) -> str:
    """The envelope's ``code`` for an error that names none of its own: the HTTP status's name
    (400 ``bad_request``, 500 ``internal_server_error``), ``http_<n>`` for a nonstandard one."""
    try:
        return HTTPStatus(status).name.lower()
    except ValueError:
        return f"http_{status}"


def _engine_code(code: Any, status: int) -> str:
    """An engine's own string code is kept; SGLang's integer (the HTTP status again) is not."""
    return code if isinstance(code, str) and code else status_code(status)


def normalize_engine_error(status: int, body: bytes) -> bytes:
    """An engine's non-2xx body in the envelope with ``src: "engine"``, ``type`` and ``code``
    by the convention above and the engine's message kept. A body already shaped
    ``{"error": {...}}`` keeps its other fields; anything else (SGLang's
    ``{"object": "error", ...}``, other JSON, plain text) becomes the envelope's message."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = dict(data["error"])
        err.setdefault("message", "")
        err.setdefault("param", None)
        err["type"] = status_type(status)
        err["code"] = _engine_code(err.get("code"), status)
        err["src"] = "engine"
        return orjson.dumps({**data, "error": err})
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        param = data.get("param")
        return orjson.dumps(
            envelope(
                data["message"],
                type=status_type(status),
                code=_engine_code(data.get("code"), status),
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
            code=status_code(status),
            src="engine",
        )
    )


_ERROR_FRAME = b'data: {"error"'


class StreamErrors:
    """Rewrites the error frames of a relayed stream into the envelope, by the convention
    above: the frame's integer ``code`` (SGLang's HTTP status) gives ``type`` and ``code``,
    500 if it has none. Other frames and the engine's chunk boundaries pass unchanged; only an
    incomplete frame that may still turn out to be an error frame is held back until complete
    (``flush`` hands it over when the stream ends)."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data, self._held = self._held + chunk, b""
        head, sep, tail = data.rpartition(b"\n\n")
        if tail and tail[: len(_ERROR_FRAME)] == _ERROR_FRAME[: len(tail)]:
            self._held, data = tail, head + sep
        if b'"error"' not in data:
            return data
        return b"\n\n".join(_error_frame(f) for f in data.split(b"\n\n"))

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _error_frame(frame: bytes) -> bytes:
    if not frame.startswith(_ERROR_FRAME):
        return frame
    payload = frame[len(b"data:") :].strip()
    try:
        data: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return frame
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or "choices" in data:
        return frame
    code = err.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 500
    return b"data: " + normalize_engine_error(status, payload)

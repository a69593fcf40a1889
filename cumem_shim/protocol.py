"""The control channel's wire format: JSON lines over a Unix stream socket, one per instance.

Pure (no sockets): used by the shim's server thread (``channel.py``), the sim engine's asyncio
server and the orchestrator's client (``orchestrator/kv/client.py``).

Each request is one JSON object on one line; each gets exactly one response line, in order.
A connection may carry any number of requests. ``id``, when given, is echoed.

    > {"op": "status"}
    < {"ok": true, "protocol": 1, "status": {"mapped_bytes": 67108864, "used_tokens": 0, ...}}
    > {"op": "set_limit", "bytes": 8589934592, "revision": 7}
    < {"ok": true, "protocol": 1, "applied": true, "accepted": {"bytes": 8589934592,
       "revision": 7}, "status": {...}}
    > {"op": "set_limit", "bytes": 1, "revision": 3}            (stale: 3 <= 7)
    < {"ok": true, "protocol": 1, "applied": false, "accepted": {"bytes": 8589934592,
       "revision": 7}, "status": {...}}
    > not json
    < {"ok": false, "protocol": 1, "error": {"type": "bad_request", "message": "..."}}

``accepted`` is the limit the shim holds now; ``status`` is what the scheduler has applied
(its ``revision`` catches up with ``accepted.revision`` at the scheduler's next iteration).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cumem_shim.errors import ProtocolError
from cumem_shim.limit import Accepted
from cumem_shim.types import MapCounts, ShrinkCounts, Status

_C = TypeVar("_C", MapCounts, ShrinkCounts)
PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024
# Linux's sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


@dataclass(frozen=True)
class SetLimit:
    bytes: int
    revision: int
    id: Any = None


@dataclass(frozen=True)
class GetStatus:
    id: Any = None


Request = SetLimit | GetStatus


class Target(Protocol):
    """What a channel controls: ``ElasticKV`` in the shim, the sim's KV in the sim engine."""

    def set_limit(self, limit_bytes: int, revision: int) -> Accepted: ...

    def status(self) -> Status: ...


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _int(obj: dict[str, Any], key: str, minimum: int) -> int:
    val = obj.get(key)
    if isinstance(val, bool) or not isinstance(val, int) or val < minimum:
        raise ProtocolError(f"`{key}` must be an integer >= {minimum} (got {val!r})")
    return val


def parse_request(line: bytes) -> Request:
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"request longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("a request is a JSON object with an `op`")
    op = obj.get("op")
    if op == "status":
        return GetStatus(obj.get("id"))
    if op == "set_limit":
        return SetLimit(_int(obj, "bytes", 0), _int(obj, "revision", 1), obj.get("id"))
    raise ProtocolError(f"unknown op {op!r} (known: status, set_limit)")


def request_json(req: Request) -> dict[str, Any]:
    out: dict[str, Any] = (
        {"op": "set_limit", "bytes": req.bytes, "revision": req.revision}
        if isinstance(req, SetLimit)
        else {"op": "status"}
    )
    if req.id is not None:
        out["id"] = req.id
    return out


def status_json(st: Status) -> dict[str, Any]:
    out = st._asdict()
    out["maps"] = st.maps._asdict()
    out["shrink"] = st.shrink._asdict()
    return out


def _counts(obj: dict[str, Any], key: str, cls: type[_C]) -> _C:
    """An optional nested object of counts (``maps``, ``shrink``): absent fields are 0."""
    raw = obj.get(key, {})
    if not isinstance(raw, dict):
        raise ProtocolError(f"`status.{key}` must be an object of counts (got {raw!r:.100})")
    try:
        return cls(**{f: raw[f] for f in cls._fields if f in raw})
    except TypeError as exc:
        raise ProtocolError(f"`status.{key}` is not an object of counts ({exc})") from None


def status_from_json(obj: Any) -> Status:
    if not isinstance(obj, dict):
        raise ProtocolError(f"`status` must be an object (got {obj!r})")
    try:
        fields = {f: obj[f] for f in Status._fields if f not in ("maps", "shrink")}
    except KeyError as exc:
        raise ProtocolError(f"`status` lacks {exc.args[0]!r}") from None
    return Status(**fields, maps=_counts(obj, "maps", MapCounts), shrink=_counts(obj, "shrink", ShrinkCounts))


def handle(line: bytes, target: Target) -> bytes:
    """One request line in, one response line out. Never raises for a bad request."""
    req_id: Any = None
    try:
        req = parse_request(line)
        req_id = req.id
        out: dict[str, Any] = {"ok": True, "protocol": PROTOCOL_VERSION}
        if isinstance(req, SetLimit):
            acc = target.set_limit(req.bytes, req.revision)
            out["applied"] = acc.applied
            out["accepted"] = {"bytes": acc.limit_bytes, "revision": acc.revision}
        out["status"] = status_json(target.status())
    except ProtocolError as exc:
        out = {"ok": False, "protocol": PROTOCOL_VERSION, "error": {"type": "bad_request", "message": str(exc)}}
    if req_id is not None:
        out["id"] = req_id
    return encode(out)

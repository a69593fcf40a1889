"""The orchestrator's side of one instance's shim control channel (asyncio).

One short Unix-socket connection per call (a connect is tens of microseconds; the ledger calls
each instance about once a second), so a restarted server needs no reconnect logic. The wire
format is ``cumem_shim.protocol`` (pure Python; importing it pulls in no CUDA).

Errors are translated here: ``ShimUnavailable`` (transient: the socket is not there yet or the
server is gone) and ``ShimProtocolError`` (the other side is not a shim of this protocol).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cumem_shim.errors import ProtocolError
from cumem_shim.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    GetStatus,
    Request,
    SetLimit,
    encode,
    request_json,
    status_from_json,
)
from cumem_shim.settings import rank_sockets
from cumem_shim.types import Status
from orchestrator.errors import EngineError

DEFAULT_TIMEOUT_S = 2.0


class ShimUnavailable(EngineError):
    """No shim answers at the socket (transient while the server starts; if it persists after
    the server is ready, the plugin is not loaded: is cumem_shim importable by the server's
    Python and registered under the `sglang.srt.plugins` entry points?)."""

    transient = True


class ShimProtocolError(EngineError):
    """The answer is not the shim protocol this orchestrator speaks (fatal: versions differ)."""


@dataclass(frozen=True)
class LimitReply:
    applied: bool  # False: the revision was stale, the shim kept its limit
    accepted_bytes: int
    accepted_revision: int
    status: Status


async def wait_ready(path: str, timeout_s: float, poll_s: float = 0.2) -> Status:
    """Until the shim at ``path`` answers (the supervisor calls it once the server is ready:
    the socket is made with the KV pool, before SGLang serves, so a server that answers HTTP
    but not here runs without the shim). Raises ShimUnavailable after ``timeout_s``."""
    client = ShimClient(path)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await client.status()
        except ShimUnavailable:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(poll_s)


class ShimClient:
    def __init__(self, path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def status(self) -> Status:
        return status_from_json((await self._call(GetStatus()))["status"])

    async def set_limit(self, limit_bytes: int, revision: int) -> LimitReply:
        out = await self._call(SetLimit(limit_bytes, revision))
        acc = out.get("accepted")
        if not isinstance(acc, dict):
            raise ShimProtocolError(f"{self.path}: set_limit answer lacks `accepted`: {out}")
        return LimitReply(
            bool(out.get("applied")), int(acc["bytes"]), int(acc["revision"]), status_from_json(out["status"])
        )

    async def _call(self, req: Request) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE_BYTES)
                try:
                    writer.write(encode(request_json(req)))
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            raise ShimUnavailable(f"KV shim at {self.path} does not answer: {exc!r}") from exc
        try:
            out = json.loads(line)
        except ValueError as exc:
            raise ShimProtocolError(f"{self.path}: not a JSON answer: {line[:200]!r}") from exc
        if not isinstance(out, dict) or out.get("protocol") != PROTOCOL_VERSION:
            raise ShimProtocolError(f"{self.path}: expected protocol {PROTOCOL_VERSION}, got {line[:200]!r}")
        if not out.get("ok"):
            raise ShimProtocolError(f"{self.path}: refused {request_json(req)}: {out.get('error')}")
        try:
            status_from_json(out.get("status"))
        except ProtocolError as exc:
            raise ShimProtocolError(f"{self.path}: {exc}") from exc
        return out


def combine(statuses: Sequence[Status]) -> Status:
    """One server's status from its TP ranks' (rank 0's first). Limits and capacity: the min
    over ranks, so the ledger never counts on room some rank lacks (all ranks apply a limit in
    the same step, so they agree once it is applied); mapped bytes and tokens in use: the max,
    since the ledger budgets per GPU and must count the most any one GPU of the group holds;
    draining: any rank."""
    if len(statuses) == 1:
        return statuses[0]
    first = statuses[0]
    return first._replace(
        mapped_bytes=max(s.mapped_bytes for s in statuses),
        used_tokens=max(s.used_tokens for s in statuses),
        limit_bytes=min(s.limit_bytes for s in statuses),
        revision=min(s.revision for s in statuses),
        capacity_tokens=min(s.capacity_tokens for s in statuses),
        limit_tokens=min(s.limit_tokens for s in statuses),
        draining=any(s.draining for s in statuses),
    )


class GroupClient:
    """A server's shims, one per TP rank (``cumem_shim.settings.rank_socket``): ``set_limit``
    goes to rank 0, which carries it to every rank in the same scheduler step
    (``cumem_shim/ranks.py``); ``status`` reads every rank and ``combine``s them. A TP-1 server
    is one ``ShimClient``."""

    def __init__(self, path: str, tp_size: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.ranks = [ShimClient(p, timeout_s) for p in rank_sockets(path, tp_size)]

    async def status(self) -> Status:
        if len(self.ranks) == 1:
            return await self.ranks[0].status()
        return combine(await asyncio.gather(*(r.status() for r in self.ranks)))

    async def set_limit(self, limit_bytes: int, revision: int) -> LimitReply:
        reply = await self.ranks[0].set_limit(limit_bytes, revision)
        if len(self.ranks) == 1:
            return reply
        others = await asyncio.gather(*(r.status() for r in self.ranks[1:]))
        return replace(reply, status=combine([reply.status, *others]))

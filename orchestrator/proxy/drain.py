"""A stop of the proxy that loses no client connection it let in.

uvicorn's own shutdown closes the listening socket, then closes every connection whose request
has not begun, and waits for the requests in flight. Two kinds of client are lost that way: a
connection the kernel completed but the proxy had not accepted yet (closing the listening socket
resets it), and one accepted whose request head had not been read yet (closed without an
answer). Both are common under load during a restart (SIGUSR1, then a new ``up``).

``quiesce`` runs first: it makes the kernel drop new connection attempts on the listening
sockets (a socket filter that drops every packet: a dropped SYN is retried by the client's
kernel after ~1 s, when the next chimera listens or the port refuses), then waits, bounded, until
the accept queue is empty and every accepted connection has its request head read. Requests
arriving meanwhile are served as usual; uvicorn's shutdown then waits for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from orchestrator.sockets import OptSocket, attach_bpf

log = logging.getLogger("chimera.proxy")

QUIESCE_S = 1.0  # at most this long for the accept queue to empty and request heads to arrive
POLL_S = 0.01
SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>; not exported by Python's socket module
_TCP_INFO_LEN = 104
_UNACKED_AT = 24  # struct tcp_info: tcpi_unacked, a listening socket's accept queue length
# classic BPF, one instruction: BPF_RET | BPF_K, 0 = keep no byte of the packet (drop it)
_DROP_ALL = [(0x06, 0, 0, 0)]


class Sock(OptSocket, Protocol):  # socket.socket and asyncio's TransportSocket
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def refuse_new(sock: Sock) -> bool:
    """New connection attempts on the listening ``sock`` are dropped (not refused: the client
    retries); those already in its accept queue stay. False where the kernel does not allow it
    (not Linux): then nothing changed."""
    try:
        attach_bpf(sock, SO_ATTACH_FILTER, _DROP_ALL)
    except OSError as exc:
        log.info("could not stop new connections before the drain: %s", exc)
        return False
    return True


def accept_queue(sock: Sock) -> int | None:
    """Connections the kernel completed on the listening ``sock`` that are not accepted yet;
    None where unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):
        return None
    return int(struct.unpack_from("I", info, _UNACKED_AT)[0]) if len(info) >= _UNACKED_AT + 4 else None


def waiting_for_head(connections: Iterable[Any]) -> int:
    """Accepted connections whose request has not begun to be handled (uvicorn's protocol has
    no ``cycle`` yet), leaving out those the proxy refused (answered 503 and closing)."""
    return sum(1 for c in connections if getattr(c, "cycle", True) is None and not getattr(c, "_refused", False))


class Server(Protocol):  # uvicorn.Server, as far as the drain reads it
    servers: list[asyncio.Server]

    @property
    def server_state(self) -> Any: ...


async def quiesce(
    server: Server, bound_s: float = QUIESCE_S, clock: Callable[[], float] = time.monotonic, drop_new: bool = True
) -> float:
    """Stops new connections on ``server``'s listening sockets and waits until every connection
    already let in has been accepted and has its request head, or ``bound_s`` passed (a client
    that sends nothing is not waited for longer). Returns the seconds it waited. ``drop_new``
    False: a socket that outlives this process (socket activation, handover.py) keeps taking
    connections into its backlog, where the next chimera accepts them: this process stops
    accepting at once, and only the ones already accepted here are waited for."""
    socks = [s for srv in server.servers for s in srv.sockets] if drop_new else []
    if not drop_new:  # its queue is the next process's to serve; the socket stays open elsewhere
        for srv in server.servers:
            srv.close()
    for s in socks:
        refuse_new(s)
    start = clock()
    while True:
        # first a turn of the event loop: a connection asyncio has just accepted reaches the
        # server's list only then (its transport and protocol are made in a task of its own)
        await asyncio.sleep(POLL_S)
        queued = sum(accept_queue(s) or 0 for s in socks)
        if queued == 0 and waiting_for_head(server.server_state.connections) == 0:
            break
        if clock() - start >= bound_s:
            break
    return clock() - start

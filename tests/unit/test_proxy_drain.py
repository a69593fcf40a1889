"""The proxy's stop (proxy/drain.py): new connections are dropped, not refused nor reset, and
every connection already let in gets its answer, against a real uvicorn with the proxy's HTTP
options."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.proxy.drain import accept_queue, quiesce, refuse_new, waiting_for_head
from orchestrator.proxy.limits import RequestLimits, uvicorn_http_options

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="socket filters and TCP_INFO are Linux's")

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _listener() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s, s.getsockname()[1]


def test_new_connections_are_dropped_and_queued_ones_kept() -> None:
    s, port = _listener()
    queued = socket.create_connection(("127.0.0.1", port))
    queued.sendall(REQUEST)
    try:
        assert accept_queue(s) == 1
        assert refuse_new(s)
        # neither accepted nor refused: the SYN is dropped, the client's kernel retries it
        with pytest.raises(TimeoutError):
            socket.create_connection(("127.0.0.1", port), timeout=0.3)
        conn, _ = s.accept()  # the one queued before is still there, with its request
        assert conn.recv(100) == REQUEST
        assert accept_queue(s) == 0
        conn.close()
    finally:
        queued.close()
        s.close()


def test_waiting_for_head_counts_connections_without_a_request() -> None:
    class Conn:
        def __init__(self, cycle: object, refused: bool = False) -> None:
            self.cycle, self._refused = cycle, refused

    assert waiting_for_head([Conn(None), Conn(object()), Conn(None, refused=True)]) == 1


async def _hello(request: Request) -> Response:
    await asyncio.sleep(0.05)
    return Response(b"hello")


async def _late_client(port: int, late_s: float) -> bytes:
    """Connects at once, sends its request ``late_s`` later, returns all it read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.sleep(late_s)
        writer.write(REQUEST)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def _stop_with_late_client(drain: bool) -> bytes:
    config = uvicorn.Config(
        Starlette(routes=[Route("/", _hello)]),
        host="127.0.0.1",
        port=0,
        log_level="critical",
        lifespan="off",
        **uvicorn_http_options(RequestLimits()),
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)  # its startup, not a wall-clock assertion
    port = srv.servers[0].sockets[0].getsockname()[1]
    client = asyncio.create_task(_late_client(port, 0.15))
    while not srv.server_state.connections:  # noqa: ASYNC110
        await asyncio.sleep(0.005)  # accepted, its request not sent yet
    if drain:
        await quiesce(srv)
    srv.should_exit = True
    await task
    return await client


async def test_a_connection_accepted_before_its_request_is_answered() -> None:
    # uvicorn alone closes it without an answer (the client reads nothing)...
    assert await _stop_with_late_client(drain=False) == b""
    # ...after quiesce its request is read and answered before uvicorn stops
    answer = await _stop_with_late_client(drain=True)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello"), answer


async def test_a_socket_that_outlives_the_process_stops_being_accepted_on_at_once() -> None:
    """Socket activation or a handover (orchestrator/handover.py): the stopping proxy accepts
    nothing more, and a client that connects meanwhile waits in the backlog for the next one."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    keeper = sock.dup()  # the next chimera's copy (systemd's, or the holder's)
    port = sock.getsockname()[1]
    config = uvicorn.Config(Starlette(routes=[Route("/", _hello)]), log_level="critical", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)
    await quiesce(srv, drop_new=False)
    _, writer = await asyncio.open_connection("127.0.0.1", port)  # after the stop: queued, not refused
    srv.should_exit = True
    await task
    keeper.setblocking(False)
    conn, _ = keeper.accept()  # still in the backlog: neither accepted by the stopped proxy nor reset
    conn.close()
    writer.close()
    keeper.close()

"""The proxy's listeners (``up``'s own, ``--proxies``' shared one) accept connections with
TCP_NODELAY: asyncio sets it only on sockets that name IPPROTO_TCP, and without it every answer
on a kept-alive connection waited ~40 ms for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from orchestrator.cli.main import _listen
from orchestrator.dataplane.pool import reuseport_socket


def _accepted_nodelay(listener: socket.socket) -> int:
    async def run() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_client, sock=listener)  # as uvicorn serves sockets=[...]
        port = listener.getsockname()[1]
        _, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 5)
        finally:
            w.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


@pytest.mark.parametrize(
    "make",
    [
        lambda: _listen("127.0.0.1", 0),
        lambda: _listen("127.0.0.1", 0, reuse_port=True),
        lambda: reuseport_socket("127.0.0.1", 0),
    ],
    ids=["up", "up --proxies", "proxy worker"],
)
def test_accepted_connections_have_tcp_nodelay(make: Callable[[], socket.socket]) -> None:
    listener = make()
    assert listener.proto == socket.IPPROTO_TCP
    assert _accepted_nodelay(listener) != 0


def test_a_listener_without_the_protocol_named_would_accept_with_nagle_on() -> None:
    """What the test above guards against: the socket asyncio is handed decides."""
    bare = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bare.bind(("127.0.0.1", 0))
    bare.listen()
    assert _accepted_nodelay(bare) == 0

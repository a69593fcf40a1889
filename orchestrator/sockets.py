"""The proxy's listening sockets, made so that the connections they accept answer without delay."""

from __future__ import annotations

import socket


def tcp_socket(host: str) -> socket.socket:
    """A TCP socket for a listener on ``host``, its protocol named: asyncio sets TCP_NODELAY on
    an accepted connection only when the socket says IPPROTO_TCP (``base_events._set_nodelay``),
    and one made with protocol 0 says 0. Without it, a response written in two parts (head, then
    body or each streamed chunk) waits for the client's delayed ACK: ~40 ms on every request of
    a kept-alive connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)

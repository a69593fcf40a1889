"""The proxy's listening sockets, made so that the connections they accept answer without delay,
and where chimera's own Unix sockets can live."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class OptSocket(Protocol):  # socket.socket and asyncio's TransportSocket
    def setsockopt(self, level: int, optname: int, value: bytes, /) -> None: ...


UNIX_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path is 108 with its terminating NUL)


def tcp_socket(host: str) -> socket.socket:
    """A TCP socket for a listener on ``host``, its protocol named: asyncio sets TCP_NODELAY on
    an accepted connection only when the socket says IPPROTO_TCP (``base_events._set_nodelay``),
    and one made with protocol 0 says 0. Without it, a response written in two parts (head, then
    body or each streamed chunk) waits for the client's delayed ACK: ~40 ms on every request of
    a kept-alive connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)


def unix_socket_dir(preferred: Path, longest_name: str, prefix: str) -> tuple[Path, bool]:
    """``preferred`` where ``preferred/longest_name`` fits a Unix socket's path, else a new
    private (0700) directory under the temporary directory; and whether it is that private one
    (its maker removes it)."""
    if len(os.fsencode(preferred.absolute() / longest_name)) <= UNIX_PATH_MAX:
        return preferred, False
    return Path(tempfile.mkdtemp(prefix=prefix)), True


def attach_bpf(sock: OptSocket, option: int, program: Sequence[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF ``program`` (``struct sock_filter`` instructions: code, jt, jf, k)
    to ``sock`` with the SOL_SOCKET ``option`` (SO_ATTACH_FILTER, SO_ATTACH_REUSEPORT_CBPF...);
    the kernel copies it. OSError where the kernel refuses it (not Linux, too old)."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in program))
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("HP", len(program), ctypes.addressof(code)))

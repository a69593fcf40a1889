"""Free loopback ports for engine instances (HTTP and NCCL must differ per instance)."""

from __future__ import annotations

import socket


def free_ports(n: int, host: str = "127.0.0.1", exclude: set[int] | None = None) -> list[int]:
    """``n`` distinct ports that were free a moment ago (the OS picks them)."""
    exclude = exclude or set()
    out: list[int] = []
    socks = []
    try:
        while len(out) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in exclude:
                out.append(port)
    finally:
        for s in socks:
            s.close()
    return out

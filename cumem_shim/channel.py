"""The control channel's server inside the SGLang scheduler process: a Unix stream socket at
``CHIMERA_SHIM_SOCKET``, served by daemon threads (one per connection) speaking
``protocol.py``. The threads only call ``Target.set_limit`` / ``Target.status``, which are
thread-safe; the scheduler thread applies limits itself.

The socket file is created when the KV pool is created (so its presence tells the orchestrator
that the shim is active in that server) and removed by ``close``; a stale socket left by a
dead process at the same path is replaced.
"""

from __future__ import annotations

import os
import socketserver
import stat
import threading

from cumem_shim.errors import ShimConfigError
from cumem_shim.protocol import MAX_LINE_BYTES, MAX_SOCKET_PATH_BYTES, Target, handle


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            if line.strip():
                self.wfile.write(handle(line, self.server.target))
                self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    target: Target


class ChannelServer:
    def __init__(self, path: str, target: Target) -> None:
        self.path = claim_socket_path(path)
        self._server = _Server(path, _Handler)
        self._server.target = target
        os.chmod(path, 0o600)  # the orchestrator runs as the same user
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="cumem-shim-channel", daemon=True
        )

    def start(self) -> ChannelServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        if os.path.lexists(self.path):
            os.unlink(self.path)


def claim_socket_path(path: str) -> str:
    """Check ``path`` and remove a stale socket left there by a server that died."""
    check_socket_path(path)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ShimConfigError(
                f"CHIMERA_SHIM_SOCKET={path} exists and is not a socket: give the shim a path of its own"
            )
        os.unlink(path)
    return path


def check_socket_path(path: str) -> None:
    if not path or len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ShimConfigError(
            f"CHIMERA_SHIM_SOCKET={path!r}: a Unix socket path must be 1-{MAX_SOCKET_PATH_BYTES} "
            "bytes; use a short directory such as /tmp/chimera-<uid>/"
        )
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise ShimConfigError(f"CHIMERA_SHIM_SOCKET={path}: directory {parent} does not exist")

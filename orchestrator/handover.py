"""The proxy's listening socket handed from a stopping chimera to the next ``up``.

A stop that leaves the engines running (SIGUSR1, ``--keep-engines-on-exit``) expects a restart.
Instead of closing its listening socket (new connections refused, or dropped and retried by the
client's kernel a second later), the stopping chimera passes it to a small holder process
(``hand_over``) before it drains, and stops accepting: connections that arrive meanwhile wait in
the socket's backlog. The next ``up`` with the same run folder asks the holder for the socket
(``take_over``) before binding one, and serves those connections; nobody is refused or waits for
a SYN retry, whatever the restart takes. A holder nobody asks closes the socket and exits after
``CHIMERA_HANDOVER_S`` (the clients in its backlog then see a reset, as at any close).

The holder listens on a Linux abstract Unix socket named after the run folder (nothing to clean
up in the file system) and gives the socket only to a process of its own user (SO_PEERCRED).
Standard library only: the CLI takes the socket over before importing the rest of chimera.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import sys
from pathlib import Path

TAKE_TIMEOUT_S = 2.0  # a holder that does not answer by then is not waited for
SO_DETACH_FILTER = 27  # Linux <asm-generic/socket.h>; not exported by Python's socket module
_TAKEN, _DECLINED = b"Y", b"N"

# The holder: argv = listening fd, Unix listening fd, seconds to wait. It never accepts on the
# proxy's socket; it only keeps it open and sends it to the first caller of its own user who
# takes it (a caller that declines, for another address, leaves it to the next).
_HOLDER = """
import os, socket, struct, sys, time
lfd, ufd, wait_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
unix = socket.socket(fileno=ufd)
deadline = time.monotonic() + wait_s
while (left := deadline - time.monotonic()) > 0:
    unix.settimeout(left)
    try:
        conn, _ = unix.accept()
    except OSError:
        break
    with conn:
        try:
            conn.settimeout(2.0)
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                continue
            socket.send_fds(conn, [b"S"], [lfd])
            if conn.recv(1) == b"Y":
                break
        except OSError:
            continue
"""


def address(run_dir: Path) -> str:
    """The holder's abstract Unix socket name for ``run_dir`` (absolute)."""
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:32]
    return f"\0chimera-handover-{digest}"


def hand_over(sock: socket.socket, run_dir: Path, wait_s: float) -> bool:
    """Start a holder of the listening ``sock`` for the next ``up`` in ``run_dir``, for at most
    ``wait_s``. True when it
    holds a copy (the socket then outlives this process: stop accepting, drop nothing); False
    where it cannot (not Linux, a holder already there): the caller drains as it would."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        unix.bind(address(run_dir))
        unix.listen(4)
        # the holder inherits both descriptors: from here on the socket outlives this process
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HOLDER, str(sock.fileno()), str(unix.fileno()), f"{wait_s:g}"],
            pass_fds=(sock.fileno(), unix.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not stopped by a Ctrl-C of this terminal's process group
        )
    except OSError:
        return False
    finally:
        unix.close()
    return True


def take_over(run_dir: Path, host: str, port: int) -> socket.socket | None:
    """The listening socket a previous chimera of ``run_dir`` handed over, when it listens on
    ``host:port``; else None (no holder: bind as usual). Not inherited by engines; a drop
    filter the previous chimera may have attached is detached."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.settimeout(TAKE_TIMEOUT_S)
    try:
        unix.connect(address(run_dir))
        _, fds, _, _ = socket.recv_fds(unix, 1, 1)
        if not fds:
            return None
        sock = socket.socket(fileno=fds[0])
        if not _listens_on(sock, host, port):
            sock.close()
            unix.sendall(_DECLINED)
            return None
        unix.sendall(_TAKEN)
    except OSError:
        return None
    finally:
        unix.close()
    sock.set_inheritable(False)
    with contextlib.suppress(OSError):  # none attached (ENOENT)
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    return sock


def _listens_on(sock: socket.socket, host: str, port: int) -> bool:
    try:
        bound, bound_port = sock.getsockname()[:2]
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except (OSError, ValueError):
        return False
    if not listening or sock.type != socket.SOCK_STREAM or bound_port != port:
        return False
    if bound == host:
        return True
    try:  # a name (localhost) for the address it is bound to
        return any(info[4][0] == bound for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except OSError:
        return False

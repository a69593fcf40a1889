"""The proxy's listening socket kept by a holder process between two chimeras (handover.py):
a client that connects meanwhile waits in the backlog and is accepted by the next one."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from orchestrator.cli import main as cli
from orchestrator.handover import hand_over, take_over
from orchestrator.supervisor import statefile


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def test_a_connection_made_between_two_chimeras_is_accepted_by_the_next(tmp_path: Path) -> None:
    sock, port = _listening()
    assert hand_over(sock, tmp_path, wait_s=10)
    sock.close()  # the stopping chimera's copy: the holder's keeps the socket listening
    client = socket.create_connection(("127.0.0.1", port), timeout=2)  # not refused
    taken = take_over(tmp_path, "127.0.0.1", port)
    assert taken is not None
    try:
        assert not taken.get_inheritable()
        conn, _ = taken.accept()  # the connection queued while no chimera ran
        client.sendall(b"x")
        assert conn.recv(1) == b"x"
        conn.close()
        assert take_over(tmp_path, "127.0.0.1", port) is None  # the holder gave it once and left
    finally:
        client.close()
        taken.close()


def test_another_address_is_declined_and_left_for_the_next_up(tmp_path: Path) -> None:
    sock, port = _listening()
    assert hand_over(sock, tmp_path, wait_s=10)
    sock.close()
    assert take_over(tmp_path, "127.0.0.1", port + 1 if port < 65535 else port - 1) is None
    taken = take_over(tmp_path, "localhost", port)  # a name of the address it is bound to
    assert taken is not None
    taken.close()


def test_without_a_holder_nothing_is_taken_at_once(tmp_path: Path) -> None:
    t0 = time.monotonic()
    assert take_over(tmp_path, "127.0.0.1", 8000) is None
    assert time.monotonic() - t0 < 0.5


def test_a_holder_nobody_asks_closes_the_port_after_its_wait(tmp_path: Path) -> None:
    sock, port = _listening()
    assert hand_over(sock, tmp_path, wait_s=0.3)
    sock.close()
    deadline = time.monotonic() + 10
    while True:  # refused again once the holder is gone
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "the holder kept the port past its wait"
        time.sleep(0.1)
    assert take_over(tmp_path, "127.0.0.1", port) is None


def test_the_next_up_looks_where_re_adoption_looks(tmp_path: Path) -> None:
    old, new = tmp_path / "20260101-000000", tmp_path / "20260101-000100"
    old.mkdir()
    state = old / statefile.STATE_NAME
    state.write_text("{}")
    assert cli.previous_run(new, tmp_path, ray=False) == (state, old)  # default timestamped folders
    assert cli.previous_run(new, None, ray=False) == (None, new)  # --run-dir: its own
    assert cli.previous_run(old, tmp_path, ray=False) == (state, old)

"""``up --proxies N --primary-share F`` (dataplane/pool.py ``steer``): a reuseport BPF program
on the port's listeners gives the primary's socket (the group's first) the share F of new
connections and spreads the rest over the workers; a group short of sockets falls back to the
kernel's hash. Real listening sockets on loopback, real connections."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from orchestrator.dataplane.pool import reuseport_socket, steer, steering_program
from tests.chimera_proc import chimera_cmd

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_ATTACH_REUSEPORT_CBPF is Linux's")


def accepted(listeners: list[socket.socket], port: int, n: int) -> list[int]:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    counts = []
    for s in listeners:
        s.setblocking(False)
        got = 0
        while True:
            try:
                c, _ = s.accept()
            except BlockingIOError:
                break
            c.close()
            got += 1
        counts.append(got)
    for c in conns:
        c.close()
    return counts


@pytest.mark.parametrize(("share", "low", "high"), [(0.0, 0, 0), (1.0, 300, 300), (0.2, 30, 95)])
def test_the_primary_gets_its_share_and_the_workers_the_rest(share: float, low: int, high: int) -> None:
    primary = reuseport_socket("127.0.0.1", 0)
    port = primary.getsockname()[1]
    workers = [reuseport_socket("127.0.0.1", port) for _ in range(3)]
    try:
        assert steer(primary, 3, share)
        counts = accepted([primary, *workers], port, 300)
        assert sum(counts) == 300 and low <= counts[0] <= high, counts
        if share < 1:
            assert all(c > 0 for c in counts[1:]), counts  # every worker gets some
    finally:
        for s in (primary, *workers):
            s.close()


def test_a_group_short_of_a_worker_falls_back_to_the_hash_and_refuses_nothing() -> None:
    primary = reuseport_socket("127.0.0.1", 0)
    port = primary.getsockname()[1]
    worker = reuseport_socket("127.0.0.1", port)
    try:
        assert steer(primary, 3, 0.0)  # three workers planned, one listening
        counts = accepted([primary, worker], port, 200)
        assert sum(counts) == 200 and counts[0] > 0, counts  # indices 2 and 3: the kernel's hash
    finally:
        primary.close()
        worker.close()


def test_the_program_returns_the_primary_below_the_cut_and_a_worker_index_above() -> None:
    prog = steering_program(3, 0.25)
    assert prog[2][3] == 250 and prog[4][3] == 3 and len(prog) == 7


def test_up_refuses_a_share_outside_0_1_or_without_workers(tmp_path: object) -> None:
    for args in (
        ("--proxies", "4", "--primary-share", "1.5"),
        ("--proxies", "4", "--primary-share", "half"),
        ("--primary-share", "0.2"),
    ):
        r = subprocess.run(
            chimera_cmd("up", "placements/example.yaml", "--engine", "sim", *args),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, r.stderr
        assert "--primary-share: `even` or a share from 0 to 1, with --proxies 2 or more" in r.stderr
        assert "Traceback" not in r.stderr + r.stdout


def test_with_workers_the_primary_serves_no_clients_unless_told() -> None:
    from orchestrator.cli.main import primary_share

    assert primary_share(None, 4) == 0.0  # the measured best: 3.7x one process, against 2.7x even
    assert primary_share(None, 1) is None and primary_share("even", 4) is None
    assert primary_share("0.15", 4) == 0.15

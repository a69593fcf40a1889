"""EngineProcess against a real stand-in process (tests/fixtures/fake_server.py): processes, signals and
readiness timeouts, so an integration test."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from orchestrator.engines.base import LaunchSpec
from orchestrator.errors import EngineStartError
from orchestrator.supervisor.ports import free_ports
from orchestrator.supervisor.process import EngineProcess

FAKE = str(Path(__file__).parents[1] / "fixtures" / "fake_server.py")


def make(tmp_path: Path, *extra: str, timeout: float = 20.0) -> EngineProcess:
    (port,) = free_ports(1)
    spec = LaunchSpec(
        argv=(sys.executable, FAKE, str(port), *extra),
        env=dict(os.environ),
        base_url=f"http://127.0.0.1:{port}",
        served_name="m",
        ready_timeout_s=timeout,
    )
    return EngineProcess("m@gpu0", spec, tmp_path / "m.log")


def _dies(pid: int, within_s: float) -> bool:
    """SIGKILL is delivered asynchronously: stop() returns once the signal is sent, and on a busy host
    the grandchild can still be listed for a moment. A zombie is dead (its reaper is not ours)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


async def test_ready_then_stop_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = make(tmp_path, "--child-pidfile", str(pidfile), "--delay", "0.3")
    await proc.spawn()
    async with httpx.AsyncClient() as client:
        await proc.wait_ready(client)
    assert proc.probe_output == " a probe answer"
    child = int(pidfile.read_text())
    assert psutil.pid_exists(child)
    await proc.stop(grace_s=5)
    assert proc.returncode is not None
    assert _dies(child, within_s=5.0)
    assert "fake engine starting" in (tmp_path / "m.log").read_text()


async def test_exit_during_start_reports_code_and_log_tail(tmp_path: Path) -> None:
    proc = make(tmp_path, "--exit-code", "3")
    await proc.spawn()
    async with httpx.AsyncClient() as client:
        with pytest.raises(EngineStartError) as exc:
            await proc.wait_ready(client)
    assert "code 3" in str(exc.value) and "cannot load model" in str(exc.value)
    assert exc.value.log_path == str(tmp_path / "m.log")


async def test_not_ready_in_time(tmp_path: Path) -> None:
    proc = make(tmp_path, "--delay", "30", timeout=0.5)
    await proc.spawn()
    async with httpx.AsyncClient() as client:
        with pytest.raises(EngineStartError, match="not ready after"):
            await proc.wait_ready(client)
    await proc.stop(grace_s=2)


async def test_sigkill_after_grace_when_term_is_ignored(tmp_path: Path) -> None:
    proc = make(tmp_path, "--ignore-term")
    await proc.spawn()
    async with httpx.AsyncClient() as client:
        await proc.wait_ready(client)
    rc = await proc.stop(grace_s=0.3)
    assert rc == -9


async def test_a_detached_engine_is_nobodys_child_and_is_still_watched_and_stopped(tmp_path: Path) -> None:
    proc = make(tmp_path)
    await proc.spawn(detached=True)  # as a node agent does: its engines outlive its restart
    assert proc.pid is not None
    assert psutil.Process(proc.pid).ppid() != os.getpid()
    async with httpx.AsyncClient() as client:
        await proc.wait_ready(client)
    assert proc.returncode is None and proc.probe_output
    await proc.stop(grace_s=5)
    assert _dies(proc.pid, 10)
    assert "$ " in proc.log_path.read_text()  # the command line heads its log, as for a child


def test_free_ports_are_distinct() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8

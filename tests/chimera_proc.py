"""Runs `chimera-orch up` as a subprocess for end-to-end tests (sim engine in CI, stock SGLang
on a GPU host) and waits, bounded, until the named models are awake."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from orchestrator.supervisor.ports import free_ports


def chimera_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    run_dir: Path

    def engine_pids(self) -> set[int]:
        return {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}

    def engine_pid(self) -> int:
        """The one engine process of a single-instance deployment (its direct child)."""
        (child,) = psutil.Process(self.proc.pid).children()
        return child.pid

    def states(self) -> dict[str, str]:
        data = httpx.get(f"{self.base}/v1/models", timeout=5).json()["data"]
        return {m["id"]: m["state"] for m in data}

    def state_pids(self) -> set[int]:
        """The engine pids in the run folder's state file (engines.json): adopted engines are
        not chimera's children."""
        try:
            return {e["pid"] for e in json.loads((self.run_dir / "engines.json").read_text())["engines"]}
        except FileNotFoundError:
            return set()

    def state_pids_of(self, count: int, timeout_s: float = 15.0) -> set[int]:
        """``state_pids`` once it lists ``count`` engines: the state file is written just after
        an engine becomes ready, so it can lag the models' ``awake`` by a moment."""
        deadline = time.monotonic() + timeout_s
        while len(pids := self.state_pids()) != count and time.monotonic() < deadline:
            time.sleep(0.1)
        return pids

    def stop(self) -> None:
        """Ctrl-C (chimera stops its engines), SIGKILL past a bound; then any engine a killed
        chimera left running (engines outlive it, for re-adoption) is killed too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.state_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def start_chimera(
    tmp: Path,
    placements: dict[str, Any],
    engine: str,
    awake: list[str],
    timeout_s: float,
    env: dict[str, str] | None = None,
    parked: tuple[str, ...] = (),
    args: tuple[str, ...] = (),
) -> Running:
    cfg = tmp / "placements.yaml"
    cfg.write_text(yaml.safe_dump(placements))
    (port,) = free_ports(1)
    log = tmp / "chimera.log"
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120", **(env or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            chimera_cmd(
                "up",
                str(cfg),
                "--engine",
                engine,
                "--port",
                str(port),
                "--run-dir",
                str(tmp / "run"),
                "--hold-timeout-s",
                "120",
                *args,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    run = Running(proc, f"http://127.0.0.1:{port}", log, tmp / "run")
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"chimera exited early:\n{log.read_text()}")
        try:
            states = run.states()
            if all(states.get(n) == "awake" for n in awake) and all(states.get(n) == "parked" for n in parked):
                return run
            if any(states.get(n) == "failed" for n in awake):
                run.stop()
                raise AssertionError(f"an instance failed: {states}\n{log.read_text()}")
        except (httpx.TransportError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            run.stop()
            raise AssertionError(f"not awake after {timeout_s} s:\n{log.read_text()}")
        time.sleep(0.25)


def alive(pids: set[int]) -> list[int]:
    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out

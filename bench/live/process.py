"""Runs ``chimera-orch up`` as a child process for a benchmark (as tests/chimera_proc.py does):
start, wait until every model that starts at ``up`` is awake, stop cleanly, check for orphans.

chimera runs in its own session, so a Ctrl-C in the terminal reaches the benchmark only, which
then stops chimera itself: SIGINT (chimera stops every engine), then SIGTERM, then SIGKILL.
Engine processes seen while it ran are checked afterwards; any left is killed by pid and
reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from orchestrator.config import load_config
from orchestrator.supervisor.ports import free_ports

# Ready = the models that start at `up` are awake and nothing is still starting or parking
# (warm start parks on-demand models once, ~10 s on the H100: not part of the measurement).
SETTLED = {"awake", "parked", "stopped"}
STOP_GRACE_S = 60.0  # SIGINT -> exit: chimera stops every engine first (SIGTERM, then SIGKILL)
PROGRESS_EVERY_S = 15.0  # a boot of SGLang stays "starting" for a minute or more


class ChimeraStartError(RuntimeError):
    """chimera exited or did not get its models awake in time (fatal; the log is quoted)."""


@dataclass
class Chimera:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    engine: str
    engine_pids: set[int] = field(default_factory=set)

    def note_engines(self) -> None:
        try:
            self.engine_pids |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> list[int]:
        """Stop chimera and its engines; returns the pids that had to be killed afterwards."""
        self.note_engines()
        for sig, grace in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        orphans = []
        for pid in sorted(self.engine_pids):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
                    orphans.append(pid)
            except psutil.NoSuchProcess:
                pass
        return orphans


def start_chimera(
    placements: Path,
    run_dir: Path,
    *,
    engine: str = "sim",
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 180.0,
    hold_timeout_s: float = 300.0,
    command: Sequence[str] = (),
    progress: Callable[[dict[str, str]], None] | None = None,
    args: Sequence[str] = (),
    awake: Sequence[str] | None = None,
    settle_all: bool = True,
) -> Chimera:
    """Start chimera on ``placements`` and wait until the models that start at ``up`` are
    awake and every other is parked or stopped. ``command`` replaces ``python -m
    orchestrator.cli`` (e.g. to run chimera under a profiler or a patched proxy);
    ``progress`` is called with the models' states (name -> state) whenever they change, and
    every ``PROGRESS_EVERY_S`` while they do not; ``args``: more ``up`` flags; ``awake``: the
    models to wait for (default: those placed ``on``); ``settle_all=False`` waits for those
    only, not for every other model to settle (pooled models, adapters loaded on first use).
    Raises ChimeraStartError (with chimera's log) if it exits or times out."""
    if awake is None:
        awake = [m.name for m in load_config(placements).models if any(p.on for p in m.placements)]
    (port,) = (port,) if port else free_ports(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "chimera.log"
    argv = [
        *(command or (sys.executable, "-m", "orchestrator.cli")),
        "up",
        str(placements),
        "--engine",
        engine,
        "--port",
        str(port),
        "--run-dir",
        str(run_dir / "engines"),
        "--hold-timeout-s",
        f"{hold_timeout_s:g}",
        *args,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **(env or {})},
        )
    ch = Chimera(proc, f"http://127.0.0.1:{port}", log, engine)
    try:
        _wait_awake(ch, list(awake), ready_timeout_s, progress, settle_all)
    except BaseException:
        ch.stop()
        raise
    return ch


def _wait_awake(
    ch: Chimera,
    names: list[str],
    timeout_s: float,
    progress: Callable[[dict[str, str]], None] | None,
    settle_all: bool,
) -> None:
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    shown: dict[str, str] = {}
    shown_at = time.monotonic()
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while True:
            if ch.proc.poll() is not None:
                raise ChimeraStartError(f"chimera exited with code {ch.proc.returncode}:\n{ch.log_tail()}")
            try:
                data = client.get(ch.base + "/v1/models").json()["data"]
                states = {m["id"]: m["state"] for m in data}
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            ch.note_engines()
            if progress is not None and (states != shown or time.monotonic() - shown_at > PROGRESS_EVERY_S):
                shown, shown_at = dict(states), time.monotonic()
                progress(shown)
            settled = not settle_all or all(s in SETTLED for s in states.values())
            if states and all(states.get(n) == "awake" for n in names) and settled:
                return
            failed = [n for n in names if states.get(n) == "failed"]
            if failed:
                raise ChimeraStartError(f"instances of {failed} failed to start:\n{ch.log_tail()}")
            if time.monotonic() > deadline:
                raise ChimeraStartError(f"models not awake after {timeout_s:g} s (states: {states}):\n{ch.log_tail()}")
            time.sleep(0.25)

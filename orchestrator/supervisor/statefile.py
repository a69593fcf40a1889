"""The engines' state file (``<run folder>/engines.json``): what a later ``up`` needs to re-adopt
the engines of this one instead of cold-starting new ones (supervisor.py ``prepare_adoption``).

One record per engine that reached ``awake``: its pid and the process's start time (so a reused
pid is never mistaken for it), ports, the full command line, base URL, log, shim socket and the
readiness probe's output (later wakes are compared with it); plus the engines' API key (one per
deployment: every engine of a run shares it, and a run that adopts engines keeps their key).
Written atomically, mode 0600 (it holds the key), whenever an engine becomes ready or goes away;
removed when chimera stops its engines, so only a run that left engines running leaves one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("chimera.supervisor")

STATE_NAME = "engines.json"
VERSION = 1


@dataclass(frozen=True)
class EngineRecord:
    instance_id: str
    pid: int
    create_time: float  # psutil's, of the pid: a pid reused by another process differs
    port: int
    nccl_port: int
    argv: tuple[str, ...]
    base_url: str
    served_name: str
    log_path: str
    started_at: float  # wall clock (time.time()) when it was first ready
    config_file: str | None = None  # the --config file holding the key
    shim_socket: str | None = None  # its cumem_shim control socket, if any
    probe_output: str | None = None


@dataclass(frozen=True)
class EngineState:
    key: str = field(repr=False)
    engines: tuple[EngineRecord, ...] = ()


def write_state(path: Path, state: EngineState) -> None:
    body = json.dumps(
        {"version": VERSION, "api_key": state.key, "engines": [asdict(r) for r in state.engines]}, indent=1
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)
    os.replace(tmp, path)


def read_state(path: Path) -> EngineState | None:
    """The state in ``path``; None (with a warning) when it is missing or unreadable: nothing
    is adopted then, and engines it may have listed are not touched."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") != VERSION:
            raise ValueError(f"version {raw.get('version')!r}, expected {VERSION}")
        engines = tuple(EngineRecord(**{**e, "argv": tuple(e["argv"])}) for e in raw["engines"])
        return EngineState(str(raw["api_key"]), engines)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read the engines' state file %s (%s); adopting nothing from it", path, exc)
        return None


def find_previous(run_dir: Path, runs_root: Path | None) -> Path | None:
    """The state file a new ``up`` adopts from: ``run_dir``'s own (``--run-dir`` given twice),
    else, for a default timestamped run folder, the newest one under ``runs_root``."""
    own = run_dir / STATE_NAME
    if own.exists():
        return own
    if runs_root is None or not runs_root.is_dir():
        return None
    found = sorted(runs_root.glob(f"*/{STATE_NAME}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def same_process(rec: EngineRecord) -> str | None:
    """None when ``rec.pid`` is still the engine the record describes; else why not."""
    import psutil  # here: the CLI finds a previous run before its heavier imports

    try:
        p = psutil.Process(rec.pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return "its process has exited"
        if abs(p.create_time() - rec.create_time) > 0.05:
            return f"pid {rec.pid} now belongs to another process"
        if tuple(p.cmdline()) != rec.argv:
            return f"pid {rec.pid} runs another command line"
    except psutil.NoSuchProcess:
        return "its process has exited"
    except psutil.AccessDenied:
        return f"pid {rec.pid} is not ours to inspect"
    return None


def find_previous_run(run_dir: Path, runs_root: Path | None) -> Path | None:
    """``up --ray``: the run folder whose nodes' state files (``<run>/<node>/engines.json``,
    written by the node agents) a new ``up`` adopts from: ``run_dir`` itself when one of its
    nodes left one (``--run-dir`` given twice), else, for a default timestamped run folder, the
    one under ``runs_root`` with the newest such file."""
    if any(run_dir.glob(f"*/{STATE_NAME}")):
        return run_dir
    if runs_root is None or not runs_root.is_dir():
        return None
    found = sorted(runs_root.glob(f"*/*/{STATE_NAME}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.parent if found else None


def run_key(run: Path) -> str | None:
    """The engines' key of a previous ``up --ray`` run (every node's file holds the same one):
    from the newest node state file listing engines; None when none can be read here."""
    files = sorted(run.glob(f"*/{STATE_NAME}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for f in files:
        state = read_state(f)
        if state is not None and state.engines:
            return state.key
    return None

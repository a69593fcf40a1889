"""The engines' state file: round trip, privacy, and which process a record still names."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import psutil

from orchestrator.supervisor.statefile import (
    STATE_NAME,
    EngineRecord,
    EngineState,
    find_previous,
    read_state,
    same_process,
    write_state,
)


def record(pid: int, argv: tuple[str, ...], created: float) -> EngineRecord:
    return EngineRecord("m@gpu0", pid, created, 1, 2, argv, "http://127.0.0.1:1", "m", "/x.log", 0.0)


def test_round_trip_is_private_and_keeps_the_key_out_of_repr(tmp_path: Path) -> None:
    me = psutil.Process()
    state = EngineState("ck-secret", (record(me.pid, tuple(me.cmdline()), me.create_time()),))
    path = tmp_path / STATE_NAME
    write_state(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_state(path) == state and "ck-secret" not in repr(state)
    path.write_text("{not json")
    assert read_state(path) is None and read_state(tmp_path / "missing.json") is None


def test_a_record_names_its_process_only_while_pid_start_time_and_command_line_agree() -> None:
    me = psutil.Process()
    argv, created = tuple(me.cmdline()), me.create_time()
    assert same_process(record(me.pid, argv, created)) is None
    assert "another process" in (same_process(record(me.pid, argv, created - 100)) or "")  # a reused pid
    assert "another command line" in (same_process(record(me.pid, (sys.executable, "x"), created)) or "")
    assert "exited" in (same_process(record(2**22 + 7, argv, created)) or "")


def test_previous_state_is_the_run_folders_own_else_the_newest_under_the_root(tmp_path: Path) -> None:
    old, new, mine = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (old, new, mine):
        d.mkdir()
    write_state(old / STATE_NAME, EngineState("k"))
    write_state(new / STATE_NAME, EngineState("k"))
    os.utime(old / STATE_NAME, (1, 1))
    assert find_previous(mine, tmp_path) == new / STATE_NAME
    assert find_previous(mine, None) is None  # --run-dir given: only its own
    write_state(mine / STATE_NAME, EngineState("k"))
    assert find_previous(mine, tmp_path) == mine / STATE_NAME

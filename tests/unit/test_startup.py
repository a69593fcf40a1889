"""What `chimera-orch up` pays before it serves: the live path imports nothing it does not need
(ray only with --ray, never matplotlib or uvicorn's websockets), and the proxy's socket listens
before chimera's imports and re-adoption, so a restarting control plane makes clients wait
instead of refusing them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.cli.main import _listen
from orchestrator.errors import ConfigError

# Heavy or optional modules that `up` without --ray must not import (start-up time; ray is an
# extra), and offline packages (docs/architecture.md's import rules).
NEVER_ON_UP = (
    "ray",
    "matplotlib",
    "websockets",
    "orchestrator.cluster.effects",
    "orchestrator.cluster.agent",
    "orchestrator.layout",
    "simsglang",
    "bench",
)


def imported(modules: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``modules``."""
    code = f"import sys, json, {modules}; print(json.dumps([m for m in {list(watched)!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return list(json.loads(out.stdout))


def test_the_live_path_imports_no_heavy_or_optional_module() -> None:
    assert imported("orchestrator.cli.main, orchestrator.app, orchestrator.sglang.detect", NEVER_ON_UP) == []


# What `up` must not have imported when it listens: the CLI module parses arguments and binds
# the port first (~20 ms after the interpreter starts, instead of ~0.5 s after these imports).
BEFORE_LISTEN_NEVER = ("rich", "httpx", "uvicorn", "asyncio", "yaml", "orchestrator.config", "orchestrator.app")


def test_the_cli_listens_before_importing_chimera() -> None:
    assert imported("orchestrator.cli.main", BEFORE_LISTEN_NEVER) == []


def test_the_proxy_socket_listens_before_anything_accepts() -> None:
    sock = _listen("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        # the kernel completes the handshake: a client waits in the backlog, it is not refused
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        assert not sock.get_inheritable()  # engines spawned later do not hold the port
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            _listen("127.0.0.1", port)
    finally:
        sock.close()


def test_the_startup_seconds_count_from_this_process_start() -> None:
    """The `settled N s` figure: a child's own count is within the time the parent saw it run
    (psutil's create_time, from a boot time in whole seconds, was up to a second off)."""
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", "from orchestrator.app import _startup_seconds; print(_startup_seconds())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert 0 < float(out.stdout) <= elapsed + 0.02  # + one clock tick of /proc's start time

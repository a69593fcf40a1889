"""What `chimera-orch up` pays before it serves: the live path imports nothing it does not need
(ray only with --ray, never matplotlib or uvicorn's websockets), and the proxy's socket listens
before chimera's imports and re-adoption, so a restarting control plane makes clients wait
instead of refusing them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

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


def test_the_live_path_imports_no_heavy_or_optional_module() -> None:
    code = (
        "import sys, json, orchestrator.cli.main, orchestrator.app, orchestrator.sglang.detect;"
        f"print(json.dumps([m for m in {list(NEVER_ON_UP)!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


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

"""systemd socket activation: `up` serves on the listening socket it is handed (LISTEN_PID,
LISTEN_FDS, descriptor 3) instead of binding one, and because that socket outlives chimera, a
client that connects while no chimera runs waits in its backlog and is answered by the next
one: a restart refuses nobody."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.chimera_proc import chimera_cmd

pytestmark = pytest.mark.slow

PLACEMENTS = {
    "mode": "full",
    "host": {"gpus": 1},
    "models": [{"name": "tiny", "model_path": "tiny-llama", "placements": [{"gpus": [0], "on": True}]}],
}


def activated(tmp: Path, sock: socket.socket, n: int) -> subprocess.Popen[bytes]:
    """`up` as systemd starts a socket-activated service: the socket at descriptor 3 and
    LISTEN_PID naming the service's own process (the shell's pid, kept by exec)."""
    cfg = tmp / "placements.yaml"
    cfg.write_text(yaml.safe_dump(PLACEMENTS))
    cmd = chimera_cmd("up", str(cfg), "--engine", "sim", "--run-dir", str(tmp / f"run{n}"))
    fd = sock.fileno()
    launcher = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1])); "
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])"
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", CHIMERA_SIM_SPEED="0.02")
    with open(tmp / f"chimera{n}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", launcher, str(fd), *cmd],
            pass_fds=(fd,),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_awake(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "chimera exited"
        try:
            models = httpx.get(f"{base}/v1/models", timeout=2).json()["data"]
            if any(m["id"] == "tiny" and m["state"] == "awake" for m in models):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError("tiny never woke")


def ask(base: str) -> str:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    out = client.completions.create(model="tiny", prompt="hello", max_tokens=4)
    return out.choices[0].text


def test_a_handed_over_socket_is_served_and_a_restart_refuses_nobody(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    first = activated(tmp_path, sock, 1)
    try:
        wait_awake(base, first)
        assert ask(base)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        # no chimera now: the socket systemd would hold (here: this test) keeps listening
        answer: dict[str, Any] = {}

        def waiting_client() -> None:
            t = time.monotonic()
            try:
                answer["text"] = ask(base)
            except Exception as exc:  # noqa: BLE001 (the assertion below reports it)
                answer["error"] = repr(exc)
            answer["s"] = time.monotonic() - t

        client = threading.Thread(target=waiting_client)
        client.start()
        time.sleep(1.0)
        assert client.is_alive() and not answer  # waiting in the backlog, not refused
        second = activated(tmp_path, sock, 2)
        try:
            client.join(timeout=120)
            assert "text" in answer, answer
            wait_awake(base, second)
            assert ask(base)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
        sock.close()
    logs = (tmp_path / "chimera1.log").read_text() + (tmp_path / "chimera2.log").read_text()
    assert "Traceback" not in logs


def test_only_this_process_takes_one_handed_over_socket() -> None:
    from orchestrator.cli.main import inherited_socket
    from orchestrator.errors import ConfigError

    assert inherited_socket({}) is None
    assert inherited_socket({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) is None  # another process's
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}
    with pytest.raises(ConfigError, match="exactly one listening socket"):
        inherited_socket(env)
    assert env == {}  # taken: never passed on to an engine

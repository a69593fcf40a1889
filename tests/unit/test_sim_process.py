"""The simulated SGLang server as a process: the launch spec chimera builds for it, and its
command line (help, bad flags, serving over HTTP)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from orchestrator.config import HostSpec, parse_config
from orchestrator.engines.base import LaunchRequest
from orchestrator.engines.simulated import SimEngine
from orchestrator.supervisor.ports import free_ports
from tests.unit.test_sim_server import CHAT, frames


def test_launch_spec_for_an_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/x")
    monkeypatch.setenv("CHIMERA_SIM_SPEED", "0.5")
    model = {
        "name": "llama",
        "model_path": "meta-llama/Llama-3.1-8B-Instruct",
        "placements": [{"gpus": [1], "kv_pool_gb": 2}],
    }
    cfg = parse_config({"models": [model], "host": {"gpus": 2, "gpu_memory_gb": 80}})
    inst = cfg.instances[0]
    spec = SimEngine().launch_spec(LaunchRequest(inst, HostSpec(2, 40.0), port=31000, nccl_port=32000))
    argv = list(spec.argv)
    assert argv[:3] == [sys.executable, "-m", "simsglang"]

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--model-path") == "meta-llama/Llama-3.1-8B-Instruct"
    assert flag("--sim-shape") == "llama-3.1-8b" and flag("--served-model-name") == "llama"
    assert (flag("--port"), flag("--nccl-port"), flag("--base-gpu-id")) == ("31000", "32000", "1")
    assert flag("--max-total-tokens") == str(2 * (1 << 30) // 131072)
    assert flag("--sim-gpu-memory-gb") == "40" and flag("--sim-speed") == "0.5"
    assert "--enable-metrics" in argv and "PROMETHEUS_MULTIPROC_DIR" not in spec.env
    assert spec.base_url == "http://127.0.0.1:31000" and spec.served_name == "llama"
    ledger = SimEngine().launch_spec(LaunchRequest(inst, HostSpec(2), 1, 2, kv_bytes=131072 * 10))
    assert ledger.argv[ledger.argv.index("--max-total-tokens") + 1] == "10"


def test_a_model_name_with_a_colon_is_served_without_it() -> None:
    """Real SGLang reads `a:b` in a request's model as LoRA adapter b, even as the served name."""
    cfg = parse_config(
        {"models": [{"name": "org/model:v1", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}]}
    )
    spec = SimEngine().launch_spec(LaunchRequest(cfg.instances[0], cfg.host, 1, 2))
    assert spec.served_name == "org/model_v1"
    assert spec.argv[spec.argv.index("--served-model-name") + 1] == "org/model_v1"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simsglang", *args], capture_output=True, text=True, timeout=60)


def test_cli_help_and_bad_flags() -> None:
    ok = run_cli("--help")
    assert ok.returncode == 0 and "--sim-speed" in ok.stdout and "SIMULATED" in ok.stdout
    bad = run_cli("--model-path", "tiny-llama", "--bogus-flag")
    assert bad.returncode == 2 and "unrecognized arguments: --bogus-flag" in bad.stderr
    shape = run_cli("--model-path", "no/such-model")
    assert shape.returncode == 2 and "cannot tell the size" in shape.stderr
    big = run_cli("--model-path", "llama-3.3-70b", "--port", "1")
    assert big.returncode == 1 and "Not enough memory" in big.stderr
    for r in (bad, shape, big):
        assert "Traceback" not in r.stderr + r.stdout


def test_cli_serves_over_http_at_speed_zero() -> None:
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simsglang",
            "--model-path",
            "tiny-llama",
            "--port",
            str(port),
            "--sim-speed",
            "0",
            "--enable-metrics",
            "--enable-memory-saver",
            "--sleep-on-idle",
            "--nccl-port",
            "1234",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with httpx.stream(
            "POST", f"{base}/v1/chat/completions", timeout=10, json={**CHAT, "max_tokens": 3, "stream": True}
        ) as r:
            chunks = frames(r.read())
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "SIMULATED" in err and "Traceback" not in err

"""On a GPU host, with ``CHIMERA_GPU_SHARING=mps``: the suite's chimera runs every server under
the MPS daemon it started (host.gpu_sharing: mps). Each engine process carries the daemon's
pipe directory and runs as a client of its one MPS server, so the park/wake cycles, the shim's
mappings and NVML's per-process memory of the other tests are measured under MPS."""

from __future__ import annotations

import psutil
import pytest

from tests.chimera_proc import Running
from tests.gpu.conftest import GPU_SHARING, RESULTS

pytestmark = pytest.mark.gpu


def test_every_engine_is_a_client_of_the_runs_mps_daemon(chimera_gpu: Running) -> None:
    if GPU_SHARING != "mps":
        pytest.skip("the suite runs under time-slicing; CHIMERA_GPU_SHARING=mps runs it under MPS")
    engines = [psutil.Process(pid) for pid in chimera_gpu.engine_pids()]
    # The servers chimera spawned (``python -m sglang.launch_server``); their scheduler and
    # detokenizer children inherit the environment but set their titles with setproctitle
    # ("sglang::scheduler"), which overwrites the memory /proc/PID/environ reads: their
    # environment cannot be read from outside (seen on the H200), their GPU contexts are
    # checked through NVML below.
    servers_spawned = [p for p in engines if "sglang.launch_server" in " ".join(p.cmdline())]
    assert servers_spawned, [p.cmdline()[:3] for p in engines]
    pipes = {p.environ().get("CUDA_MPS_PIPE_DIRECTORY") for p in servers_spawned}
    assert len(pipes) == 1 and None not in pipes, pipes  # one daemon's pipe, in every engine
    servers = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "nvidia-cuda-mps-server"]
    assert servers, "no MPS server: the engines did not attach"
    import pynvml

    pynvml.nvmlInit()
    try:
        on_gpu = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))}
    finally:
        pynvml.nvmlShutdown()
    RESULTS["mps"] = {"pipe": pipes.pop(), "mps_servers": len(servers), "nvml_processes": len(on_gpu)}
    assert {s.pid for s in servers} & on_gpu, "the MPS server holds no context on GPU 0"

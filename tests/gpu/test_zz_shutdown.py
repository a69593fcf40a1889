"""Last of the GPU suite: Ctrl-C stops chimera, leaves no process and gives the memory back."""

from __future__ import annotations

import signal
import time

import pytest

from tests.chimera_proc import Running, alive
from tests.gpu.conftest import RESULTS, gpu_used_mib

pytestmark = pytest.mark.gpu


def test_ctrl_c_leaves_no_process_and_frees_the_gpu(chimera_gpu: Running) -> None:
    pids = chimera_gpu.engine_pids()
    assert pids
    t = time.monotonic()
    chimera_gpu.proc.send_signal(signal.SIGINT)
    assert chimera_gpu.proc.wait(timeout=120) == 0
    RESULTS["shutdown_s"] = round(time.monotonic() - t, 1)
    time.sleep(2)
    assert alive(pids) == []
    used = gpu_used_mib()
    RESULTS["gpu_used_mib_after"] = used
    assert used <= int(str(RESULTS["gpu_used_mib_before"])) + 256

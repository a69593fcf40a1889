"""verify_released: a stopped instance's processes are checked gone before its memory counts as
free (the sim probe: processes only; NVML adds its per-process list)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx

from orchestrator.supervisor.memory import SimMemoryProbe, group_pids, verify_released


async def test_a_live_group_is_reported_and_a_killed_one_is_released() -> None:
    code = "import subprocess, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, start_new_session=True)
    async with httpx.AsyncClient() as client:
        probe = SimMemoryProbe(client)
        for _ in range(100):  # the child `sleep` is in the leader's group once it is spawned
            pids = group_pids(proc.pid)
            if len(pids) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(pids) == 2 and proc.pid in pids
        why = await verify_released(probe, pids, (0,), timeout_s=0.1)
        assert why is not None and "still hold" in why
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        assert await verify_released(probe, pids, (0,), timeout_s=5.0) is None
        assert group_pids(proc.pid) == set()

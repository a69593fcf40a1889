"""End to end on the sim engine: the control plane restarts without restarting its engines.

`chimera-orch up`, then SIGUSR1 (stop chimera, leave the engines) or kill -9 of chimera, then
`up` again with the same run folder: the same engine pids serve (re-adopted through the state
file, verified by probe), no engine process is duplicated, and a final Ctrl-C stops them all.
The time from the second `up` to its first answer is printed (a benchmark number, not an
assertion on time). chimera runs with its bytecode cached, as an installed one does (the first
`up` writes the cache the later ones read; this host's environment turns caching off)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import openai
import psutil
import pytest

from tests.chimera_proc import Running, alive, start_chimera

pytestmark = pytest.mark.slow

PLACEMENTS = {
    "mode": "static",
    "host": {"gpus": 2, "gpu_memory_gb": 80},
    "models": [
        {"name": "tiny", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]},
        {"name": "other", "model_path": "tiny-llama", "placements": [{"gpus": [1]}]},
    ],
}
SIM = {"CHIMERA_SIM_SPEED": "0.02"}


def as_installed(tmp: Path) -> dict[str, str]:
    """The sim engine's speed-up, and bytecode cached under ``tmp`` (not in the source tree)."""
    return {**SIM, "PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}


def sim_engines(run_dir: Path) -> set[int]:
    """Every sim engine process started for this run folder (whoever its parent is)."""
    out = set()
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if "simsglang" in argv and any(str(run_dir) in a for a in argv):
            out.add(p.pid)
    return set(alive(out))


def up_again(tmp: Path) -> tuple[Running, float]:
    t0 = time.monotonic()
    # awake=[]: back as soon as the proxy answers; the requests below are held until adopted
    run = start_chimera(tmp, PLACEMENTS, "sim", awake=[], timeout_s=60, env=as_installed(tmp))
    client = openai.OpenAI(base_url=f"{run.base}/v1", api_key="none", max_retries=0, timeout=30)
    for model in ("tiny", "other"):
        out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert out.choices[0].message.content
    return run, time.monotonic() - t0


def test_restart_of_the_control_plane_re_adopts_every_engine(tmp_path: Path) -> None:
    first = start_chimera(
        tmp_path, PLACEMENTS, "sim", awake=["tiny", "other"], timeout_s=60, env=as_installed(tmp_path)
    )
    try:
        pids = first.state_pids_of(2)
        assert len(pids) == 2 and pids == sim_engines(first.run_dir)
        state = json.loads((first.run_dir / "engines.json").read_text())
        assert oct((first.run_dir / "engines.json").stat().st_mode & 0o777) == "0o600"
        assert {e["instance_id"] for e in state["engines"]} == {"tiny@gpu0", "other@gpu1"}

        # an upgrade: SIGUSR1 stops chimera and leaves its engines
        first.proc.send_signal(signal.SIGUSR1)
        assert first.proc.wait(30) == 0
        assert "2 engine(s) left running" in first.log.read_text()
        assert sim_engines(first.run_dir) == pids

        second, took_s = up_again(tmp_path)
        print(f"\nre-adopted after SIGUSR1: serving {took_s:.2f} s after `up` (2 engines)")
        assert "re-adopted engine pid" in second.log.read_text()
        assert second.state_pids_of(2) == pids and sim_engines(second.run_dir) == pids  # no duplicate

        # a crash of the control plane: kill -9, then up again
        second.proc.kill()
        second.proc.wait()
        assert sim_engines(second.run_dir) == pids
        third, took_s = up_again(tmp_path)
        print(f"re-adopted after kill -9: serving {took_s:.2f} s after `up`")
        assert third.state_pids_of(2) == pids and sim_engines(third.run_dir) == pids

        # the default shutdown still stops every engine and leaves no state file
        third.proc.send_signal(signal.SIGINT)
        assert third.proc.wait(30) == 0
        assert sim_engines(third.run_dir) == set()
        assert not (third.run_dir / "engines.json").exists()
    finally:
        first.stop()
        for pid in sim_engines(tmp_path / "run"):
            os.killpg(pid, signal.SIGKILL)


def test_engines_of_a_changed_placement_are_stopped_not_adopted(tmp_path: Path) -> None:
    first = start_chimera(tmp_path, PLACEMENTS, "sim", awake=["tiny", "other"], timeout_s=60, env=SIM)
    try:
        old = first.state_pids_of(2)
        assert len(old) == 2
        first.proc.send_signal(signal.SIGUSR1)
        assert first.proc.wait(30) == 0
        changed = {**PLACEMENTS, "models": [PLACEMENTS["models"][0]]}  # "other" is gone
        second = start_chimera(tmp_path, changed, "sim", awake=["tiny"], timeout_s=60, env=SIM)
        kept = second.state_pids_of(1)
        assert len(kept) == 1 and kept < old  # tiny re-adopted, other stopped
        assert sim_engines(second.run_dir) == kept
        second.stop()
        assert sim_engines(second.run_dir) == set()
    finally:
        first.stop()
        for pid in sim_engines(tmp_path / "run"):
            os.killpg(pid, signal.SIGKILL)

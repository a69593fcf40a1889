"""What every chaos scenario needs around chimera: its placements, starting it (and starting it
again on the same port and run folder, for a restart), its engines as the state file lists them,
and the resources of its process (RSS, open descriptors)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.live.process import Chimera, start_chimera
from orchestrator.supervisor.ports import free_ports

SIM_SPEED = "0.05"  # the sim engine 20x faster than the H100 it models: short, many requests
# Fast detection and restart, so a scenario's recovery is seconds (defaults are for GPUs).
SELF_HEALING = {"restart": {"backoff_s": 0.5, "max_backoff_s": 2}, "liveness": {"window_s": 1, "probe_timeout_s": 0.5}}


# slow clients cut after 2 s (default 10 s), so a scenario of seconds shows it
HEADER_TIMEOUT_S = "2"

# ``python -c`` this N: ``python -m orchestrator.cli`` with RLIMIT_NOFILE N (soft and hard)
_UNDER_NOFILE = (
    "import resource, runpy, sys; n = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "runpy.run_module('orchestrator.cli', run_name='__main__', alter_sys=True)"
)


def static_one(model: str = "tiny") -> dict[str, Any]:
    return {
        "mode": "static",
        "host": {"gpus": 1, "gpu_memory_gb": 80},
        **SELF_HEALING,
        "models": [{"name": model, "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}],
    }


def full_with_parked() -> dict[str, Any]:
    """Mode full: ``tiny`` serves, ``lazy`` is started then parked (its wake is the fault)."""
    return {
        "mode": "full",
        "host": {"gpus": 2, "gpu_memory_gb": 80},
        **SELF_HEALING,
        "models": [
            {"name": "tiny", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]},
            {"name": "lazy", "model_path": "tiny-llama", "placements": [{"gpus": [1], "on": False}]},
        ],
    }


@dataclass(frozen=True)
class Engine:
    instance_id: str
    pid: int
    base_url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class Resources:
    rss_mb: float
    fds: int

    @staticmethod
    def of(pid: int) -> Resources:
        p = psutil.Process(pid)
        return Resources(round(p.memory_info().rss / 2**20, 1), p.num_fds())


class Deployment:
    """One chimera on ``placements`` under ``folder``; ``up()`` again reuses port and run folder
    (the engines' state file is there: a restart re-adopts them)."""

    def __init__(
        self, folder: Path, placements: dict[str, Any], env: dict[str, str] | None = None, nofile: int | None = None
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.file = folder / "placements.yaml"
        self.file.write_text(yaml.safe_dump(placements))
        (self.port,) = free_ports(1)
        # bytecode cached as an installed chimera has it (pip compiles it); outside the tree
        self.env = {
            "CHIMERA_SIM_SPEED": SIM_SPEED,
            "PYTHONDONTWRITEBYTECODE": "",
            "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
            "CHIMERA_HEADER_TIMEOUT_S": HEADER_TIMEOUT_S,
            **(env or {}),
        }
        # under a descriptor limit (soft and hard: chimera raises its soft limit to the hard one)
        self.command = (sys.executable, "-c", _UNDER_NOFILE, str(nofile)) if nofile else ()
        self.chimera: Chimera | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> Chimera:
        self.chimera = start_chimera(
            self.file, self.folder, port=self.port, env=self.env, ready_timeout_s=60, command=self.command
        )
        return self.chimera

    @property
    def pid(self) -> int:
        assert self.chimera is not None
        return self.chimera.proc.pid

    def engines(self) -> dict[str, Engine]:
        """Ready engines by instance, from the run folder's state file."""
        try:
            raw = json.loads((self.folder / "engines" / "engines.json").read_text())
        except (OSError, ValueError):
            return {}
        return {
            e["instance_id"]: Engine(e["instance_id"], e["pid"], e["base_url"], raw["api_key"]) for e in raw["engines"]
        }

    def resources(self) -> Resources:
        return Resources.of(self.pid)

    def down(self) -> list[int]:
        """Stop chimera (it stops its engines); kill any engine still alive (an adopted engine is
        not chimera's child). Returns the pids that had to be killed."""
        left = [e.pid for e in self.engines().values()]
        killed = self.chimera.stop() if self.chimera is not None else []
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

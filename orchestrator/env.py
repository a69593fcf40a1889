"""Every environment variable chimera reads, in one typed registry (read nowhere else)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a number") from exc


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a whole number") from exc
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be positive")
    return value


def _args(name: str) -> tuple[str, ...]:
    raw = os.environ.get(name, "")
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a valid shell-quoted argument list ({exc})"
        ) from exc


@dataclass(frozen=True)
class Env:
    run_dir: str | None  # CHIMERA_RUN_DIR: where instance logs go (default ./runs/<timestamp>)
    sim_speed: float  # CHIMERA_SIM_SPEED: sim engine time scale (1 = calibrated H100; 0 = no compute)
    sim_start_delay_s: float  # CHIMERA_SIM_START_DELAY_S: simulated boot time of a sim instance
    admin_key: str | None = None  # CHIMERA_ADMIN_KEY: bearer key of the admin API (unset: API off)
    cache_dir: str = "~/.cache/chimera"  # CHIMERA_CACHE_DIR: dummy-weight model dirs
    # CHIMERA_SGLANG_ARGS: extra flags for every SGLang server, shell-quoted; on the lent H100
    # "--attention-backend triton --sampling-backend pytorch --grammar-backend none" (no FA3 there)
    sglang_extra_args: tuple[str, ...] = ()
    # CHIMERA_SERIAL_STARTS=1: servers sharing a GPU start one at a time (the behaviour before
    # concurrent starts; a fallback should a concurrent start misbehave on some engine)
    serial_starts: bool = False
    # CHIMERA_UPSTREAM_FIRST_BYTE_S / CHIMERA_UPSTREAM_IDLE_S: how long the proxy waits for an
    # engine's response head (a whole non-streamed generation) and for the next body bytes
    # (a stream's tokens) before it answers 504 or ends the stream with an error
    upstream_first_byte_s: float = 600.0
    upstream_idle_s: float = 300.0
    # CHIMERA_MAX_BODY_BYTES / CHIMERA_MAX_HEADER_BYTES: the largest request body (413 beyond)
    # and request line + headers (431 beyond) the proxy reads; a production gateway's defaults
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    # CHIMERA_SIM_WEIGHTS_GBPS: how fast a sim server's /update_weights_from_disk reads weights
    # (GB/s); 0: the calibrated disk bandwidth (orchestrator/perf/calibration.py DISK_LOAD_BW)
    sim_weights_gbps: float = 0.0

    @classmethod
    def read(cls) -> Env:
        return cls(
            run_dir=os.environ.get("CHIMERA_RUN_DIR") or None,
            sim_speed=_float("CHIMERA_SIM_SPEED", 1.0),
            sim_start_delay_s=_float("CHIMERA_SIM_START_DELAY_S", 0.0),
            admin_key=os.environ.get("CHIMERA_ADMIN_KEY") or None,
            cache_dir=os.environ.get("CHIMERA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "chimera"),
            sglang_extra_args=_args("CHIMERA_SGLANG_ARGS"),
            serial_starts=os.environ.get("CHIMERA_SERIAL_STARTS", "") not in ("", "0"),
            upstream_first_byte_s=_float("CHIMERA_UPSTREAM_FIRST_BYTE_S", 600.0),
            upstream_idle_s=_float("CHIMERA_UPSTREAM_IDLE_S", 300.0),
            max_body_bytes=_int("CHIMERA_MAX_BODY_BYTES", 32 * 1024 * 1024),
            max_header_bytes=_int("CHIMERA_MAX_HEADER_BYTES", 64 * 1024),
            sim_weights_gbps=_float("CHIMERA_SIM_WEIGHTS_GBPS", 0.0),
        )

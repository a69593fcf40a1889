"""Every environment variable chimera reads, in one typed registry (read nowhere else)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

# Variables that hold or point at secrets: never passed on to an engine process (engines read
# nothing of them; an engine's environment is readable wherever its process is)
SECRETS = frozenset({"CHIMERA_ADMIN_KEY", "CHIMERA_ADMIN_KEY_FILE", "CHIMERA_API_KEYS", "CHIMERA_API_KEYS_FILE"})


def engine_environ(parent: Mapping[str, str]) -> dict[str, str]:
    """``parent`` without chimera's secrets: what an engine's environment starts from."""
    return {k: v for k, v in parent.items() if k not in SECRETS}


def read_secret(value: str | None, path: str | None, name: str) -> str | None:
    """A secret given in ``name`` (``value``) or in the file ``name``_FILE names (``path``:
    its content, stripped); not both. Raises ValueError with the variable's name, never the
    secret."""
    if value and path:
        raise ValueError(f"set one of {name} and {name}_FILE, not both")
    if not path:
        return value or None
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            secret = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}_FILE={path!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
    if not secret:
        raise ValueError(f"{name}_FILE={path!r} is empty")
    return secret


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a number") from exc


def _positive(name: str, default: float) -> float:
    value = _float(name, default)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"environment variable {name}={os.environ.get(name)!r} must be a positive number of seconds")
    return value


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
    # CHIMERA_ADMIN_KEY or CHIMERA_ADMIN_KEY_FILE (a file holding it): bearer key of the admin
    # API (unset: API off)
    # (read_secret reads the file, once, at `up`)
    admin_key: str | None = field(default=None, repr=False)
    admin_key_file: str | None = None
    # CHIMERA_API_KEYS_FILE (proxy/auth.py's format) and CHIMERA_API_KEYS (comma-separated keys
    # that may use every model): client keys; neither set nor the placements file's: no auth
    api_keys_file: str | None = None
    api_keys: str | None = field(default=None, repr=False)
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
    # CHIMERA_HEADER_TIMEOUT_S / CHIMERA_BODY_TIMEOUT_S: how long a client may take to send a
    # request's head and its body (408 and the connection closes beyond: slowloris)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    # CHIMERA_MAX_CONNECTIONS: client connections beyond it are answered 503 at once (unset:
    # derived from the file-descriptor limit, proxy/connections.py)
    max_connections: int | None = None
    # CHIMERA_SIM_WEIGHTS_GBPS: how fast a sim server's /update_weights_from_disk reads weights
    # (GB/s); 0: the calibrated disk bandwidth (orchestrator/perf/calibration.py DISK_LOAD_BW)
    sim_weights_gbps: float = 0.0
    # CHIMERA_HANDOVER_S: how long the proxy's listening socket is kept for the next `up` after
    # a stop that leaves the engines running (orchestrator/handover.py)
    handover_s: float = 10.0
    # CHIMERA_MPS_CONTROL: the CUDA MPS control binary (default: nvidia-cuda-mps-control on
    # PATH; supervisor/mps.py), e.g. a stand-in script for tests
    mps_control: str | None = None

    @classmethod
    def read(cls) -> Env:
        return cls(
            run_dir=os.environ.get("CHIMERA_RUN_DIR") or None,
            sim_speed=_float("CHIMERA_SIM_SPEED", 1.0),
            sim_start_delay_s=_float("CHIMERA_SIM_START_DELAY_S", 0.0),
            admin_key=os.environ.get("CHIMERA_ADMIN_KEY") or None,
            admin_key_file=os.environ.get("CHIMERA_ADMIN_KEY_FILE") or None,
            api_keys_file=os.environ.get("CHIMERA_API_KEYS_FILE") or None,
            api_keys=os.environ.get("CHIMERA_API_KEYS") or None,
            cache_dir=os.environ.get("CHIMERA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "chimera"),
            sglang_extra_args=_args("CHIMERA_SGLANG_ARGS"),
            serial_starts=os.environ.get("CHIMERA_SERIAL_STARTS", "") not in ("", "0"),
            upstream_first_byte_s=_float("CHIMERA_UPSTREAM_FIRST_BYTE_S", 600.0),
            upstream_idle_s=_float("CHIMERA_UPSTREAM_IDLE_S", 300.0),
            max_body_bytes=_int("CHIMERA_MAX_BODY_BYTES", 32 * 1024 * 1024),
            max_header_bytes=_int("CHIMERA_MAX_HEADER_BYTES", 64 * 1024),
            header_timeout_s=_positive("CHIMERA_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=_positive("CHIMERA_BODY_TIMEOUT_S", 60.0),
            max_connections=_int("CHIMERA_MAX_CONNECTIONS", 0) or None,
            sim_weights_gbps=_float("CHIMERA_SIM_WEIGHTS_GBPS", 0.0),
            handover_s=_positive("CHIMERA_HANDOVER_S", 10.0),
            mps_control=os.environ.get("CHIMERA_MPS_CONTROL") or None,
        )

"""Every environment variable the shim reads, in one place. The orchestrator's SGLang adapter
sets them per instance; nothing else in the shim reads the environment.

CHIMERA_SHIM_SOCKET            path of the control socket; set = the shim is requested
CHIMERA_SHIM_LIMIT_BYTES       start-up KV limit in bytes (required when requested)
CHIMERA_SHIM_VIRTUAL_KV_BYTES  virtual pool size in bytes that SGLang sizes its pool for
                               (default: the GPU's total memory; --max-total-tokens still caps)
CHIMERA_SHIM_SLACK_TOKENS      room left to running requests while a shrink drains (2048)
CHIMERA_SHIM_TP_SIZE           the server's tensor-parallel ranks (1): every rank's scheduler
                               process backs its own shard's pool; rank 0's channel is at
                               CHIMERA_SHIM_SOCKET, rank r's at ``rank_socket(path, r)``
CHIMERA_SHIM_MAP_AHEAD_BLOCKS  blocks a background thread keeps mapped ahead of demand, within
                               the limit (2; 0 = map only inside allocations)
CHIMERA_SHIM_IDLE_FILL_S       after this many seconds with no allocation, the same thread maps
                               ahead up to the whole limit, a block at a time, and stops at the
                               next allocation (0.5; 0 = never; needs map-ahead > 0)
CHIMERA_SHIM_MAP_TRACE         a file to append one line per block mapped or unmapped to:
                               what, block, start and end (time.monotonic()), thread
                               (diagnostics: bench/shim/overhead.py reads it)
SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE   must be false: SGLang's idle leak check counts the
                               slots the limit holds back as leaked and would kill the server
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cumem_shim.errors import ShimConfigError

SOCKET = "CHIMERA_SHIM_SOCKET"
LIMIT_BYTES = "CHIMERA_SHIM_LIMIT_BYTES"
VIRTUAL_KV_BYTES = "CHIMERA_SHIM_VIRTUAL_KV_BYTES"
SLACK_TOKENS = "CHIMERA_SHIM_SLACK_TOKENS"
MAP_AHEAD_BLOCKS = "CHIMERA_SHIM_MAP_AHEAD_BLOCKS"
TP_SIZE = "CHIMERA_SHIM_TP_SIZE"
IDLE_FILL_S = "CHIMERA_SHIM_IDLE_FILL_S"
MAP_TRACE = "CHIMERA_SHIM_MAP_TRACE"
STRICT_IDLE_CHECK = "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE"
# set per server by the orchestrator: never inherited from its own environment
PER_SERVER = frozenset({SOCKET, LIMIT_BYTES, VIRTUAL_KV_BYTES, TP_SIZE})
DEFAULT_SLACK_TOKENS = 2048
# Two blocks: one for the next allocation that runs out, one being prepared meanwhile (a block
# of Llama-3.1-8B, 128 MiB, maps in ~2.5 ms on an H100, far less than a prefill that fills it).
DEFAULT_MAP_AHEAD_BLOCKS = 2
DEFAULT_IDLE_FILL_S = 0.5  # measured: bench/shim/overhead.py, docs/benchmarks.md
_FALSE = ("0", "false", "no", "n")


@dataclass(frozen=True)
class Settings:
    socket: str
    limit_bytes: int
    virtual_kv_bytes: int | None
    slack_tokens: int
    map_ahead_blocks: int = DEFAULT_MAP_AHEAD_BLOCKS
    tp_size: int = 1
    idle_fill_s: float = DEFAULT_IDLE_FILL_S
    map_trace: str | None = None


def rank_socket(path: str, rank: int) -> str:
    """The control socket of TP rank ``rank`` of a server whose CHIMERA_SHIM_SOCKET is ``path``
    (rank 0's is ``path`` itself, so a TP-1 server is unchanged). The shim and the orchestrator
    both call this."""
    return path if rank == 0 else f"{path}.r{rank}"


def rank_sockets(path: str, tp_size: int) -> list[str]:
    return [rank_socket(path, r) for r in range(max(1, tp_size))]


def server_env(
    socket: str,
    limit_bytes: int,
    virtual_kv_bytes: int | None = None,
    slack_tokens: int | None = None,
    map_ahead_blocks: int | None = None,
    tp_size: int = 1,
) -> dict[str, str]:
    """The variables an orchestrator adds to a server's environment to turn the shim on (the
    sglang and sim adapters call this; the names are then read only here)."""
    out = {SOCKET: socket, LIMIT_BYTES: str(int(limit_bytes)), STRICT_IDLE_CHECK: "0"}
    if virtual_kv_bytes is not None:
        out[VIRTUAL_KV_BYTES] = str(int(virtual_kv_bytes))
    if slack_tokens is not None:
        out[SLACK_TOKENS] = str(int(slack_tokens))
    if map_ahead_blocks is not None:
        out[MAP_AHEAD_BLOCKS] = str(int(map_ahead_blocks))
    if tp_size > 1:
        out[TP_SIZE] = str(int(tp_size))
    return out


def requested(env: Mapping[str, str] | None = None) -> bool:
    return bool((os.environ if env is None else env).get(SOCKET))


def read(env: Mapping[str, str] | None = None) -> Settings:
    """The shim's settings; raises ShimConfigError naming every bad variable."""
    e = os.environ if env is None else env
    problems: list[str] = []

    def integer(name: str, default: int | None, minimum: int) -> int | None:
        raw = e.get(name, "")
        if raw == "":
            if default is None and name == LIMIT_BYTES:
                problems.append(f"{name} is required with {SOCKET} (the start-up KV limit in bytes)")
            return default
        try:
            val = int(raw)
        except ValueError:
            problems.append(f"{name}={raw!r} must be an integer")
            return default
        if val < minimum:
            problems.append(f"{name}={raw} must be >= {minimum}")
        return val

    socket = e.get(SOCKET, "")
    if not socket:
        problems.append(f"{SOCKET} is not set")
    limit = integer(LIMIT_BYTES, None, 0)
    virtual = integer(VIRTUAL_KV_BYTES, None, 1)
    slack = integer(SLACK_TOKENS, DEFAULT_SLACK_TOKENS, 0)
    ahead = integer(MAP_AHEAD_BLOCKS, DEFAULT_MAP_AHEAD_BLOCKS, 0)
    tp = integer(TP_SIZE, 1, 1)
    idle_fill = DEFAULT_IDLE_FILL_S
    raw_fill = e.get(IDLE_FILL_S, "").strip()
    if raw_fill:
        try:
            idle_fill = float(raw_fill)
        except ValueError:
            problems.append(f"{IDLE_FILL_S}={raw_fill!r} must be a number of seconds")
        else:
            if not idle_fill >= 0:  # also refuses nan
                problems.append(f"{IDLE_FILL_S}={raw_fill} must be >= 0")
    if e.get(STRICT_IDLE_CHECK, "true").strip().lower() not in _FALSE:
        problems.append(
            f"{STRICT_IDLE_CHECK} must be 0 while the shim holds KV slots back "
            "(SGLang's idle leak check would count them as leaked and stop the "
            "server); the orchestrator's adapter sets it"
        )
    if problems:
        raise ShimConfigError("cumem_shim cannot start: " + "; ".join(problems))
    assert limit is not None and slack is not None and ahead is not None and tp is not None
    return Settings(socket, limit, virtual, slack, ahead, tp, idle_fill, e.get(MAP_TRACE) or None)

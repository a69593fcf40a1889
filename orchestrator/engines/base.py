"""The engine contract: turn one instance of the placements file into a process to spawn.

An engine only *describes* the process (argv, environment, where it answers); the supervisor
spawns and watches it. Both engines serve SGLang's HTTP API, so everything after the spawn
(readiness via ``/model_info``, ``/v1/loads``, ``/metrics``, park/wake routes) is engine-agnostic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cumem_shim import settings as shim_settings
from orchestrator.config import HostSpec, InstanceSpec

# SGLang's flag for a YAML file of flags, merged into argv inside the server: how an engine gets
# its API key without the key showing in argv (orchestrator/sglang/auth.py); the sim takes it too
CONFIG_FLAG = "--config"


@dataclass(frozen=True)
class ShimLaunch:
    """The elastic-KV shim for one server (modes elastic/full; its limits: orchestrator/deployment.py)."""

    socket: str  # its control channel (a Unix socket path, < 108 bytes)
    limit_bytes: int  # start-up KV limit; the ledger moves it once the server is up
    virtual_kv_bytes: int  # the virtual range each rank sizes its pool for, per GPU (the ceiling)
    # a directory that registers the plugin entry point, for a Python where chimera is not
    # pip-installed (None: the installed distribution registers it)
    entry_point_dir: str | None = None
    tp_size: int = 1  # every rank's scheduler backs its shard; rank r's channel: rank_socket

    @property
    def sockets(self) -> list[str]:
        """Every rank's control socket, rank 0's (where limits go) first."""
        return shim_settings.rank_sockets(self.socket, self.tp_size)


@dataclass(frozen=True)
class LaunchRequest:
    """What the supervisor decided for one instance before it is spawned."""

    instance: InstanceSpec
    host: HostSpec
    port: int  # HTTP port the server must listen on (loopback)
    nccl_port: int  # distinct per instance (SGLang's default collides between servers)
    kv_bytes: int | None = None  # KV pool size for this instance, from the memory ledger
    listen_host: str = "127.0.0.1"
    # A directory to load instead of model_path: the materialized dummy-weight model (config.json
    # + a local tokenizer, orchestrator/shapes/materialize.py) for engines that need one.
    model_dir: str | None = None
    shim: ShimLaunch | None = None  # None: a fixed KV pool (mode static, or TP > 1)
    # Start-up facts (orchestrator/deployment.py ``start_mem``); None: the engine's fallback.
    max_total_tokens: int | None = None  # the fixed pool in tokens (ignored with the shim)
    mem_fraction_static: float | None = None  # the fraction that holds whatever starts beside it
    cuda_graph_max_bs: int | None = None  # CUDA graphs for batch sizes up to this
    max_running_requests: int | None = None  # request slots (None: derived from the pool)
    # SGLang's ``--config`` YAML holding the engine's ``api-key`` (orchestrator/sglang/auth.py):
    # a file, so that the key stays out of argv; None: an engine without a key
    config_file: str | None = None


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str]  # full environment of the child (not a delta)
    base_url: str  # e.g. http://127.0.0.1:30001
    served_name: str  # the `model` value the server answers to (proxy rewrites to it)
    ready_timeout_s: float = field(default=600.0)  # real SGLang: 63-189 s cold on the H100


class Engine(Protocol):
    name: str
    # True when `load_format: dummy` needs a real model directory with a tokenizer
    # (LaunchRequest.model_dir); the sim engine reads only the shape.
    needs_model_dir: bool

    def launch_spec(self, req: LaunchRequest) -> LaunchSpec:
        """Argv and environment of the server process for one instance. Pure: no I/O."""
        ...


def served_name(model_name: str) -> str:
    """The name a server is started under. SGLang parses ``base:adapter`` in a request's
    ``model`` as a LoRA adapter even when it equals --served-model-name
    (serving_base._parse_model_parameter), so ``:`` becomes ``_``; the proxy rewrites every
    request's ``model`` to this name, so clients keep using the name from the file."""
    return model_name.replace(":", "_")


def get_engine(name: str) -> Engine:
    if name == "sim":
        from orchestrator.engines.simulated import SimEngine

        return SimEngine()
    if name == "sglang":
        from orchestrator.sglang.launch import SGLangEngine

        return SGLangEngine()
    raise ValueError(f"unknown engine {name!r} (choose sim or sglang)")

"""``chimera-orch``: the command line. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import argparse
import functools
import gc
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.cli.args import build_parser
from orchestrator.errors import ConfigError
from orchestrator.handover import take_over
from orchestrator.sockets import tcp_socket

# Nothing heavy above this line: `up` listens on the proxy's port right after parsing its
# arguments, and only then imports chimera (~0.5 s: rich, httpx, uvicorn, the control plane).
# tests/unit/test_startup.py checks it.
if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.config import Config
    from orchestrator.proxy.auth import ClientKeys

__all__ = ["build_parser", "main"]

# Share of host RAM the retained weight backups of parked models may take (the rest: the OS,
# chimera, SGLang's own processes).
HOST_BACKUP_FRACTION = 0.8
EXIT_RUNTIME = 1
EXIT_USAGE = 2
MAX_PROXIES = 64  # proxy processes on one host (--proxies)


def primary_share(raw: str | None, proxies: int) -> float | None:
    """``--primary-share``: the primary's share of new connections, None for the kernel's even
    spread. Default with workers: 0 (measured best, docs/multi-node.md "Steering")."""
    if raw is None:
        return 0.0 if proxies > 1 else None
    try:
        share = None if raw == "even" else float(raw)
    except ValueError:
        share = -1.0
    if proxies < 2 or (share is not None and not 0 <= share <= 1):
        raise ConfigError([f"--primary-share: `even` or a share from 0 to 1, with --proxies 2 or more (got {raw})"])
    return share


@functools.cache
def console() -> Console:
    """The CLI's console (stderr), created on first use: rich is not imported before `up` listens."""
    from rich.console import Console

    return Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "plan":
            from orchestrator.cli import plan as plan_cmd

            return plan_cmd.run(args)
        if args.command == "status":
            from orchestrator.cli import status as status_cmd

            return status_cmd.run(args)
        return _up(args)
    except ConfigError as exc:
        console().print("[bold red]invalid placements file:[/]")
        for problem in exc.problems:
            console().print(f"  • {problem}", markup=False, highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _check(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config

    cfg = load_config(args.file, gpu_count=args.gpus)
    _print_plan(cfg)
    console().print(
        f"[green]{args.file}: valid[/] ({len(cfg.models)} models, "
        f"{len(cfg.instances)} instances, {cfg.gpu_count} GPU(s))"
    )
    return 0


def _print_plan(cfg: Config) -> None:
    from rich.table import Table  # `check` only: not on `up`'s start-up path

    from orchestrator.config import GIB
    from orchestrator.deployment import derive

    table = Table(title=f"placements of {cfg.source}")
    for col in ("instance", "GPUs", "shape", "weights/GPU", "KV/token", "KV ceiling", "at up"):
        table.add_column(col)
    facts = derive(cfg).instances
    for inst in cfg.instances:
        m = inst.model
        at_up = facts[inst.id]
        kv = f"{inst.placement.kv_pool_gb:g} GB" if inst.placement.kv_pool_gb is not None else "-"
        table.add_row(
            inst.id,
            ",".join(map(str, inst.gpus)),
            m.shape.name,
            f"{m.shape.weight_bytes / m.tp_size / GIB:.1f} GiB",
            f"{m.shape.kv_bytes_per_token / 1024:.0f} KiB",
            kv,
            "start" if at_up.serves_on_up else "start, park" if at_up.warm_start_park else "on demand",
        )
    console().print(table)


def _pick_engine(requested: str) -> tuple[str, int | None]:
    """(engine, GPUs of this host or None for the sim host). Says loudly what auto chose."""
    from orchestrator.sglang.detect import cuda_gpu_count, sglang_available

    if requested == "sim":
        return "sim", None
    gpus = cuda_gpu_count()
    has_sglang = sglang_available()
    if requested == "sglang":
        if gpus == 0 or not has_sglang:
            missing = " and ".join(
                x for x, ok in (("a CUDA GPU", gpus > 0), ("the sglang package", has_sglang)) if not ok
            )
            raise ConfigError(
                [f"--engine sglang needs {missing} (install: pip install '.[gpu]' on a GPU host), or use --engine sim"]
            )
        return "sglang", gpus
    if gpus > 0 and has_sglang:
        console().print(f"[bold green]engine: sglang[/] ({gpus} CUDA GPU(s), sglang installed)")
        return "sglang", gpus
    why = "no CUDA GPU" if gpus == 0 else "sglang is not installed"
    console().print(
        f"[bold yellow]engine: sim — SIMULATED engines ({why}); latencies come from a model of an H100, not a GPU[/]"
    )
    return "sim", None


def _pick_cluster_engine(requested: str) -> str:
    """``--ray``: the GPUs are the nodes', not this host's; sglang must import here (and on the
    nodes, which the agents' first start shows). auto = sglang when it imports, else sim."""
    from orchestrator.sglang.detect import sglang_available

    if requested == "sim":
        return "sim"
    if sglang_available():
        return "sglang"
    if requested == "sglang":
        raise ConfigError(["--engine sglang needs the sglang package (pip install '.[gpu]'), or use --engine sim"])
    console().print("[bold yellow]engine: sim — SIMULATED engines on the Ray nodes (sglang is not installed)[/]")
    return "sim"


def _up(args: argparse.Namespace) -> int:
    if args.admin_key is not None:
        raise ConfigError(
            [
                "--admin-key is no longer accepted: a key on the command line is visible to every local "
                "user (ps). Set CHIMERA_ADMIN_KEY, or CHIMERA_ADMIN_KEY_FILE to a file holding it"
            ]
        )
    if not 0 < args.port < 65536:
        raise ConfigError([f"--port: {args.port} is not a TCP port (1-65535)"])
    if args.hold_timeout_s <= 0:
        raise ConfigError([f"--hold-timeout-s: must be > 0 (got {args.hold_timeout_s})"])
    if not 1 <= args.proxies <= MAX_PROXIES:
        raise ConfigError([f"--proxies: must be 1-{MAX_PROXIES} (got {args.proxies})"])
    args.primary_share = primary_share(args.primary_share, args.proxies)
    # Listen first: from here on a client's connection waits in the kernel's backlog until the
    # proxy serves it (a restart of the control plane is a short wait, not a refused connection).
    # Under systemd socket activation the socket outlives chimera itself: not even a restart's
    # wait is refused (docs/operations.md).
    from orchestrator.env import Env  # standard library only

    runs_root = Path(Env.read().run_dir or "runs").resolve()
    run_dir = (args.run_dir or runs_root / time.strftime("%Y%m%d-%H%M%S")).resolve()
    sock = inherited_socket()
    handed_over = sock is not None
    adopt_from, previous = previous_run(run_dir, None if args.run_dir else runs_root, ray=args.ray is not None)
    if sock is None and args.proxies == 1:  # a previous chimera's socket, kept for this one
        sock = take_over(previous, args.host, args.port)
    if sock is None:
        sock = _listen(args.host, args.port, reuse_port=args.proxies > 1)
    elif args.proxies > 1:
        sock.close()
        raise ConfigError(
            [
                "--proxies: more than one proxy process needs a port chimera binds itself (SO_REUSEPORT), "
                "not a socket handed over by systemd (LISTEN_FDS)"
            ]
        )
    if handed_over:  # what it listens on is the socket's, not --host/--port
        args.host, args.port = sock.getsockname()[:2]
    # no cyclic garbage collection during the imports (~600 modules, nothing to collect):
    # ~5% of them on this path; on again before serving
    gc.disable()
    try:
        return _up_listening(args, sock, run_dir, adopt_from, handed_over)
    finally:
        gc.enable()
        sock.close()


def previous_run(run_dir: Path, runs_root: Path | None, ray: bool) -> tuple[Path | None, Path]:
    """(what re-adoption reads, the run folder a previous chimera handed its socket over in).
    The engines a previous run left: its state file, or under ``--ray`` its run folder (one
    state file per node); re-adopted where they match (supervisor/statefile.py). ``runs_root``
    None: ``--run-dir`` was given, only its own folder counts."""
    from orchestrator.supervisor.statefile import find_previous, find_previous_run

    if ray:
        folder = find_previous_run(run_dir, runs_root)
        return folder, folder or run_dir
    found = find_previous(run_dir, runs_root)
    return found, found.parent if found is not None else run_dir


def _up_listening(
    args: argparse.Namespace, sock: socket.socket, run_dir: Path, adopt_from: Path | None, handed_over: bool = False
) -> int:
    import asyncio
    import dataclasses
    import logging

    from rich.logging import RichHandler

    from orchestrator.config import load_config, parse_config, read_placements

    cluster = None
    if args.ray is not None:
        from orchestrator.cluster.connect import connect
        from orchestrator.cluster.placing import globalize

        engine = _pick_cluster_engine(args.engine)
        cluster = connect(args.ray)
        raw = globalize(read_placements(args.file), cluster, source=str(args.file))
        cfg = parse_config(raw, source=str(args.file), gpu_count=max(cluster.gpu_count, 1))
    else:
        engine, gpus = _pick_engine(args.engine)
        cfg = load_config(args.file, gpu_count=gpus)
        named = sorted({i.placement.node for i in cfg.instances if i.placement.node is not None})
        if named:
            raise ConfigError([f"{args.file}: placements name nodes ({', '.join(named)}): that needs --ray"])
    if args.mode is not None:
        cfg = dataclasses.replace(cfg, mode=args.mode)
    _check_host_memory(cfg, engine, per_node=cluster is not None)
    _dry_run_launch(cfg, engine)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=console(), show_path=False)],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine call otherwise
    from orchestrator.app import serve

    admin_key, client_keys = _secrets(cfg)
    gc.enable()
    try:
        return asyncio.run(
            serve(
                cfg,
                engine,
                args.host,
                args.port,
                run_dir,
                args.hold_timeout_s,
                console(),
                admin_key,
                adopt_from=adopt_from,
                keep_engines=args.keep_engines_on_exit,
                cluster=cluster,
                client_keys=client_keys,
                proxies=args.proxies,
                primary_share=args.primary_share,
                sock=sock,
                sock_outlives_us=handed_over,
            )
        )
    finally:
        if cluster is not None:
            from orchestrator.cluster.connect import disconnect

            disconnect()


def _secrets(cfg: Config) -> tuple[str | None, ClientKeys | None]:
    """The admin key and the client keys, read once (files named by the environment or the
    placements file). Raises ConfigError, never quoting a key."""
    from orchestrator.env import Env, read_secret
    from orchestrator.proxy.auth import deployment_keys

    env = Env.read()
    try:
        admin_key = read_secret(env.admin_key, env.admin_key_file, "CHIMERA_ADMIN_KEY")
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    return admin_key, deployment_keys(cfg, env)


def _check_host_memory(cfg: Config, engine_name: str, per_node: bool = False) -> None:
    """Time-sharing keeps each parked model's weights in pinned host RAM (SGLang's retained CPU
    backup, TMS_RETAIN_CPU_BACKUP=1), and pools with ``stage: pinned`` pin their ``stage_gb``
    beside them: refuse a file whose backups and pinned staging cannot all fit. ``per_node``
    (``--ray``): the instances of each node against one host's RAM (the sim host's, or this
    host's as a stand-in for a node's)."""
    import dataclasses

    from orchestrator.config import GIB

    if cfg.mode != "full":
        return
    if per_node:
        for node in sorted({i.placement.node or "" for i in cfg.instances}):
            mine = tuple(i for i in cfg.instances if (i.placement.node or "") == node)
            _check_host_memory(dataclasses.replace(cfg, instances=mine), engine_name)
        return
    need = sum(i.model.shape.weight_bytes for i in cfg.instances)
    pinned = sum(p.stage_bytes for p in cfg.pools if p.stage == "pinned")  # the pinned holder's buffers
    if engine_name == "sim":
        have = cfg.host.host_memory_gb * GIB
        what = f"the simulated host's {cfg.host.host_memory_gb:g} GB (host.host_memory_gb)"
    else:
        import psutil

        have = psutil.virtual_memory().total
        what = f"this host's {have / GIB:.0f} GiB of RAM"
    if need + pinned > HOST_BACKUP_FRACTION * have:
        beside = f" beside the pools' pinned staging ({pinned / GIB:.1f} GiB of stage_gb)" if pinned else ""
        raise ConfigError(
            [
                f"{cfg.source}: time-sharing keeps every parked model's weights in pinned host RAM: "
                f"{need / GIB:.1f} GiB for these {len(cfg.instances)} instance(s){beside}, more than "
                f"{HOST_BACKUP_FRACTION:.0%} of {what}; use fewer placements, less stage_gb or `mode: elastic`"
            ]
        )


def _dry_run_launch(cfg: Config, engine_name: str) -> None:
    """Build every instance's command line once before starting anything, so a bad engine
    argument is a usage error (exit 2) instead of a failed start minutes later."""
    from orchestrator.engines import LaunchRequest, get_engine

    engine = get_engine(engine_name)
    problems: list[str] = []
    for inst in cfg.instances:
        try:
            engine.launch_spec(LaunchRequest(instance=inst, host=cfg.host, port=1, nccl_port=2))
        except ConfigError as exc:
            problems += [f"{inst.id}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(sorted(set(problems)))


SD_LISTEN_FDS_START = 3  # systemd's first passed descriptor (sd_listen_fds(3))
SO_DETACH_FILTER = 27  # Linux <asm-generic/socket.h>


def inherited_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed (socket activation: ``LISTEN_PID`` is this process,
    ``LISTEN_FDS`` 1, the socket at descriptor 3), else None. The variables are removed (as
    ``sd_listen_fds(1)`` does) so that no engine takes them for its own, and the descriptor is
    not inherited by engines. A drop filter a stopping chimera attached is detached (it would
    keep every client out of this one)."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()) or "LISTEN_FDS" not in env:
        return None
    count = env.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if count != "1":
        raise ConfigError([f"socket activation: chimera takes exactly one listening socket (LISTEN_FDS={count!r})"])
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        raise ConfigError([f"socket activation: descriptor 3 is not a socket ({exc.strerror})"]) from exc
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ConfigError(["socket activation: descriptor 3 is not a listening TCP socket"])
    sock.set_inheritable(False)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass  # none attached (ENOENT)
    return sock


LISTEN_BACKLOG = 2048  # uvicorn's default: connections queued while chimera starts


def _listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The proxy's listening socket, bound and listening before chimera's slow start-up (imports,
    re-adoption); uvicorn serves on it. Not inherited by engines (Python's sockets are not).
    ``reuse_port``: ``--proxies`` > 1, whose worker processes bind the same port. Made with
    ``IPPROTO_TCP`` named (``tcp_socket``): asyncio sets TCP_NODELAY only on connections so
    accepted."""
    sock = tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            [f"--host/--port: cannot listen on {host}:{port} ({exc.strerror}); pick another with --port"]
        ) from exc
    return sock


if __name__ == "__main__":
    sys.exit(main())

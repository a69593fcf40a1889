"""The command line's grammar: every subcommand's arguments, and nothing else, so that `up` parses
its arguments and listens on the proxy's port before importing chimera (a restarting control
plane then queues clients in the kernel instead of refusing them; docs/operations.md). The
commands themselves are in main.py (`up`, `check`), plan.py and status.py, imported when run."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator import __version__

DEFAULT_URL = "http://127.0.0.1:8000"  # `status`: the URL `up` serves by default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera-orch",
        description="Serve many LLMs from a few GPUs over stock SGLang, behind one OpenAI-compatible endpoint.",
        epilog="Example: chimera-orch up placements/example.yaml  (then: curl http://127.0.0.1:8000/v1/models)",
    )
    p.add_argument("--version", action="version", version=f"chimera {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start the placements of FILE and serve them through one endpoint",
        description="Start the placements of FILE, one engine instance each (colocated instances "
        "on a GPU start one at a time). A placement with `on: false` is started too and parked "
        "once awake in mode full; in modes static and elastic it starts only when a request for "
        "its model finds none of the model's instances running. Serve all models through one "
        "OpenAI-compatible proxy "
        "(/v1/chat/completions, /v1/completions, /generate, /v1/models, /metrics). "
        "Ctrl-C stops every engine process.",
    )
    up.add_argument("file", metavar="FILE", help="placements file: chimera YAML or Prism's JSON model_configs")
    up.add_argument(
        "--engine",
        choices=("auto", "sim", "sglang"),
        default="auto",
        help="engine to run: sglang = stock SGLang servers (needs a CUDA GPU and the "
        "sglang package); sim = built-in simulated SGLang server with an H100 "
        "latency model (no GPU); auto = sglang when both are present, else sim "
        "(default: %(default)s)",
    )
    up.add_argument("--host", default="127.0.0.1", help="address the proxy listens on (default: %(default)s)")
    up.add_argument("--port", type=int, default=8000, help="port the proxy listens on (default: %(default)s)")
    up.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="folder for engine logs (default: $CHIMERA_RUN_DIR or runs/, then <date-time>)",
    )
    up.add_argument(
        "--hold-timeout-s",
        type=float,
        default=300.0,
        help="how long a request may wait for its model to start or wake before a 503 "
        "with Retry-After (default: %(default)s)",
    )
    # removed: a key on the command line is readable by every local user (ps); kept only to
    # say so clearly (the admin key: CHIMERA_ADMIN_KEY or CHIMERA_ADMIN_KEY_FILE)
    up.add_argument("--admin-key", default=None, help=argparse.SUPPRESS)
    up.add_argument(
        "--keep-engines-on-exit",
        action="store_true",
        help="on SIGINT/SIGTERM stop chimera but leave ready engines running, for the next `up` "
        "to re-adopt (an upgrade; SIGUSR1 does this for one exit); default: stop every engine",
    )
    up.add_argument(
        "--mode",
        choices=("static", "elastic", "full"),
        default=None,
        help="deployment mode, overriding the file's `mode:`: static = fixed KV "
        "pools; elastic = KV limits re-split at run time; full = elastic + "
        "time-sharing (idle models park, wake on demand) (default: the file's, "
        "else full)",
    )
    up.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run across a Ray cluster: `auto` (the cluster this host belongs to) or its address "
        "(HOST:6379 or ray://HOST:10001); one node agent per node starts the engines there; "
        "placements may name a node with `node:` (needs the ray extra: pip install 'chimera[ray]')",
    )
    up.add_argument(
        "--proxies",
        type=int,
        default=1,
        metavar="N",
        help="proxy processes serving the port (SO_REUSEPORT): this one and N-1 workers that ask "
        "the control loop for every request's instance; holds and wakes stay the control loop's "
        "(default: %(default)s)",
    )
    up.add_argument(
        "--primary-share",
        default=None,
        metavar="F",
        help="with --proxies N: the share of new connections (0-1) this process serves itself, "
        "which also runs the control loop and every worker's channel; `even`: the kernel's spread, "
        "1/N (default: 0, the workers serve every client: 3.7x one process with 4 on 16 cores, "
        "against 2.7x for even; Linux: a reuseport BPF program)",
    )
    up.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="chimera's own log level (default: %(default)s)",
    )

    check = sub.add_parser(
        "check",
        help="validate FILE and print each GPU's memory budget, without starting anything",
        description="Validate a placements file (the same checks `up` makes) and print what "
        "would run where. Exit code 2 when the file is invalid.",
    )
    check.add_argument("file", metavar="FILE")
    add_plan_parser(sub)
    add_status_parser(sub)
    check.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs of the target host (default: host.gpus of the file, or as many as the file uses)",
    )
    return p


def add_plan_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plan",
        help="dry run: each GPU's memory budget and where the global scheduler would wake what",
        description="Print each GPU's memory budget (weights, KV floor, runtime overhead of every "
        "instance, parked and awake; H100 model of the sim engine), flag placements that cannot "
        "work, and with --rates show the placement the global scheduler would choose. Exit code 2 "
        "when the file is invalid or impossible.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of the target host")
    p.add_argument(
        "--rates", default=None, metavar="MODEL=REQ/S,...", help="request rate per model, e.g. llama-8b=4,qwen-7b=0.5"
    )
    p.add_argument(
        "--tokens-per-request",
        type=float,
        default=520.0,
        help="prompt + output tokens per request, to turn rates into token rates "
        "(default: %(default)s, Prism's synthetic mean)",
    )


def add_status_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "status",
        help="print a running chimera's models and GPUs (kubectl get style; --watch to follow)",
        description="Print the state of a running chimera-orch, read from its GET /dashboard/state: "
        "one line per model (state, instances, requests, in flight, held, shed, TTFT p50/p99 "
        "against its SLO, recent wake and park times, time in its state) and one per GPU (memory "
        "chimera budgets there, and its weights backed up in host RAM by parks). "
        "Exit code 1 when nothing answers at URL.",
    )
    p.add_argument("url", nargs="?", default=DEFAULT_URL, help="chimera's base URL (default: %(default)s)")
    p.add_argument("--watch", "-w", action="store_true", help="redraw until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between redraws with --watch")

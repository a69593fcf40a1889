"""SGLang's plugin entry point: ``activate`` is registered in the entry-point group
``sglang.srt.plugins`` (pyproject.toml, or ``entry_point_dir`` for an SGLang environment where
chimera is not installed).

SGLang 0.5.17's ``sglang.srt.plugins.load_plugins()`` calls every plugin of that group with no
arguments, once per process, early: in the ``launch_server`` main process before the server
arguments are parsed (launch_server.py), and at the top of every scheduler process
(``run_scheduler_process`` in srt/managers/scheduler.py) before the Scheduler, its model runner
and its KV pool exist. 0.5.23 adds the detokenizer and data-parallel controller processes.

``load_plugins`` logs and swallows an ``Exception`` from a plugin (and from importing it) and
then runs SGLang unpatched. So this module imports nothing heavy at import time, and a shim that
was asked for but cannot be installed raises ``SystemExit`` (not an ``Exception``): the process
stops with the reason instead of serving with a fixed-size KV pool. Without CHIMERA_SHIM_SOCKET
``activate`` does nothing.
"""

from __future__ import annotations

from pathlib import Path

ENTRY_POINT_GROUP = "sglang.srt.plugins"
ENTRY_POINT_NAME = "chimera_cumem"
ENTRY_POINT_VALUE = "cumem_shim.plugin:activate"
_DIST = "chimera_cumem_shim-0.1.0.dist-info"


def activate() -> None:
    from cumem_shim import settings

    if not settings.requested():
        return
    from cumem_shim.errors import ShimConfigError

    try:
        s = settings.read()
        from cumem_shim import _driver, hooks

        _driver._drv()  # cuda-python must be importable before anything is patched
        hooks.install(s)
    except ShimConfigError as exc:
        msg = str(exc) if str(exc).startswith("cumem_shim") else f"cumem_shim: {exc}"
        raise SystemExit(msg) from exc  # printed to stderr, exit status 1


def registered() -> bool:
    """True when this Python's installed distributions register the plugin (chimera was
    pip-installed), so a server started with it needs no ``entry_point_dir``."""
    from importlib.metadata import entry_points

    return any(ep.name == ENTRY_POINT_NAME for ep in entry_points(group=ENTRY_POINT_GROUP))


def entry_point_dir(parent: str | Path) -> Path:
    """Make ``parent`` a directory that registers this plugin for any Python that has it on
    ``sys.path`` (PYTHONPATH), next to the chimera sources: a minimal ``.dist-info`` with the
    entry point, which ``importlib.metadata`` (SGLang's plugin discovery) reads. For SGLang
    environments where chimera is not pip-installed. Idempotent; returns ``parent``."""
    root = Path(parent)
    info = root / _DIST
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chimera-cumem-shim\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{ENTRY_POINT_NAME} = {ENTRY_POINT_VALUE}\n")
    return root

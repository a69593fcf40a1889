"""``MapTrace``: one line per block the pool maps or unmaps, appended to a file, for telling
which requests ran beside a driver call (bench/shim/overhead.py). Off unless
CHIMERA_SHIM_MAP_TRACE names a file (settings.py).

A line: ``what block start end`` with times from ``time.monotonic()`` (CLOCK_MONOTONIC: the
same clock in every process of the host, so a client's ``time.perf_counter()`` on Linux reads
it too). ``what``: ``prepare`` (the map-ahead worker), ``inline`` (a map inside an allocation,
on the scheduler thread), ``discard`` (the worker unmaps a prepared block above the limit),
``unmap`` (a shrink, scheduler thread). Thread-safe; a failed write is dropped, never raised
into the pool.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TextIO

log = logging.getLogger("cumem_shim")
KINDS = ("prepare", "inline", "discard", "unmap")


class MapTrace:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        try:
            self._file = Path(path).open("a", buffering=1)
        except OSError as exc:
            log.warning("cumem_shim: cannot write the map trace %s (%s): tracing is off", path, exc)

    def record(self, what: str, block: int, start: float, end: float) -> None:
        if self._file is None:
            return
        with self._lock:
            try:
                self._file.write(f"{what} {block} {start:.6f} {end:.6f}\n")
            except (OSError, ValueError):  # full disk, closed file: stop tracing quietly
                self._file = None


def read(path: Path) -> list[tuple[str, int, float, float]]:
    """The lines of a trace file, malformed ones skipped (a server killed mid-write)."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[0] not in KINDS:
            continue
        try:
            out.append((parts[0], int(parts[1]), float(parts[2]), float(parts[3])))
        except ValueError:
            continue
    return out

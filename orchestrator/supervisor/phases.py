"""Per-phase start-up times of one engine instance: spawn, init, weights, KV, graphs, ready,
probe and first park, from the supervisor's own timestamps and the engine's log.

The engine log is followed while the supervisor polls readiness (every 0.25 s, so a phase is
known to that resolution): the first line matching each mark of ``LOG_MARKS`` is stamped with
the supervisor's monotonic clock. The marks are stock SGLang's (``Load weight begin/end`` in
the model runner, ``KV Cache is allocated`` in the KV pool, ``Capture cuda graph end`` in the
graph runner; later releases spell the last one ``Capture ... CUDA graph end``, matched too);
the sim engine prints the same lines. A mark that never shows (a release that renamed it, a
server without CUDA graphs) leaves its phase ``None`` and the next phase counts from the last
mark seen, so the phases always add up to the total.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# (mark, pattern), in the order a server reaches them
LOG_MARKS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("weights_begin", re.compile(r"Load weight begin", re.IGNORECASE)),
    ("weights_end", re.compile(r"Load weight end", re.IGNORECASE)),
    ("kv", re.compile(r"KV Cache is allocated|Memory pool end", re.IGNORECASE)),
    ("graphs", re.compile(r"Capture [\w ]*?cuda graph end", re.IGNORECASE)),
)
# phase name -> the mark that ends it, in order; each phase starts at the last mark seen before
PHASES: tuple[tuple[str, str], ...] = (
    ("spawn", "spawned"),  # fork/exec of the server process
    ("init", "weights_begin"),  # interpreter, imports, CUDA context, NCCL
    ("weights", "weights_end"),
    ("kv", "kv"),  # KV pool allocation (profile + buffers, or the shim's virtual range)
    ("graphs", "graphs"),  # CUDA-graph capture
    ("ready", "ready"),  # to GET /model_info answering 200 (HTTP server, warm-up)
    ("probe", "probed"),  # the readiness probe's generate
)


@dataclass
class LogFollower:
    """Reads an engine log from ``offset`` on, a chunk at a time, and stamps marks."""

    path: Path
    offset: int = 0
    seen: dict[str, float] = field(default_factory=dict)
    _partial: str = ""

    @classmethod
    def at_end(cls, path: Path) -> LogFollower:
        """Follow only what is written from now on (the log is appended to across restarts)."""
        try:
            return cls(path, os.path.getsize(path))
        except OSError:
            return cls(path)

    def poll(self, now: float) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        self.offset += len(chunk)
        lines = (self._partial + chunk.decode(errors="replace")).split("\n")
        self._partial = lines.pop()
        for line in lines:
            for mark, pattern in LOG_MARKS:
                if mark not in self.seen and pattern.search(line):
                    self.seen[mark] = now


@dataclass
class StartupRecord:
    """One instance's start: its marks (monotonic seconds) and what the memory check found."""

    instance: str
    model: str
    t0: float
    marks: dict[str, float] = field(default_factory=dict)
    first_park_s: float | None = None
    budget_bytes: int | None = None
    measured_bytes: int | None = None
    per_process: bool | None = None

    def phases(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        last = self.t0
        for phase, mark in PHASES:
            t = self.marks.get(mark)
            if t is None or t < last:
                out[phase] = None
                continue
            out[phase] = round(t - last, 3)
            last = t
        end = self.marks.get("probed")
        out["total"] = None if end is None else round(end - self.t0, 3)
        out["first_park"] = None if self.first_park_s is None else round(self.first_park_s, 3)
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "model": self.model,
            "phases_s": self.phases(),
            "budget_bytes": self.budget_bytes,
            "measured_bytes": self.measured_bytes,
            "per_process": self.per_process,
        }

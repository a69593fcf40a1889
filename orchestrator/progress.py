"""What a person sees while chimera starts: one line per instance with its state and elapsed
time (rich), then one log line per state change. Fed by the supervisor's state observers."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from orchestrator.types import InstanceState, InstanceView

S = InstanceState
_SETTLED = frozenset({S.AWAKE, S.FAILED, S.PARKED, S.STOPPED})
_STYLE = {S.AWAKE: "green", S.FAILED: "bold red", S.BACKOFF: "bold yellow", S.STARTING: "yellow", S.PENDING: "dim"}


class StartupProgress:
    def __init__(self, console: Console, views: list[InstanceView], start_on_up: set[str]) -> None:
        self.console = console
        self._t0 = time.monotonic()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._states: dict[str, InstanceState] = {}
        self._live = False
        self._expected = start_on_up  # instances `up` starts; the display ends when they settle
        self.settled_event = asyncio.Event()
        for v in views:
            idle = v.id not in start_on_up  # `on: false`: nothing to wait for, no spinner
            self._tasks[v.id] = self._progress.add_task(self._describe(v), total=1, completed=1 if idle else 0)
            self._states[v.id] = v.state
        if self.settled:
            self.settled_event.set()

    def __enter__(self) -> StartupProgress:
        self._progress.start()
        self._live = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        if self._live:
            self._progress.stop()
            self._live = False

    @property
    def settled(self) -> bool:
        """Every instance `up` starts is awake (or failed), and none is still on its way."""
        return all(self._states[i] in _SETTLED - {S.STOPPED} for i in self._expected) and not any(
            s in (S.PENDING, S.STARTING, S.BACKOFF) for s in self._states.values()
        )

    def observe(self, view: InstanceView) -> None:
        self._states[view.id] = view.state
        if self.settled:
            self.settled_event.set()
        if self._live:
            done = view.state in _SETTLED
            self._progress.update(self._tasks[view.id], description=self._describe(view), completed=1 if done else 0)
            if view.state is S.FAILED and view.error:
                self._progress.console.print(f"[bold red]{view.id} failed:[/] {view.error}")
            elif view.state is S.BACKOFF and view.error:
                self._progress.console.print(f"[bold yellow]{view.id} will restart:[/] {view.error}")
        else:
            t = time.monotonic() - self._t0
            style = _STYLE.get(view.state, "default")
            self.console.print(
                f"[dim]{t:8.1f}s[/] {view.id} → [{style}]{view.shown_state}[/]"
                + (f" ({view.error})" if view.error else "")
            )

    @staticmethod
    def _describe(v: InstanceView) -> str:
        style = _STYLE.get(v.state, "default")
        gpus = ",".join(str(g) for g in v.gpus)
        return f"{v.id:<28} GPU {gpus:<5} [{style}]{v.shown_state}[/]"

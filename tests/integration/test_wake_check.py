"""A woken server serves from its continue on; its output is checked beside the first requests
(supervisor ``_wake``): a wrong output stops it afterwards, and the loop hears ``Exited``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from orchestrator.config import InstanceSpec, parse_config
from orchestrator.control.events import Event, Exited, Parked, Started, Woken
from orchestrator.deployment import derive
from orchestrator.engines import get_engine
from orchestrator.supervisor.process import PROBE_BODY, PROBE_PATH
from orchestrator.supervisor.supervisor import Supervisor


async def until(events: list[Event], pred: Callable[[Event], bool], timeout_s: float = 60) -> Event:
    for _ in range(int(timeout_s / 0.02)):
        found = next((e for e in events if pred(e)), None)
        if found is not None:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no such event in {events}")


async def started(tmp_path: Path) -> tuple[Supervisor, list[Event], Started, InstanceSpec]:
    raw = {"models": [{"name": "a", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]}]}
    dep = derive(parse_config(raw))
    events: list[Event] = []
    sup = Supervisor(get_engine("sim"), dep.config.host, tmp_path, post=events.append, deployment=dep)
    inst = dep.config.instances[0]
    sup.start(inst)
    ev = await until(events, lambda e: isinstance(e, Started))
    assert isinstance(ev, Started)
    return sup, events, ev, inst


async def test_a_wake_reports_woken_then_checks_the_output_and_a_park_waits_for_the_check(tmp_path: Path) -> None:
    sup, events, _, inst = await started(tmp_path)
    try:
        sup.park(inst, "test")
        await until(events, lambda e: isinstance(e, Parked))
        sup.wake(inst)
        await until(events, lambda e: isinstance(e, Woken))
        sup.park(inst, "at once")  # while the output may still be checked: waits, then parks
        await until(events, lambda e: isinstance(e, Parked) and e is not events[1])
        assert [type(e) for e in events] == [Started, Parked, Woken, Parked]
    finally:
        await sup.stop_all()


async def test_a_wrong_output_after_the_wake_stops_the_server(tmp_path: Path) -> None:
    sup, events, ev, inst = await started(tmp_path)
    try:
        sup.park(inst, "test")
        await until(events, lambda e: isinstance(e, Parked))
        sup._procs[inst.id].probe_output = "not what this server answers"  # as weights that did not come back
        sup.wake(inst)
        woken = await until(events, lambda e: isinstance(e, Woken))
        exited = await until(events, lambda e: isinstance(e, Exited))
        assert events.index(woken) < events.index(exited)  # served first, stopped once checked
        async with httpx.AsyncClient() as c:
            try:
                r = await c.post(ev.endpoint.base_url + PROBE_PATH, json=PROBE_BODY, timeout=5)
                assert r.status_code != 200
            except httpx.TransportError:
                pass  # gone: what is expected
    finally:
        await sup.stop_all()

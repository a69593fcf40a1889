"""The control loop's wake gate with the real KV ledger (mode full): a parked model activated
beside a neighbour whose shim maps most of the GPU is woken only once the ledger has shrunk the
neighbour and its pages are gone; meanwhile its view says ``wake_due`` (the ledger counts its
weights) and the wait is measured. A recording fake for the effects, a fake clock, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cumem_shim.types import Status
from orchestrator.config import parse_config
from orchestrator.control.events import Parked, Started, Tick, Woken
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.deployment import Deployment, derive
from orchestrator.kv.ledger import Ledger, Observation, SetLimit
from orchestrator.kv.wiring import kv_instances
from orchestrator.types import InstanceState, LoadSample
from tests.unit.control_fakes import Clock, RecordingEffects, ep, settle

S = InstanceState
GIB = 1 << 30
BLOCK = 32 << 20
# One 40 GB GPU: an awake 8B (a) and a 1B placed `on: false` (b, parked by the warm start). The
# cost model lets b wake beside a; what a's shim maps decides whether it really fits.
RAW = {
    "mode": "full",
    "host": {"gpus": 1, "gpu_memory_gb": 40},
    "models": [
        {"name": "a", "model_path": "llama-3.1-8b", "placements": [{"gpus": [0]}]},
        {"name": "b", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0], "on": False}]},
    ],
}
A, B = "a@gpu0", "b@gpu0"


def status(mapped: int, limit: int, revision: int = 0) -> Status:
    return Status(mapped, 0, limit, revision, 1 << 20, limit // (128 << 10), BLOCK, 256, False)


def idle(iid: str, at: float) -> LoadSample:
    return LoadSample(iid, at, 0, 0, 0, 0, 1 << 20, None, 0.0)


class KV:
    """The KV runner's part, by hand: the real ledger over the loop's views and given statuses."""

    def __init__(self, ctl: ControlLoop, dep: Deployment, clock: Clock) -> None:
        self.ctl, self.dep, self.clock = ctl, dep, clock
        self.ledger = Ledger({0: dep.gpu_bytes})
        self.statuses: dict[str, Status] = {}

    def round(self) -> list[SetLimit]:
        """One ledger round; its limits accepted at once (as the shims do)."""
        now = self.clock()
        seen = {iid: Observation(idle(iid, now), st) for iid, st in self.statuses.items()}
        acts = self.ledger.plan(kv_instances(self.ctl.instances(), self.dep), seen, now)
        out = []
        for x in acts:
            if isinstance(x, SetLimit):
                self.ledger.accepted(x.instance, x.bytes, x.revision)
                out.append(x)
        return out


Env = tuple[ControlLoop, RecordingEffects, Clock, KV]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    dep = derive(parse_config(RAW))
    fx, clock = RecordingEffects(), Clock()
    ctl = ControlLoop(dep, fx, clock=clock)
    kv = KV(ctl, dep, clock)
    ctl.room = kv.ledger.room
    task = asyncio.create_task(ctl.run())
    await settle()
    for iid in (A, B):
        ctl.post(Started(iid, ep(iid), seconds=1.0))
        await settle()
    assert fx.parked == [(B, "warm_start")]
    ctl.post(Parked(B, 0.4, 2 * GIB))
    await settle()
    yield ctl, fx, clock, kv
    await cancel_and_wait(task)


def view(ctl: ControlLoop, iid: str) -> tuple[S, bool]:
    v = next(v for v in ctl.instances() if v.id == iid)
    return v.state, v.wake_due


async def test_loop__a_wake_waits_until_the_neighbours_pages_make_room(env: Env) -> None:
    ctl, fx, clock, kv = env
    # b parked: a's share is the whole budget, and its idle fill maps all of it
    kv.statuses = {A: status(BLOCK, BLOCK), B: status(BLOCK, 0)}
    (grow,) = [x for x in kv.round() if x.instance == A]
    kv.statuses[A] = status(grow.bytes, grow.bytes, grow.revision)
    kv.round()
    before = kv.ledger.room(B)
    assert before is not None and before.short_bytes > 0

    spec = ctl.resolve("b")
    assert spec is not None
    held = asyncio.create_task(ctl.acquire(spec, 60))
    await settle()
    assert fx.woken == [] and view(ctl, B) == (S.PARKED, True)  # the wake is due, and waits
    shown = next(v for v in ctl.instances() if v.id == B).shown_state
    assert shown == "wake_due"  # how timelines, the dashboard and `status` show it
    assert fx.views[-1].id == B and fx.views[-1].wake_due  # published: the KV runner re-splits

    # the ledger counts b's weights now: a is shrunk, its prefix cache still maps the pages
    clock.t = 1.0
    (shrink,) = kv.round()
    assert shrink.instance == A and shrink.bytes < grow.bytes
    kv.statuses[A] = status(grow.bytes, shrink.bytes, shrink.revision)
    kv.round()
    ctl.post(Tick())
    await settle()
    assert fx.woken == []

    # flushed: the pages are gone, the next decision wakes b
    clock.t = 2.5
    kv.statuses[A] = status(shrink.bytes, shrink.bytes, shrink.revision)
    kv.round()
    ctl.post(Tick())
    await settle()
    assert fx.woken == [B] and view(ctl, B) == (S.WAKING, False)
    assert next(v for v in ctl.instances() if v.id == B).shown_state == "waking"
    assert ("wake_room_wait_seconds", "b", 2.5, "fit") in fx.observed
    ctl.post(Woken(B, 0.5))
    await settle()
    assert (await held).instance_id == B


async def test_loop__a_wake_that_never_gets_room_is_abandoned_and_replanned(env: Env) -> None:
    ctl, fx, clock, kv = env
    kv.statuses = {A: status(BLOCK, BLOCK), B: status(BLOCK, 0)}
    (grow,) = [x for x in kv.round() if x.instance == A]
    kv.statuses[A] = status(grow.bytes, grow.bytes, grow.revision)  # pages that never free
    kv.round()
    spec = ctl.resolve("b")
    assert spec is not None
    held = asyncio.create_task(ctl.acquire(spec, 120))
    await settle()
    clock.t = ctl.config.scheduler.wake_room_s
    ctl.post(Tick())
    await settle()
    assert fx.woken == []
    assert ("wake_room_wait_seconds", "b", 30.0, "timeout") in fx.observed
    assert view(ctl, B) == (S.PARKED, False)  # its claims given back
    ctl.post(Tick())  # the next decision re-plans: the wake waits again, for a new bound
    await settle()
    assert view(ctl, B) == (S.PARKED, True) and fx.woken == []
    held.cancel()


async def test_loop__an_operators_wake_passes_the_same_gate(env: Env) -> None:
    """The admin API's wake is a plan too: it waits for room, and its answer says what became
    of it (woken once the neighbour shrank; the reason when the bound passed)."""
    ctl, fx, clock, kv = env
    kv.statuses = {A: status(BLOCK, BLOCK), B: status(BLOCK, 0)}
    (grow,) = [x for x in kv.round() if x.instance == A]
    kv.statuses[A] = status(grow.bytes, grow.bytes, grow.revision)
    kv.round()
    answer = asyncio.create_task(ctl.admin(B, "wake"))
    await settle()
    assert fx.woken == [] and view(ctl, B) == (S.PARKED, True) and not answer.done()
    clock.t = ctl.config.scheduler.wake_room_s  # a's pages never free: the bound passes
    ctl.post(Tick())
    await settle()
    assert fx.woken == [] and answer.done()
    assert answer.result().startswith(f"wake abandoned: no room for the wake of {B} after 30.0 s")

    again = asyncio.create_task(ctl.admin(B, "wake"))
    await settle()
    (shrink,) = kv.round()  # b's weights count: a shrinks, and its pages go with the flush
    kv.statuses[A] = status(shrink.bytes, shrink.bytes, shrink.revision)
    kv.round()
    clock.t += 1.0
    ctl.post(Tick())
    await settle()
    assert fx.woken == [B]
    ctl.post(Woken(B, 0.5))
    await settle()
    assert (await asyncio.wait_for(again, 1)) == "woken in 0.500 s"

"""Global scheduler: which server of which model is awake where (docs/scheduling.md "Global", Prism §4).

``decide(view, now)`` is pure. Every few seconds and on events the caller hands it a snapshot;
it answers, in this order:
1. activations: a model with requests and no awake server is woken on the candidate GPU group
   with the lowest KV Pressure Ratio after the wake that fits (and, with the TPOT guard, whose
   decode rounds stay within its models' TPOT SLOs: tpot.py) - parked servers first (~0.4 s),
   a cold start (~65 s) only when ``params.cold_start`` and no parked server can take it (on an
   aligned block of GPUs, or for a TP group the GPUs with the most room: ``_groups``). A TP
   group needs its memory on every GPU it spans, each of which may host TP-1 models. Idle
   servers (idle past their threshold, nothing in flight) are parked to make room, longest idle
   first; busy ones only for a model whose requests waited ``starvation_s`` (then the least
   used of no higher priority, drained first; one busier than the starving model only after
   a wait scaled by their request rates, at most ``starvation_max_s``: kvpr.py
   ``preempt_wait_s``), so a big model cannot starve forever and a quiet one cannot park a
   busy one every few seconds.
   With ``params.max_awake_per_gpu`` (swap-on-demand, the llama-swap baseline) an activation
   first parks the awake servers of other models on its GPUs that exceed the limit (least
   recently active first, busy or not: they drain), and waits while such a server is waking.
2. idle parking for models that ask for it (``park_when="always"``).
3. migrations (migration.py): a model moves to another of its parked servers when the pair's
   highest ratio drops by more than ``tau``, or when it ends a TPOT overflow; ordered steps:
   wake the target, route traffic there when ready, then park the source. None under
   ``max_awake_per_gpu``: swap-on-demand does not move models.
KV is not split here: the KV ledger (orchestrator/kv/) splits each GPU's KV among its resident
servers, live and in the simulator.
Ties are broken by name, so the same snapshot always gives the same decision.
"""

from __future__ import annotations

from orchestrator.policy.placement.cluster import (
    Action,
    Activation,
    Blocked,
    ClusterView,
    IdlePark,
    ModelDemand,
    Park,
    PlacementDecision,
    Route,
    S,
    Start,
    Step,
    Wake,
)
from orchestrator.types import gpu_label
from tests.unit.placement_ref import tpot
from tests.unit.placement_ref.kvpr import GpuTally
from tests.unit.placement_ref.migration import best_migration

_COMING = (S.AWAKE, S.WAKING, S.STARTING)


def decide(view: ClusterView, now: float) -> PlacementDecision:
    led = GpuTally(view)
    actions: list[Action] = []
    blocked: list[Blocked] = []
    touched: set[str] = set()

    need = [
        m for m in view.models if m.busy and not any(led.state[sid] in _COMING for sid in led.of_model.get(m.name, ()))
    ]
    need.sort(key=lambda m: (-m.priority, -m.queued, -m.pressure, m.name))
    for m in need:
        got = _activate(led, view, m, now)
        if isinstance(got, Blocked):
            blocked.append(got)
        else:
            actions.append(got)
            touched.add(m.name)

    for m in view.models:
        if m.park_when != "always":
            continue
        for sid in led.of_model.get(m.name, ()):
            if led.evictable(sid, now):
                led.set_state(sid, S.PARKING)
                actions.append(IdlePark(sid, (Park(sid),), f"idle {led.idle_s(m, now):.0f} s >= {m.idle_park_s:g} s"))

    if view.params.migrate and view.params.max_awake_per_gpu is None:
        for _ in range(view.params.max_migrations):
            mig = best_migration(led, view, now, touched)
            if mig is None:
                break
            actions.append(mig)
            touched.add(mig.model)

    return PlacementDecision(
        actions=tuple(actions), blocked=tuple(blocked), kvpr=tuple(led.ratio(g) for g in range(len(view.gpu_bytes)))
    )


def _groups(led: GpuTally, n_gpus: int, tp: int, taken: set[int]) -> list[tuple[int, ...]]:
    """Cold-start groups of ``tp`` distinct GPUs (TP ranks never share a GPU), none already
    holding a server of the model: the aligned blocks, plus for TP > 1 the set of the ``tp``
    GPUs with the most free memory (then the lowest ratio): on GPUs that also host TP-1 models
    the aligned blocks may each have one full GPU while enough GPUs have room."""
    free = [g for g in range(n_gpus) if g not in taken]
    out = [grp for grp in (tuple(range(i, i + tp)) for i in range(0, n_gpus - tp + 1, tp)) if taken.isdisjoint(grp)]
    if tp > 1 and len(free) >= tp:
        roomy = tuple(sorted(sorted(free, key=lambda g: (-led.free(g), led.ratio(g), g))[:tp]))
        if roomy not in out:
            out.append(roomy)
    return out


def _activate(led: GpuTally, view: ClusterView, m: ModelDemand, now: float) -> Activation | Blocked:
    best: tuple[tuple[int, float, int, float, float, str], tuple[int, ...], str | None, list[str]] | None = None
    starving = m if m.oldest_wait_s >= view.params.starvation_s else None
    for sid in led.of_model.get(m.name, ()):
        if led.state[sid] is not S.PARKED:
            continue
        gpus = led.servers[sid].gpus
        victims = _room(led, view, gpus, m, now, starving, cold=False)
        if victims is None:
            continue
        cost = sum(led.models[led.servers[v].model].pressure + 1.0 for v in victims if not led.evictable(v, now))
        over = tpot.overflow(led, gpus, m, victims) if view.params.tpot_guard else 0.0
        key = (0, over, int(bool(victims)), cost, led.ratio_after(gpus, m, victims, cold=False), sid)
        if best is None or key < best[0]:
            best = (key, gpus, sid, victims)
    if best is None and view.params.cold_start:
        taken = {g for sid in led.of_model.get(m.name, ()) for g in led.servers[sid].gpus}
        groups = _groups(led, len(view.gpu_bytes), m.tp_size, taken)
        groups.sort(key=lambda grp: (led.group_ratio(grp), grp))
        for gpus in groups[: view.params.candidates]:
            victims = _room(led, view, gpus, m, now, None, cold=True)
            if victims is None:
                continue
            over = tpot.overflow(led, gpus, m, victims) if view.params.tpot_guard else 0.0
            # an aligned block first (NVLink pairs, no fragmentation), the roomy set when it must
            unaligned = float(gpus != tuple(range(gpus[0], gpus[0] + len(gpus))) or gpus[0] % len(gpus) != 0)
            key = (1, over, int(bool(victims)), unaligned, led.ratio_after(gpus, m, victims, cold=True), "")
            if best is None or key < best[0]:
                best = (key, gpus, None, victims)
    if best is None:
        return Blocked(m.name, _why_blocked(led, view, m))
    (_, _, _, _, ratio, _), gpus, parked, victims = best
    steps: list[Step] = [Park(v) for v in victims]
    busy = [v for v in victims if not led.evictable(v, now)]
    for v in victims:
        led.set_state(v, S.PARKING)
    if parked is None:
        led.add_server(f"{m.name}@new:{gpu_label(gpus)}", m.name, gpus, S.STARTING)
        steps.append(Start(m.name, gpus))
        how = "cold start (no parked server fits)"
    else:
        led.set_state(parked, S.WAKING)
        steps.append(Wake(parked))
        how = "wake"
    steps.append(Route(m.name, gpus))
    note = f"; parks {', '.join(victims)}" if victims else ""
    if busy:
        note += f" (preempts busy {', '.join(busy)}: requests waited {m.oldest_wait_s:.0f} s)"
    return Activation(
        m.name,
        gpus,
        tuple(steps),
        ratio,
        f"{m.queued} queued, no awake server: {how} on GPU {gpu_label(gpus)} (KVPR after {ratio:.3g}){note}",
    )


def _room(
    led: GpuTally,
    view: ClusterView,
    gpus: tuple[int, ...],
    m: ModelDemand,
    now: float,
    starving: ModelDemand | None,
    cold: bool,
) -> list[str] | None:
    """The servers to park before ``m`` comes up on ``gpus``: those the awake limit forces out
    (``_swap_out``), then idle ones for memory (``make_room``); None if it cannot come up now."""
    limit = view.params.max_awake_per_gpu
    forced = [] if limit is None else _swap_out(led, gpus, m, limit, now)
    if forced is None:
        return None
    for v in forced:  # tentatively parked, so that make_room counts the memory they free
        led.set_state(v, S.PARKED)
    try:
        more = led.make_room(gpus, led.need_bytes(m, cold=cold), now, exclude=frozenset(forced), starving=starving)
    finally:
        for v in forced:
            led.set_state(v, S.AWAKE)
    return None if more is None else forced + more


def _swap_out(led: GpuTally, gpus: tuple[int, ...], m: ModelDemand, limit: int, now: float) -> list[str] | None:
    """Awake servers of other models on ``gpus`` to park so that ``m`` stays within ``limit``
    awake per GPU: least recently active first (never used first, then by name), busy or not;
    one whose model never parks cannot be forced out. None while servers on their way
    (waking, starting) already take the limit: they cannot be parked, and waiting for them
    beats thrashing."""
    out: list[str] = []
    for g in gpus:
        others = [
            sid
            for sid in led.on_gpu[g]
            if led.servers[sid].model != m.name and led.state[sid] in _COMING and sid not in out
        ]
        coming = [sid for sid in others if led.state[sid] is not S.AWAKE]
        awake = sorted(
            (
                sid
                for sid in others
                if led.state[sid] is S.AWAKE and led.models[led.servers[sid].model].park_when != "never"
            ),
            key=lambda sid: (-led.idle_s(led.models[led.servers[sid].model], now), sid),
        )
        excess = len(others) - (limit - 1)
        if excess <= 0:
            continue
        if len(coming) > limit - 1 or excess > len(awake):
            return None
        out += awake[:excess]
    return out


def _why_blocked(led: GpuTally, view: ClusterView, m: ModelDemand) -> str:
    parked = [sid for sid in led.of_model.get(m.name, ()) if led.state[sid] is S.PARKED]
    if not parked:
        return "no parked server to wake (cold starts are off)"
    limit = view.params.max_awake_per_gpu
    if limit is not None:
        return (
            f"at most {limit} awake per GPU: its GPUs are waking others, or their awake "
            "servers may not park, or memory is short"
        )
    need = led.need_bytes(m, cold=False) / (1 << 30)
    p = view.params
    return (
        f"needs {need:.1f} GiB per GPU; no GPU of its parked servers can free that much "
        "(neighbours are busy or idle for less than their park threshold; a busy one of no higher "
        f"priority may be parked for it once its requests have waited {p.starvation_s:g} s, longer for "
        f"one that gets more requests, {p.starvation_max_s:g} s at most)"
    )

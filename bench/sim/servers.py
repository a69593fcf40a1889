"""Servers and GPUs of the simulator: continuous batching in coarse, exact-in-aggregate epochs.

Approximation (documented in docs/bench-sim.md):
- A GPU runs its awake servers' scheduler steps one after another (CUDA time-slicing between
  processes, no MPS): one *round* = one decode step of every server that has running requests,
  so a round lasts the sum of their step times (orchestrator/perf/model.py).
- New requests dispatched to a server are prefilled at the next round boundary, all waiting
  ones of a server in one batch (SGLang runs prefill before decode); each request's first token
  comes when its server's prefill ends (the servers' prefills run back to back).
- Between two events the batch of every server is fixed, so k rounds are computed at once:
  k = rounds until the first request on the GPU finishes; an arrival interrupts the epoch at the
  end of the round in progress. Decode time is affine in the summed context (model.py), so the
  context's growth over k rounds is charged exactly at its midpoint.
- A TP server computes on every GPU of its group at once (its ranks step together), so GPUs
  joined by a TP server share one executor: a round there lasts the TP servers' steps plus the
  longest sum of the single-GPU servers' steps on one of its GPUs (each GPU time-slices its own
  processes; the TP step holds all of them). Prefills on a shared executor run back to back.
- ``sharing="mps"`` (the CUDA MPS daemon; default "timeslice", as above): a round lasts the
  servers' steps overlapped as perf/sharing.py ``mps_round_s`` says (fitted to the pairs measured
  on an H200: bench/results/gpu-mps-h200/); with a TP server, each GPU of the group overlaps the
  TP steps with its own servers' steps and the round lasts the longest GPU's [assumed: the pairs
  measured were one GPU each]. Prefills are not overlapped (run back to back as above: compute-
  bound, nothing measured). Time-slicing calibrations only (an "overlap" one was fitted
  time-sliced: the simulator refuses the pair).
- Under an "overlap" calibration (orchestrator/perf/calibration.py, the H200's) there are no
  shared rounds: each server steps at its own rate, its step lengthened by the measured cost of
  each other server decoding on its GPU, and an arrival interrupts at once (the step in
  progress carries over). Prefills still run back to back before anyone's next decode step.
- A model's ``kv`` says how a server admits requests: "reserve" (bench/sim's experiments) takes
  every request dispatched to it at the next prefill, KV reserved in full (prompt + output
  tokens) at dispatch, so there is no preemption; "sglang" (bench/gpu/des.py, the twin of stock
  SGLang) queues them and admits them by SGLang 0.5.17's rule (sglang_kv.py): KV grows by a
  token per request and step, a pool that runs out retracts requests back to the queue, to be
  prefilled again. An epoch then also ends when a server's pool is full; admission is tried at
  epoch boundaries only (SGLang retries it only after a finish or retraction once it stopped
  for KV; otherwise an arrival interrupts the epoch).
- A calibration with a ``FirstToken`` (the H200's) delays the first token the client sees
  beyond the prefill's end (``first_token_at``): a fixed path outside the GPU, the prefill's
  time-slicing with the other busy servers (``prefill_stretch_s``), a few colocated decode
  steps of its server and a periodic delivery stall, all fitted from real runs, the path
  scaled per request by a log-normal factor drawn from its id (``spread_factor``). Decoding is
  not delayed by it.
"""

from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass, field
from typing import Literal

from bench.sim import sglang_kv
from bench.sim.sglang_kv import Seq
from orchestrator.perf.cost import ServerCost
from orchestrator.perf.model import LatencyModel
from orchestrator.perf.sharing import mps_round_s
from orchestrator.types import GpuSharing, InstanceState

S = InstanceState

# Time constant, in seconds, of the pages a busy server keeps mapped above its limit
# (``SimServer.drain``). SGLang hands free slots out first-in first-out, so a busy server's
# requests and cache sit in most blocks it mapped; the shim unmaps a block once its slots are
# all free, which under load comes block by block. Measured on the H200 (set-up A, full,
# time-sliced, bench/results/gpu-experiment-h200-a8/full kv_timeline, one sample a ~1.1 s): the
# mapped pages above max(limit, held) while a server had requests, integrated over time, over
# the pages that came back meanwhile: 27 s over the run (2-6 s for the small llama-1b-b,
# 46-73 s for llama-8b and llama-1b-a at 16-32 req/s; elastic 19 s; under MPS, where requests
# finish sooner, 8 s). Idle, a server's pages above its limit go at once.
PINNED_DRAIN_TAU_S = 27.0


@dataclass
class SimModel:
    name: str
    shape_name: str
    tp: int
    cost: ServerCost
    lat: LatencyModel
    ttft_slo: float = math.inf
    tpot_slo: float = math.inf
    kv: Literal["reserve", "sglang"] = "reserve"  # how its servers admit requests (module doc)
    # --cuda-graph-max-bs its servers start with (a deployment's); a larger batch decodes
    # eagerly (model.py colocated_decode_s). None: SGLang's default, every batch on a graph.
    graph_max_bs: int | None = None
    # the KV ledger's floor for its servers (a deployment's ``kv_floor_gb``, 0: one block, as
    # live); None: the cost model's wake floor (bench/sim's own experiments)
    ledger_floor_bytes: int | None = None
    _base: dict[int, float] = field(default_factory=dict)
    _coeff: float = -1.0

    def decode_s(self, batch: int, ctx_sum: float, others: int = 0) -> float:
        """One decode step with ``others`` other servers decoding on its GPU (their cost is the
        calibration's: none when time-sliced, the simulator's round charges it): model.py's
        decode_time is affine in the summed context."""
        base = self._base.get(batch)
        if base is None:
            base = self._base[batch] = self.lat.decode_time([0] * batch)
        if self._coeff < 0:
            self._coeff = (self.lat.decode_time([1_000_000]) - self.lat.decode_time([0])) / 1e6
        eager = self.graph_max_bs is not None and batch > self.graph_max_bs
        return self.lat.colocated_decode_s(base + self._coeff * ctx_sum, others, eager)


class SimReq:
    __slots__ = ("id", "model", "arrival", "prompt", "output", "first", "finish", "shed", "prefill_s", "server", "done")

    def __init__(self, rid: int, model: str, arrival: float, prompt: int, output: int) -> None:
        self.id = rid
        self.model = model
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.first = math.nan
        self.finish = math.nan
        self.shed = False
        self.prefill_s = 0.0
        self.server: SimServer | None = None
        self.done = 0  # output tokens generated before its last retraction (kv "sglang")

    @property
    def kv_tokens(self) -> int:
        return self.prompt + self.output


class SimServer:
    """One simulated engine instance. Satisfies orchestrator/control/plans.PlanServer, so the
    live plan executor runs over it: leaving AWAKE ends a drain, leaving PARKED a claim (as the
    live ``Instance.to`` does)."""

    def __init__(self, sid: str, model: SimModel, gpus: tuple[int, ...]) -> None:
        self.id = sid
        self.model = model
        self.gpus = gpus
        self._state = S.PARKED
        self.draining: str | None = None  # a plan's victim: awake, taking no new request
        self.claimed = False  # parked, reserved as a plan's wake target
        self.error: str | None = None  # simulated parks and wakes never fail
        self.kv_limit = 0  # tokens
        self.kv_used = 0
        # SGLang's prefix cache: finished requests' tokens kept until the room is needed
        # (allocated, so in the shim's count; evictable, so not in SGLang's num_used_tokens)
        self.kv_cached = 0
        # tokens' worth of KV pages the shim holds mapped (``mapped_tokens``): what requests
        # and cache held at most since the server last ran no request, drained since
        # (``drain``), and when it last drained
        self.kv_pinned = 0
        self.drained_at = 0.0
        self.waiting: list[SimReq] = []  # dispatched, not yet prefilled
        self.running: list[tuple[int, int, SimReq]] = []  # heap of (finish step, id, request)
        self.steps = 0  # decode rounds this server has run
        self.s0 = 0  # sum over running of (prompt + 1 - step it joined at)
        self.ready_at = 0.0
        self.queue: list[SimReq] = []  # baselines' FCFS queue of this server
        # "overlap" calibrations only (GpuExec): this epoch's step, steps to its first finisher,
        # and the time already spent on its step in progress when the epoch began
        self.step_s = 0.0
        self.k = 0
        self.phase = 0.0
        # kv "sglang" only (sglang_kv.py): the new-token ratio, whether the last prefill pass
        # stopped for want of KV (SGLang's batch_is_full), and requests retracted so far
        self.ratio = sglang_kv.INIT_RATIO
        self.full = False
        self.retractions = 0

    @property
    def state(self) -> InstanceState:
        return self._state

    @state.setter
    def state(self, new: InstanceState) -> None:
        self._state = new
        if new is not S.AWAKE:
            self.draining = None
        if new is not S.PARKED:
            self.claimed = False

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def in_flight(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def sglang(self) -> bool:
        return self.model.kv == "sglang"

    def kv_free(self) -> int:
        """Tokens free for one more request: under "reserve" what no request reserved; under
        "sglang" what neither the running requests hold nor the queued ones would take in full
        (the live admission gate's room: capacity - used - waiting)."""
        if self.sglang:
            return self.kv_limit - self.kv_used - sum(r.kv_tokens for r in self.waiting)
        return self.kv_limit - self.kv_used

    def keep_cached(self, tokens: int = 0) -> None:
        """Add ``tokens`` of a finished request to the prefix cache, then evict it down to what
        the limit leaves beside the tokens in use (SGLang evicts as it allocates; the shim asks
        for its excess with it)."""
        self.kv_cached = max(0, min(self.kv_cached + tokens, self.kv_limit - self.kv_used))
        held = self.kv_used + self.kv_cached
        self.kv_pinned = max(self.kv_pinned, held) if self.in_flight else held

    def drain(self, now: float) -> None:
        """Give back, up to ``now``, some of the pages a busy server holds above its limit and
        what its requests and cache hold: the excess decays with ``PINNED_DRAIN_TAU_S`` (a
        partial drain, as the H200 showed; the shim unmaps a block once all its slots are
        free). Called by the KV ledger's split (bench/sim/kv.py), each simulated second or
        sooner, as the shim's sweeps run between the ledger's polls."""
        dt, self.drained_at = now - self.drained_at, now
        floor = max(self.kv_limit, self.kv_used + self.kv_cached)
        if self.kv_pinned > floor and dt > 0:
            self.kv_pinned = floor + int((self.kv_pinned - floor) * math.exp(-dt / PINNED_DRAIN_TAU_S))

    def mapped_tokens(self) -> int:
        """Tokens' worth of pages the shim holds mapped: at least the limit once reached (the
        cache fills it), and, while requests run, the most held since the server last idled,
        drained since (``drain``)."""
        return max(self.kv_limit, self.kv_pinned)

    def ctx_sum(self) -> int:
        return self.s0 + len(self.running) * self.steps

    # ---- kv "sglang" (sglang_kv.py) -----------------------------------------------------------

    def _seq(self, fin: int, r: SimReq) -> Seq:
        """A running request as SGLang counts it: it finishes at step ``fin``, so it has
        ``fin - steps`` tokens left to decode."""
        return Seq(r.prompt, r.output, r.output - (fin - self.steps))

    def sync_kv(self) -> None:
        """Under "sglang": the tokens in use are what the running requests hold now."""
        if self.sglang:
            self.kv_used = self.ctx_sum()
            self.keep_cached()

    def steps_to_event(self) -> float:
        """Decode steps until the first running request finishes or (under "sglang") the pool
        is too full for the next step."""
        first = self.running[0][0] - self.steps
        if not self.sglang:
            return first
        return min(first, sglang_kv.decode_steps_left(self.kv_limit - self.ctx_sum(), len(self.running)))

    def retract(self) -> None:
        """Before a decode step: retract requests while the pool cannot take a token for each
        (back to the end of the queue, keeping the tokens generated), and set the ratio."""
        entries = sorted(self.running, key=lambda e: e[1])
        seqs = [self._seq(fin, r) for fin, _, r in entries]
        out = sglang_kv.retract(self.kv_limit - self.ctx_sum(), seqs)
        if not out:
            return
        for i in out:
            fin, _, r = entries[i]
            r.done = seqs[i].generated
            self.s0 -= r.prompt + r.output - fin
            self.waiting.append(r)
        gone = set(out)
        self.running = [e for i, e in enumerate(entries) if i not in gone]
        heapq.heapify(self.running)
        self.ratio = sglang_kv.ratio_after_retract([s for i, s in enumerate(seqs) if i not in gone])
        self.retractions += len(out)
        self.full = False
        self.sync_kv()

    def take_admitted(self) -> list[SimReq]:
        """The queued requests one prefill pass takes (all of them under "reserve")."""
        if not self.sglang:
            batch, self.waiting = self.waiting, []
            return batch
        if self.full:
            return []
        running = [self._seq(fin, r) for fin, _, r in self.running]
        queued = [Seq(r.prompt, r.output, r.done) for r in self.waiting]
        n, full = sglang_kv.admit(self.kv_limit - self.ctx_sum(), running, queued, self.ratio)
        batch, self.waiting = self.waiting[:n], self.waiting[n:]
        self.full = full
        return batch

    def stepped(self, steps: int, finished: bool) -> None:
        """After ``steps`` decode steps (``finished``: some request finished)."""
        if self.sglang:
            self.ratio = sglang_kv.decayed(self.ratio, steps)
            self.full = self.full and not finished
            self.sync_kv()


def first_token_at(
    m: SimModel, ready: float, running: int, ctx_sum: float, others: int, prefill_s: float = 0.0, rid: int = 0
) -> float:
    """When the client sees the first token of request ``rid`` whose prefill (``prefill_s``
    long) ends at ``ready``, on a server with ``running`` requests (``ctx_sum`` tokens) and
    ``others`` other busy servers on its GPU (``first_token_path_s``, then ``seen_at``).
    Without the calibration's ``FirstToken``: ``ready``."""
    return seen_at(m, ready, first_token_path_s(m, running, ctx_sum, others, prefill_s), rid)


def first_token_path_s(m: SimModel, running: int, ctx_sum: float, others: int, prefill_s: float = 0.0) -> float:
    """The calibration's ``FirstToken`` (orchestrator/perf/calibration.py) path beyond a
    prefill's end, the same for every request of the batch: its fixed path, the prefill's share
    of the time sliced with the ``others`` busy servers, and ``steps`` of the server's colocated
    decode step. 0 without one."""
    ft = m.lat.calibration.first_token
    if ft is None:
        return 0.0
    return (
        ft.fixed_s + prefill_stretch_s(m, others, prefill_s) + ft.steps * m.decode_s(max(1, running), ctx_sum, others)
    )


def seen_at(m: SimModel, ready: float, path_s: float, rid: int) -> float:
    """When the client sees request ``rid``'s first token: ``path_s`` (``first_token_path_s``)
    times the request's spread factor after ``ready``, then pushed to the end of a delivery
    stall if it falls inside one (windows of ``stall_s`` starting at multiples of ``period_s``
    of simulated time). Without ``FirstToken``: ``ready``."""
    ft = m.lat.calibration.first_token
    if ft is None:
        return ready
    t = ready + path_s * spread_factor(ft.spread, rid)
    into = t % ft.period_s
    return t + (ft.stall_s - into if into < ft.stall_s else 0.0)


_NORMAL = statistics.NormalDist()


def spread_factor(sigma: float, rid: int) -> float:
    """Request ``rid``'s log-normal factor of median 1 and ``sigma`` (``FirstToken.spread``),
    from its id alone (a multiplicative hash to a uniform quantile): a run is the same every
    time, and a request draws the same in every system. 1.0 when ``sigma`` is 0."""
    if sigma <= 0.0:
        return 1.0
    u = ((rid * 2654435761) % 2**32 + 0.5) / 2**32
    return math.exp(sigma * _NORMAL.inv_cdf(u))


def prefill_stretch_s(m: SimModel, others: int, prefill_s: float) -> float:
    """How much longer than ``prefill_s`` a prefill of ``m`` takes with ``others`` other busy
    servers on its GPU, under a calibration whose ``FirstToken`` has a ``prefill_share`` (the
    prefill's eager kernels time-slice with theirs). It delays the first token only: the GPU's
    timeline is not charged for it (the others' work meanwhile is in their own steps), nor is
    the server's own (holding its decoding and next prefill as well made the 7-8B servers
    collapse at full 30-38 req/s where the real ones did not: docs/benchmarks.md)."""
    ft = m.lat.calibration.first_token
    return 0.0 if ft is None else ft.prefill_share * max(0, others) * prefill_s


class GpuExec:
    """The scheduler rounds of one GPU, or of GPUs joined by a TP server. ``settle`` applies
    progress, ``plan`` starts the next epoch."""

    def __init__(self, gid: int, sharing: GpuSharing = "timeslice") -> None:
        self.id = gid  # the lowest GPU it runs
        self.sharing = sharing  # how its servers' decode steps share the GPU (module doc)
        self.servers: list[SimServer] = []  # servers whose GPUs are all in this executor
        self.version = 0
        self.pf_end = 0.0
        self.round_s = 0.0
        self.k = 0
        self.active: list[SimServer] = []
        self.planned = False

    def settle(self, now: float) -> tuple[float, list[tuple[SimReq, float]]]:
        """Apply the rounds done by ``now`` (finishing the round in progress); returns when the
        next epoch can start and the requests that finished, with their times."""
        if not self.planned:
            return now, []
        self.planned = False
        if now < self.pf_end:
            return self.pf_end, []  # a prefill in progress is not interrupted
        if self.overlap:
            return now, self._settle_overlap(now)
        r = min(self.k, math.ceil((now - self.pf_end) / self.round_s - 1e-9)) if self.round_s > 0 else self.k
        done: list[tuple[SimReq, float]] = []
        for s in self.active:
            before = s.steps
            s.steps += r
            n = len(done)
            while s.running and s.running[0][0] <= s.steps:
                fin, _, req = heapq.heappop(s.running)
                s.s0 -= req.prompt + req.output - fin
                done.append((req, self.pf_end + (fin - before) * self.round_s))
            s.stepped(r, len(done) > n)
        return self.pf_end + r * self.round_s, done

    def plan(self, t: float) -> float | None:
        """Start an epoch at ``t``; returns when it ends (None: nothing to do)."""
        cum = 0.0
        busy = sum(1 for s in self.servers if s.running or s.waiting)
        for s in self.servers:
            if s.sglang and s.state in (S.AWAKE, S.PARKING):
                s.retract()
                if not s.running and not s.waiting:
                    s.ratio = sglang_kv.INIT_RATIO  # the scheduler idles
            if s.waiting and s.state in (S.AWAKE, S.PARKING):
                batch = s.take_admitted()
                if not batch:
                    continue
                pf = s.model.lat.prefill_time([(r.prompt + r.done, 0) for r in batch])
                cum += pf
                for r in batch:  # a retracted request resumes with the tokens it had
                    heapq.heappush(s.running, (s.steps + r.output - r.done - 1, r.id, r))
                    s.s0 += r.prompt + r.done + 1 - s.steps
                s.sync_kv()
                path = first_token_path_s(s.model, len(s.running), s.ctx_sum(), busy - 1, pf)
                for r in batch:
                    if not r.done:
                        r.first = seen_at(s.model, t + cum, path, r.id)
        self.active = [s for s in self.servers if s.running]
        if not self.active:
            return None
        self.pf_end = t + cum
        if self.overlap:
            return self._plan_overlap()
        self.k = int(min(s.steps_to_event() for s in self.active))
        if self.sharing == "mps":
            self.round_s = self._mps_round_s()
        else:
            tp = 0.0
            lanes: dict[int, float] = {}  # single-GPU servers' steps, per GPU
            for s in self.active:
                step = self._epoch_step_s(s)
                if len(s.gpus) > 1:
                    tp += step
                else:
                    lanes[s.gpus[0]] = lanes.get(s.gpus[0], 0.0) + step
            self.round_s = tp + max(lanes.values(), default=0.0)
        self.planned = True
        self.version += 1
        return self.pf_end + self.k * self.round_s

    def _epoch_step_s(self, s: SimServer) -> float:
        """``s``'s decode step over this epoch's ``k`` rounds: its context's growth charged at
        the midpoint."""
        return s.model.decode_s(len(s.running), s.ctx_sum() + len(s.running) * (self.k - 1) / 2)

    def _mps_round_s(self) -> float:
        """A round under MPS: on each GPU, the TP servers' steps and that GPU's own servers'
        steps overlapped (perf/sharing.py); the round lasts the longest GPU's."""
        tp: list[tuple[float, float]] = []
        lanes: dict[int, list[tuple[float, float]]] = {}  # single-GPU servers' (step, fixed), per GPU
        for s in self.active:
            step = self._epoch_step_s(s)
            lane = tp if len(s.gpus) > 1 else lanes.setdefault(s.gpus[0], [])
            lane.append((step, s.model.lat.decode_fixed_s()))
        return max((mps_round_s(tp + own) for own in lanes.values()), default=mps_round_s(tp))

    @property
    def overlap(self) -> bool:
        """Whether this GPU's servers step at their own rates (an "overlap" calibration)."""
        return bool(self.servers) and self.servers[0].model.lat.calibration.colocation == "overlap"

    def _plan_overlap(self) -> float:
        """Each active server steps at its own colocated rate (its step plus the measured cost of
        the others decoding beside it); the epoch ends at the first finisher of any server."""
        others = len(self.active) - 1
        end = math.inf
        for s in self.active:
            s.k = int(s.steps_to_event())
            mid = s.ctx_sum() + len(s.running) * (s.k - 1) / 2
            s.step_s = s.model.decode_s(len(s.running), mid, others)
            s.phase = min(s.phase, s.step_s)
            end = min(end, self.pf_end + max(0.0, s.k * s.step_s - s.phase))
        self.planned = True
        self.version += 1
        return end

    def _settle_overlap(self, now: float) -> list[tuple[SimReq, float]]:
        """The steps each active server completed by ``now``; the step in progress carries over
        as its phase (an arrival does not wait for the round's end: servers have none)."""
        done: list[tuple[SimReq, float]] = []
        for s in self.servers:
            if s not in self.active:
                s.phase = 0.0
                continue
            elapsed = now - self.pf_end + s.phase
            r = min(s.k, math.floor(elapsed / s.step_s + 1e-6)) if s.step_s > 0 else s.k
            before = s.steps
            s.steps += r
            n = len(done)
            while s.running and s.running[0][0] <= s.steps:
                fin, _, req = heapq.heappop(s.running)
                s.s0 -= req.prompt + req.output - fin
                done.append((req, max(self.pf_end, self.pf_end + (fin - before) * s.step_s - s.phase)))
            s.stepped(r, len(done) > n)
            s.phase = min(s.step_s, max(0.0, elapsed - r * s.step_s)) if s.running else 0.0
        return done

    def prefill_backlog(self, now: float) -> float:
        """Seconds of prefill ahead of a new request on this GPU (in progress + dispatched)."""
        left = max(0.0, self.pf_end - now) if self.planned else 0.0
        return left + sum(r.prefill_s for s in self.servers for r in s.waiting)

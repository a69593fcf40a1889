"""The KV ledger with TP groups: one limit per group, the same on every GPU it spans (the least
any of them can give), never over any GPU's budget while the split changes under load."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from cumem_shim.types import Status
from orchestrator.config import parse_config
from orchestrator.deployment import derive
from orchestrator.engines.base import LaunchRequest, ShimLaunch
from orchestrator.engines.simulated import SimEngine
from orchestrator.kv.ledger import KVInstance, Ledger, Observation, SetLimit, non_kv_bytes
from orchestrator.kv.wiring import kv_instances
from orchestrator.types import InstanceState, InstanceView, LoadSample

GIB = 1 << 30
BLOCK = 128 << 20
TOKEN = 64 << 10  # a TP 2 shard of an 8B's token
CAP_TOKENS = 1_000_000
AWAKE, PARKED = 20 * GIB, 2 * GIB


def status(mapped: int, limit: int, used: int = 0, revision: int = 0) -> Status:
    return Status(mapped, used, limit, revision, CAP_TOKENS, limit // TOKEN, BLOCK, 1024, mapped > limit + BLOCK)


def load(used: int, waiting_tokens: int = 0) -> LoadSample:
    busy = used > 0 or waiting_tokens > 0
    return LoadSample(
        "x", 0.0, 8 if busy else 0, 2 if waiting_tokens else 0, waiting_tokens, used, CAP_TOKENS, None, 0.0, 0.0
    )


def shimmed(sample: LoadSample, st: Status) -> LoadSample:
    """``sample`` as a shimmed SGLang reports it when its requests hold ``sample.used_tokens``:
    max_total - available - evictable (kv/demand.py)."""
    evictable = max(0, st.used_tokens - sample.used_tokens)
    used = CAP_TOKENS - max(0, st.limit_tokens - st.used_tokens) - evictable
    return replace(sample, used_tokens=used)


def group(iid: str, gpus: tuple[int, ...], **kw: object) -> list[KVInstance]:
    return [KVInstance(iid, g, TOKEN, AWAKE, PARKED, **kw) for g in gpus]  # type: ignore[arg-type]


def test_a_group_gets_the_least_its_gpus_give_and_the_rest_goes_to_neighbours() -> None:
    led = Ledger({0: 80 * GIB, 1: 80 * GIB})
    insts = group("tp", (0, 1)) + group("busy", (0,)) + group("quiet", (1,))
    seen = {
        "tp": Observation(shimmed(load(160_000), st_tp := status(BLOCK, GIB, used=160_000)), st_tp),  # ~10 GiB
        "busy": Observation(shimmed(load(480_000), st_b := status(BLOCK, GIB, used=480_000)), st_b),  # ~29 GiB
        "quiet": Observation(shimmed(load(0), st_q := status(BLOCK, GIB)), st_q),
    }
    acts = led.plan(insts, seen, 0.0)
    limits = {a.instance: a.bytes for a in acts if isinstance(a, SetLimit)}
    assert len([a for a in acts if isinstance(a, SetLimit)]) == len(limits)  # one per instance
    budget = 80 * GIB - 2 * AWAKE - led.margin  # two servers' weights and runtime on each GPU
    assert limits["tp"] + limits["busy"] <= budget
    # GPU 1 alone would give the idle-ish group more (its neighbour is idle), but the group
    # holds to GPU 0's share; quiet gets the rest of GPU 1
    assert limits["tp"] < budget / 2 < limits["quiet"]
    assert limits["tp"] + limits["quiet"] > budget - 2 * BLOCK


def test_a_parked_group_gets_limit_zero_once() -> None:
    led = Ledger({0: 80 * GIB, 1: 80 * GIB})
    insts = group("tp", (0, 1), resident=False)
    acts = led.plan(insts, {"tp": Observation(None, status(4 * GIB, 4 * GIB))}, 0.0)
    assert acts == [SetLimit("tp", 0, 1)]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([2, 4]),
)
def test_no_gpu_over_budget_and_one_limit_per_group_as_load_moves(rounds: list[tuple[int, ...]], tp: int) -> None:
    """Four GPUs: a TP group over the first ``tp``, a TP 2 group over GPUs 2-3 and a small model
    on each GPU; loads (0-3: idle to surging) change every round. Each round the shims take the
    limits sent, and pages follow use up to the limit (a shrink below use drains later)."""
    gpus = (0, 1, 2, 3)
    led = Ledger({g: 80 * GIB for g in gpus})
    insts = group("big", tuple(range(tp))) + group("pair", (2, 3))
    insts += [x for g in gpus for x in group(f"small{g}", (g,))]
    ids = sorted({i.id for i in insts})
    limit = {iid: GIB for iid in ids}
    mapped = {iid: BLOCK for iid in ids}
    revision = {iid: 0 for iid in ids}
    for step, levels in enumerate(rounds):
        use = {iid: levels[k % 4] * 150_000 for k, iid in enumerate(ids)}
        seen = {
            iid: Observation(
                load(use[iid], waiting_tokens=use[iid] // 2),
                status(mapped[iid], limit[iid], min(use[iid], limit[iid] // TOKEN), revision[iid]),
            )
            for iid in ids
        }
        acts = [a for a in led.plan(insts, seen, float(step)) if isinstance(a, SetLimit)]
        assert len({a.instance for a in acts}) == len(acts)  # one limit per group: all ranks equal
        for a in acts:
            led.accepted(a.instance, a.bytes, a.revision)
            limit[a.instance], revision[a.instance] = a.bytes, a.revision
        non_kv = non_kv_bytes(insts)
        for g in gpus:
            here = {i.id for i in insts if i.gpu == g}
            held = sum(max(mapped[i], limit[i]) for i in here)  # what the GPU may be asked for
            assert held <= led.budget(g, non_kv) + BLOCK * len(here), (g, held)
        for iid in ids:  # pages follow use within the new limit (a drain keeps what is used)
            mapped[iid] = max(BLOCK, min(use[iid] * TOKEN, max(limit[iid], mapped[iid] if use[iid] else 0)))


def test_two_tp_groups_on_the_same_gpus_the_surging_one_grows_on_both() -> None:
    """Two TP 2 servers of an 8B on GPUs 0-1, each with a virtual pool of the GPU's whole KV
    budget (bench/gpu/tp_surge.py's placements), the capacity their sim servers report: B
    surges, A is nearly idle. In one plan B's limit (the same on both GPUs) grows past half the
    budget, A's shrinks, and neither GPU is asked for more than its budget."""
    cfg = parse_config(
        {
            "mode": "elastic",
            "host": {"gpus": 2, "gpu_memory_gb": 48},
            "models": [
                {
                    "name": n,
                    "model_path": "meta-llama/Llama-3.1-8B-Instruct",
                    "load_format": "dummy",
                    "tp_size": 2,
                    "placements": [{"gpus": [0, 1], "kv_pool_gb": 45, "kv_floor_gb": 1}],
                }
                for n in ("a", "b")
            ],
        },
        gpu_count=2,
    )
    dep = derive(cfg)
    views = [InstanceView(i.id, i.model.name, i.gpus, InstanceState.AWAKE, None) for i in cfg.instances]
    insts = kv_instances(views, dep)
    a, b = (i.id for i in cfg.instances)
    led = Ledger({0: 48 * GIB, 1: 48 * GIB})
    budget = led.budget(0, non_kv_bytes(insts))
    assert budget == led.budget(1, non_kv_bytes(insts))
    shard = dep.instances[b].cost.kv_bytes_per_token
    half = budget // 2 // BLOCK * BLOCK
    for iid in (a, b):
        led.accepted(iid, half, 1)

    def sim_status(iid: str, mapped: int, used: int) -> Status:
        facts = dep.instances[iid]
        shim = ShimLaunch(f"/tmp/chimera-tp-{iid}.sock", GIB, facts.ceiling_bytes, tp_size=2)
        spec = SimEngine().launch_spec(LaunchRequest(facts.spec, cfg.host, 30001, 40001, shim=shim))
        cap = int(spec.argv[spec.argv.index("--max-total-tokens") + 1])  # what its shim reports
        return Status(mapped, used, half, 1, cap, half // shard, BLOCK, BLOCK // shard, False)

    busy_used = half // shard  # B's pool is full and a queue twice that waits
    seen = {
        a: Observation(load(2_000), sim_status(a, BLOCK, 2_000)),
        b: Observation(load(busy_used, waiting_tokens=2 * busy_used), sim_status(b, half, busy_used)),
    }
    limits = {x.instance: x.bytes for x in led.plan(insts, seen, 0.0) if isinstance(x, SetLimit)}
    assert limits[b] > half + budget // 4 and limits[a] < half  # B takes most of what A gives
    mapped = {a: BLOCK, b: half}
    for gpu in (0, 1):  # one limit per group, applied on each GPU it spans
        here = [i.id for i in insts if i.gpu == gpu]
        assert sorted(here) == sorted((a, b))
        held = sum(max(mapped[i], limits[i]) for i in here)
        assert held <= budget, (gpu, held, budget)

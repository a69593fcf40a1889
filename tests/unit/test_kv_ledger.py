"""orchestrator.kv: demand from a load sample, and the per-GPU ledger's actions."""

from __future__ import annotations

from dataclasses import replace

from cumem_shim.types import Status
from orchestrator.kv.demand import active_tokens, need_bytes
from orchestrator.kv.ledger import (
    MARGIN_BYTES,
    FlushCache,
    KVInstance,
    Ledger,
    Observation,
    SetLimit,
    non_kv_bytes,
)
from orchestrator.types import LoadSample

GIB = 1 << 30
BLOCK = 128 << 20
TOKEN = 128 << 10  # Llama-3.1-8B: 128 KiB of KV a token
CAP_TOKENS = 500_000
# What an instance says it holds besides KV (the deployment derives these from the cost model;
# tests/unit/test_deployment.py checks that): the ledger only sums them.
AWAKE = 20 * GIB  # weights, context, CUDA graphs, activations
PARKED = 2 * GIB  # its CUDA context


def status(mapped: int, limit: int, used: int = 0, revision: int = 0) -> Status:
    return Status(mapped, used, limit, revision, CAP_TOKENS, limit // TOKEN, BLOCK, 1024, mapped > limit + BLOCK)


def load(running: int, waiting: int, waiting_tokens: int, used: int, rate: float) -> LoadSample:
    return LoadSample("x", 0.0, running, waiting, waiting_tokens, used, CAP_TOKENS, None, 0.0, rate)


def idle() -> LoadSample:
    return load(0, 0, 0, 0, 0.0)


def busy(used: int, waiting: int = 0, rate: float = 0.0) -> LoadSample:
    return load(8, 2, waiting, used, rate)


def shimmed(sample: LoadSample, st: Status) -> LoadSample:
    """``sample`` as a shimmed SGLang reports it when its requests hold ``sample.used_tokens``:
    max_total - available - evictable (kv/demand.py)."""
    evictable = max(0, st.used_tokens - sample.used_tokens)
    used = CAP_TOKENS - max(0, st.limit_tokens - st.used_tokens) - evictable
    return replace(sample, used_tokens=used)


def observed(sample: LoadSample, st: Status, held_tokens: int = 0) -> Observation:
    return Observation(shimmed(sample, st), st, held_tokens)


def inst(iid: str, **kw: object) -> KVInstance:
    return KVInstance(iid, 0, TOKEN, AWAKE, PARKED, **kw)  # type: ignore[arg-type]


def test_need_prefers_the_shims_count_of_used_tokens() -> None:
    got = load(1, 1, 1000, 90_000, 100.0)  # SGLang's count includes held-back slots
    assert need_bytes(got, TOKEN, shim_used_tokens=2000, horizon_s=5) == (2000 + 1000 + 500) * TOKEN
    assert need_bytes(got, TOKEN) == (90_000 + 1000 + 500) * TOKEN


def test_non_kv_counts_what_awake_parking_and_parked_instances_hold() -> None:
    got = non_kv_bytes([inst("a"), inst("b", resident=False), inst("c", resident=False, holds_weights=True)])
    assert got == {0: AWAKE + PARKED + AWAKE}


def test_first_plan_splits_the_budget_by_demand() -> None:
    led = Ledger({0: 80 * GIB})
    a, b = inst("a"), inst("b", floor_bytes=2 * GIB)
    seen = {
        "a": observed(busy(200_000), status(20 * GIB, 20 * GIB, used=200_000)),
        "b": observed(idle(), status(BLOCK, 4 * GIB)),
    }
    acts = led.plan([a, b], seen, now=0.0)
    limits = {x.instance: x.bytes for x in acts if isinstance(x, SetLimit)}
    budget = 80 * GIB - 2 * AWAKE - MARGIN_BYTES
    assert limits["a"] >= 200_000 * TOKEN and limits["b"] >= 2 * GIB
    assert sum(limits.values()) <= budget
    assert all(x.revision == 1 for x in acts if isinstance(x, SetLimit))
    for x in acts:
        if isinstance(x, SetLimit):
            led.accepted(x.instance, x.bytes, x.revision)
    # nothing moved: nothing is sent again (hysteresis)
    seen["a"] = observed(busy(200_100), status(20 * GIB, limits["a"], used=200_100))
    seen["b"] = observed(idle(), status(BLOCK, limits["b"]))
    assert led.plan([a, b], seen, now=1.0) == []


def test_grow_waits_for_the_donor_to_drain() -> None:
    led = Ledger({0: 80 * GIB})
    a, b = inst("a"), inst("b")
    for iid, lim in (("a", 38 * GIB), ("b", 2 * GIB)):
        led.accepted(iid, lim, 1)
    # b's burst: a still holds 38 GiB of pages in use
    seen = {
        "a": observed(busy(300_000), status(38 * GIB, 38 * GIB, used=300_000)),
        "b": observed(busy(0, waiting=250_000), status(2 * GIB, 2 * GIB)),
    }
    acts = {x.instance: x for x in led.plan([a, b], seen, now=0.0)}
    sa, sb = acts["a"], acts.get("b")
    assert isinstance(sa, SetLimit) and sa.bytes < 38 * GIB and sa.revision == 2
    assert sb is None or (isinstance(sb, SetLimit) and sb.bytes <= 2 * GIB + 3 * GIB)
    assert led.deferred == {"b"}  # the runner plans again soon (kv/runner.py REGROW_S)
    # what it reports: b needs its queue's KV and the split gives it more than its limit now
    assert led.needs["b"] >= 250_000 * TOKEN and led.targets["b"] > max(2 * GIB, sb.bytes if sb else 0)
    assert led.targets["a"] == sa.bytes and led.needs["a"] >= 300_000 * TOKEN
    led.accepted("a", sa.bytes, sa.revision)
    # a drained to its new limit: now b grows
    seen["a"] = observed(busy(100_000), status(sa.bytes, sa.bytes, used=100_000))
    acts = {x.instance: x for x in led.plan([a, b], seen, now=1.0)}
    budget = 80 * GIB - 2 * AWAKE - MARGIN_BYTES
    grow = acts["b"]
    assert isinstance(grow, SetLimit) and grow.bytes >= budget - sa.bytes - BLOCK  # all a freed
    assert grow.bytes > 10 * GIB
    # a's need fell too (its requests hold 100_000 tokens now): once each holds what it got,
    # nothing is held back any more
    limits = {"a": sa.bytes}
    for now in (2.0, 3.0):
        for x in acts.values():
            if isinstance(x, SetLimit):
                led.accepted(x.instance, x.bytes, x.revision)
                limits[x.instance] = x.bytes
        seen["a"] = observed(busy(100_000), status(limits["a"], limits["a"], used=100_000))
        seen["b"] = observed(busy(0, waiting=250_000), status(limits["b"], limits["b"]))
        acts = {x.instance: x for x in led.plan([a, b], seen, now=now)}
    assert led.deferred == frozenset()


def test_parked_instance_gets_zero_once_and_idle_hoarder_is_flushed() -> None:
    led = Ledger({0: 80 * GIB})
    parked = inst("p", resident=False)
    seen = {"p": Observation(idle(), status(10 * GIB, 10 * GIB))}
    acts = led.plan([parked], seen, now=0.0)
    assert acts == [SetLimit("p", 0, 1)]
    led.accepted("p", 0, 1)
    assert led.plan([parked], seen, now=1.0) == []
    # an idle server whose prefix cache keeps 10 GiB mapped above its 2 GiB limit
    led2 = Ledger({0: 80 * GIB})
    led2.accepted("h", 2 * GIB, 1)
    seen = {"h": Observation(idle(), status(10 * GIB, 2 * GIB, used=70_000, revision=1))}
    acts = led2.plan([inst("h")], seen, now=0.0)
    assert FlushCache("h") in acts
    assert FlushCache("h") not in led2.plan([inst("h")], seen, now=5.0)  # rate-limited
    assert FlushCache("h") in led2.plan([inst("h")], seen, now=11.0)


def test_revisions_continue_above_the_shims() -> None:
    led = Ledger({0: 80 * GIB})
    seen = {"a": Observation(idle(), status(BLOCK, GIB, revision=41))}  # orchestrator restarted
    acts = led.plan([inst("a")], seen, now=0.0)
    assert [x.revision for x in acts if isinstance(x, SetLimit)] == [42]


def test_unseen_instances_keep_their_memory() -> None:
    led = Ledger({0: 80 * GIB})
    led.accepted("gone", 30 * GIB, 1)
    seen = {"a": Observation(busy(400_000), status(BLOCK, BLOCK))}
    acts = led.plan([inst("a"), inst("gone")], seen, now=0.0)
    (sa,) = [x for x in acts if isinstance(x, SetLimit)]
    budget = 80 * GIB - 2 * AWAKE - MARGIN_BYTES
    assert sa.bytes <= budget - 30 * GIB


def test_a_parking_neighbour_still_holds_its_weights_and_pages() -> None:
    """While A parks, its weights and mapped KV are still on the GPU: B may not be granted them
    in the same step (it would map into memory A has not given back, and fail)."""
    led = Ledger({0: 80 * GIB})
    a = inst("a", resident=False, holds_weights=True)  # parking
    b = inst("b")
    seen = {
        "a": Observation(idle(), status(30 * GIB, 30 * GIB)),
        "b": Observation(busy(400_000), status(2 * GIB, 2 * GIB, used=10_000)),
    }
    acts = led.plan([a, b], seen, now=0.0)
    limits = {x.instance: x.bytes for x in acts if isinstance(x, SetLimit)}
    assert limits["a"] == 0
    budget = 80 * GIB - 2 * AWAKE - MARGIN_BYTES
    assert limits.get("b", 2 * GIB) <= budget - 30 * GIB


def test_requests_held_before_the_engine_are_demand() -> None:
    """Mode full: a model whose burst waits in the admission gate shows its engine idle; the
    held requests' KV is what makes the ledger grow it (else it would wait for ever)."""
    assert need_bytes(idle(), TOKEN, shim_used_tokens=0, held_tokens=30_000) == 30_000 * TOKEN

    def plan(held: int) -> dict[str, int]:
        led = Ledger({0: 80 * GIB})
        seen = {
            "a": observed(busy(200_000, rate=5_000.0), status(30 * GIB, 30 * GIB, used=200_000)),
            "b": observed(idle(), status(BLOCK, 2 * GIB), held_tokens=held),
        }
        return {x.instance: x.bytes for x in led.plan([inst("a"), inst("b")], seen, now=0.0) if isinstance(x, SetLimit)}

    quiet, held = plan(0), plan(60_000)
    assert held["b"] >= 60_000 * TOKEN > quiet["b"]
    assert held["a"] < quiet["a"]


def test_need_leaves_out_sglangs_evictable_prefix_cache() -> None:
    """The shim counts SGLang's cached tokens as used; SGLang reports them as evictable
    (num_used = max_total - available - evictable): only the requests' tokens are demand."""
    st = status(20 * GIB, 20 * GIB, used=150_000)  # 10_000 tokens of requests + 140_000 cached
    reported = CAP_TOKENS - (st.limit_tokens - 150_000) - 140_000
    got = load(8, 0, 0, reported, 0.0)
    assert active_tokens(got, 150_000, st.limit_tokens) == 10_000
    assert need_bytes(got, TOKEN, 150_000, shim_limit_tokens=st.limit_tokens) == 10_000 * TOKEN
    # draining (the limit below use): available is 0 and the cache is still told apart
    st = status(20 * GIB, 10 * GIB, used=150_000)
    assert active_tokens(load(8, 0, 0, CAP_TOKENS - 140_000, 0.0), 150_000, st.limit_tokens) == 10_000
    # a sample of another pool (DP ranks summed): the shim's count as it is
    assert active_tokens(got, 150_000, st.limit_tokens, shim_capacity_tokens=2 * CAP_TOKENS) == 150_000


def test_a_busy_servers_prefix_cache_does_not_keep_a_burst_out() -> None:
    """Set-up A on the H200: a busy model's limit fills with prefix cache (SGLang evicts only
    when it needs room), and an on/off model's burst waits in the admission gate. The burst's
    held requests win the cache's memory: the busy model shrinks to its requests' tokens plus a
    share of what is left, and once its cache is evicted the burst's model grows to its need."""
    led = Ledger({0: 80 * GIB})
    budget = 80 * GIB - 2 * AWAKE - MARGIN_BYTES
    full = 36 * GIB
    a, b = inst("a"), inst("b")

    def seen(a_limit: int, a_mapped: int, b_limit: int) -> dict[str, Observation]:
        cached = a_mapped // TOKEN - 20_000
        return {  # a: 20_000 tokens of requests, the rest of what it maps is cache
            "a": observed(busy(20_000), status(a_mapped, a_limit, used=20_000 + cached)),
            "b": observed(idle(), status(BLOCK, b_limit), held_tokens=60_000),  # 7.5 GiB held
        }

    for iid, lim in (("a", full), ("b", BLOCK)):
        led.accepted(iid, lim, 1)
    acts = {x.instance: x.bytes for x in led.plan([a, b], seen(full, full, BLOCK), now=0.0) if isinstance(x, SetLimit)}
    assert acts["a"] < budget / 2  # its cache is no claim: ~2.5 GiB of requests + a share
    for iid, lim in acts.items():
        led.accepted(iid, lim, 2)
    # SGLang evicted the cache down to the new limit: the freed memory goes to the burst
    acts = {
        x.instance: x.bytes
        for x in led.plan([a, b], seen(acts["a"], acts["a"], acts.get("b", BLOCK)), now=1.0)
        if isinstance(x, SetLimit)
    }
    assert acts["b"] >= 60_000 * TOKEN

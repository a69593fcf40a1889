"""cumem_shim across TP ranks (ranks.py): one ElasticKV per rank over its own fake device, the
leader's limit carried in the step's broadcast, every rank applying it in the same step."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cumem_shim import settings as shim_settings
from cumem_shim.elastic import ElasticKV
from cumem_shim.fake import TWO_MIB, FakeDevice
from cumem_shim.freelist import SlotFreeList
from cumem_shim.pages import mha_layout
from cumem_shim.protocol import handle
from cumem_shim.ranks import Follower, LimitNote, carry

# one TP rank's shard of a small model: 2 layers x 2 KV heads (of 4, TP 2) x 64 x bf16
LAYOUT = mha_layout(granularity=TWO_MIB, page_size=1, size=100_000, layers=2, heads=2, head_dim=64)
BLOCK = LAYOUT.block_bytes


class Group:
    """A server's ranks: rank 0 broadcasts each step's requests to the others, as SGLang does."""

    def __init__(self, tp: int, limit_blocks: int = 2) -> None:
        self.devices = [FakeDevice(capacity_bytes=80 << 30) for _ in range(tp)]
        self.kvs = [ElasticKV(LAYOUT, d, 0, limit_blocks * BLOCK, slack_tokens=64, ranked=True) for d in self.devices]
        self.lists = [SlotFreeList(LAYOUT) for _ in range(tp)]
        for kv, fl in zip(self.kvs, self.lists, strict=True):
            kv.attach(fl)
        self.held: list[list[int]] = [[] for _ in range(tp)]

    def step(self, reqs: list[Any]) -> list[list[Any]]:
        """One scheduler step's receive on every rank; returns what each rank got."""
        sent: list[Any] = []

        def source(r: list[Any] | None) -> list[Any]:
            assert r is not None
            sent[:] = r
            return r

        out = [carry(self.kvs[0], list(reqs), source)]
        out += [carry(kv, None, lambda _: list(sent)) for kv in self.kvs[1:]]
        return out

    def available(self) -> list[int]:
        return [kv.available() for kv in self.kvs]

    def alloc(self, n: int) -> None:
        """What every rank's scheduler does with the same batch: the same allocation."""
        for kv, fl, held in zip(self.kvs, self.lists, self.held, strict=True):
            kv.ensure(n)
            got = fl.alloc(n)
            assert got is not None
            held += got

    def free(self, n: int) -> None:
        for fl, held in zip(self.lists, self.held, strict=True):
            fl.release(held[:n])
            del held[:n]


def test_a_limit_reaches_every_rank_in_the_same_step() -> None:
    g = Group(tp=4)
    before = g.available()
    assert len(set(before)) == 1 and before[0] == 2 * LAYOUT.block_units - 1
    acc = g.kvs[0].set_limit(5 * BLOCK, 1)  # the orchestrator's set_limit, to rank 0
    assert acc.applied
    assert g.available() == before  # accepted, not applied: no rank moves on its own
    got = g.step(["req-a", "req-b"])
    assert got == [["req-a", "req-b"]] * 4  # the note is taken out on every rank
    assert g.available() == [5 * LAYOUT.block_units - 1] * 4
    assert {kv.status().revision for kv in g.kvs} == {1}
    assert {kv.status().limit_bytes for kv in g.kvs} == {5 * BLOCK}


def test_a_step_without_a_new_limit_carries_nothing() -> None:
    g = Group(tp=2)
    g.step([])  # the start-up limit (revision 0) goes out once and changes nothing
    assert g.step(["r"]) == [["r"], ["r"]]
    assert g.kvs[0].box.take() is None


def test_a_follower_refuses_set_limit_and_answers_status() -> None:
    g = Group(tp=2)
    target = Follower(g.kvs[1], 1, "/tmp/x.sock")
    out = json.loads(handle(b'{"op": "set_limit", "bytes": 1, "revision": 3}', target))
    assert not out["ok"] and "/tmp/x.sock" in out["error"]["message"]
    out = json.loads(handle(b'{"op": "status"}', target))
    assert out["ok"] and out["status"]["limit_bytes"] == 2 * BLOCK


def test_rank_sockets_leave_rank_zero_at_the_servers_path() -> None:
    assert shim_settings.rank_sockets("/tmp/c/a.sock", 1) == ["/tmp/c/a.sock"]
    assert shim_settings.rank_sockets("/tmp/c/a.sock", 3) == ["/tmp/c/a.sock", "/tmp/c/a.sock.r1", "/tmp/c/a.sock.r2"]
    env = shim_settings.server_env("/tmp/c/a.sock", 1 << 30, tp_size=4)
    assert shim_settings.read(env).tp_size == 4
    assert shim_settings.TP_SIZE not in shim_settings.server_env("/tmp/c/a.sock", 1 << 30)


def test_a_stale_note_is_ignored() -> None:
    g = Group(tp=2)
    g.kvs[0].set_limit(4 * BLOCK, 5)
    g.step([])
    for kv in g.kvs:
        kv.agreed.post(1 * BLOCK, 4)  # an older revision arriving late changes nothing
    assert g.available() == [4 * LAYOUT.block_units - 1] * 2
    assert g.step([LimitNote(1, 2)]) == [[], []]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("limit"), st.integers(0, 12)),
            st.tuples(st.just("alloc"), st.integers(1, 9000)),
            st.tuples(st.just("free"), st.integers(1, 9000)),
            st.tuples(st.just("step"), st.just(0)),
        ),
        max_size=40,
    ),
    st.sampled_from([2, 4]),
)
def test_ranks_never_disagree_under_a_moving_limit(ops: list[tuple[str, int]], tp: int) -> None:
    g = Group(tp=tp)
    revision = 0
    for op, n in ops:
        if op == "limit":
            revision += 1
            g.kvs[0].set_limit(n * BLOCK, revision)
        elif op == "step":
            g.step([])
        elif op == "alloc":
            avail = g.available()
            assert len(set(avail)) == 1  # every rank admits the same
            if 0 < min(n, avail[0]):
                g.alloc(min(n, avail[0]))
        else:
            g.free(n)
        avail = g.available()
        assert len(set(avail)) == 1
        assert len({kv.status().limit_bytes for kv in g.kvs}) == 1
        assert len({kv.status().used_tokens for kv in g.kvs}) == 1


def test_the_orchestrators_group_client_limits_rank_zero_and_reads_every_rank(tmp_path: Any) -> None:
    import asyncio
    import tempfile

    from cumem_shim.channel import ChannelServer
    from orchestrator.kv.client import GroupClient

    g = Group(tp=2)
    base = tempfile.mkdtemp(prefix="rk", dir="/tmp") + "/s"
    paths = shim_settings.rank_sockets(base, 2)
    servers = [ChannelServer(paths[0], g.kvs[0]).start(), ChannelServer(paths[1], Follower(g.kvs[1], 1, base)).start()]
    try:
        g.alloc(5000)
        g.kvs[1].ensure(9000)  # rank 1 mapped one block more (its map-ahead ran further)
        g.kvs[1].publish()
        client = GroupClient(base, 2)
        st = asyncio.run(client.status())
        assert st.mapped_bytes == max(kv.status().mapped_bytes for kv in g.kvs) > g.kvs[0].status().mapped_bytes
        reply = asyncio.run(client.set_limit(6 * BLOCK, 1))
        assert reply.applied and reply.accepted_bytes == 6 * BLOCK
        assert reply.status.revision == 0  # not applied on any rank until the next step
        g.step([])
        g.available()  # each rank's next admission applies it
        assert asyncio.run(client.status()).revision == 1
    finally:
        for s in servers:
            s.close()

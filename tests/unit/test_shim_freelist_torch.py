"""``TorchFreeList`` (the shim's free list over SGLang's own allocator tensors) against the
pure-Python ``SlotFreeList`` it mirrors: the same operations give the same free and held units,
per block and in block order; and a busy server's shrink under load (test_shim_quarantine.py)
drains with the torch list too. CPU torch is enough: these skip without torch (the CPU CI has
none) and run wherever torch is installed (the GPU host; a CPU torch environment)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cumem_shim.freelist import SlotFreeList
from cumem_shim.pages import KVLayout
from tests.unit import test_shim_quarantine as q

torch = pytest.importorskip("torch")

from cumem_shim.freelist_torch import TorchFreeList  # noqa: E402 - needs torch

LAYOUT = KVLayout(2 << 20, 1, 6 * 64, (512 * 16, 512 * 16))  # six blocks


class TorchSlots:
    """A TorchFreeList over a stand-in of SGLang's ``TokenToKVPoolAllocator`` on the CPU, with
    the allocator's own side: ``alloc`` from the front of ``free_pages``, ``release`` appended
    (or, as SGLang's sorted path does, left in ``release_pages`` until a merge); ``free`` and
    ``held`` as lists, as test_shim_quarantine's server reads them."""

    def __init__(self, layout: KVLayout) -> None:
        self.a = SimpleNamespace(
            free_pages=torch.empty((0,), dtype=torch.int64), release_pages=torch.empty((0,), dtype=torch.int64)
        )
        self.t = TorchFreeList(self.a, layout)
        for name in ("free_units", "reset", "add", "free_per_block", "remove", "hold", "unhold", "put_last"):
            setattr(self, name, getattr(self.t, name))
        self.held_units, self.held_per_block = self.t.held_units, self.t.held_per_block

    def alloc(self, n: int) -> list[int] | None:
        self.t._merge()
        if n > len(self.a.free_pages):
            return None
        out: list[int] = self.a.free_pages[:n].tolist()
        self.a.free_pages = self.a.free_pages[n:]
        return out

    def release(self, units: list[int], sorted_path: bool = False) -> None:
        freed = torch.tensor(units, dtype=torch.int64)
        if sorted_path:
            self.a.release_pages = torch.cat((self.a.release_pages, freed))
        else:
            self.a.free_pages = torch.cat((self.a.free_pages, freed))

    @property
    def free(self) -> list[int]:
        out: list[int] = torch.cat((self.a.free_pages, self.a.release_pages)).tolist()
        return out

    @property
    def held(self) -> dict[int, list[int]]:
        return {b: h.tolist() for b, h in self.t.held.items()}


def _same(py: SlotFreeList, tl: TorchSlots) -> None:
    assert tl.free_units() == py.free_units() and tl.held_units() == py.held_units()
    assert tl.free_per_block() == py.free_per_block() and tl.held_per_block() == py.held_per_block()
    assert tl.free == py.free and tl.held == {b: h for b, h in py.held.items() if h}  # the same order


blocks = st.sets(st.integers(0, LAYOUT.num_blocks - 1), max_size=3).map(sorted)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 120)),
        st.tuples(st.just("release"), st.integers(0, 100)),
        st.tuples(st.just("hold"), blocks),
        st.tuples(st.just("unhold"), blocks),
        st.tuples(st.just("put_last"), blocks),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.booleans())
def test_the_torch_free_list_does_what_the_python_one_does(steps: list[tuple[Any, ...]], sorted_path: bool) -> None:
    """``sorted_path``: the allocator frees into ``release_pages`` (SGLang's path when it must hand
    out sorted units), else straight onto ``free_pages``."""
    py, tl = SlotFreeList(LAYOUT), TorchSlots(LAYOUT)
    for fl in (py, tl):
        fl.reset([0, 2, 3])
        fl.add([4])
    used: list[int] = []
    for op, *args in steps:
        if op == "alloc":
            a, b = py.alloc(args[0]), tl.alloc(args[0])
            assert a == b
            used += b or []
        elif op == "release":
            freed, used = used[: args[0]], used[args[0] :]
            py.release(freed)
            tl.release(freed, sorted_path)
        else:
            getattr(py, op)(args[0])
            getattr(tl, op)(args[0])
        _same(py, tl)
    py.remove([3])
    tl.remove([3])
    _same(py, tl)


@pytest.mark.parametrize("seed", range(2))
def test_a_busy_server_drains_with_the_torch_free_list(seed: int) -> None:
    srv = q.loaded(seed=seed, free_list=TorchSlots)  # type: ignore[arg-type]
    kv = srv.kv
    assert len(kv.mapped) >= 10
    kv.set_limit(5 * q.BLOCK, 1)
    steps = 0
    while len(kv.mapped) > 5:
        srv.step(1, (100, 300))  # the traffic goes on
        steps += 1
        assert steps <= q.LIFE[1] + q.SWEEP_LAG, f"still {len(kv.mapped)} blocks mapped after {steps} steps"
    assert srv.running and srv.in_victims == 0

"""Weights staging for shape pools: the pool's ``stage_gb``, the page-cache reader on real
files, and the stager driven by the pool router's popularity (a request for a pooled model
stages its checkpoint; a hotter one displaces it when the budget is full)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import parse_config
from orchestrator.errors import ConfigError
from orchestrator.policy.staging import MIN_STAGED_S
from orchestrator.pools.holdings import Holdings
from orchestrator.pools.router import PoolRouter
from orchestrator.pools.staging import PageCache, Stager

MB = 10**6


def checkpoint(root: Path, name: str, mb: int) -> str:
    d = root / name
    d.mkdir()
    (d / "model-00001-of-00002.safetensors").write_bytes(b"\x01" * (mb * MB // 2))
    (d / "model-00002-of-00002.safetensors").write_bytes(b"\x02" * (mb * MB - mb * MB // 2))
    (d / "config.json").write_text("{}")
    return str(d)


def pool_file(paths: dict[str, str], stage_gb: float | None) -> dict[str, Any]:
    pool: dict[str, Any] = {"name": "p", "servers": [{"gpus": [0]}]}
    if stage_gb is not None:
        pool["stage_gb"] = stage_gb
    return {
        "host": {"gpus": 1, "host_memory_gb": 64},
        "models": [{"name": n, "model_path": p, "shape": "llama-3.1-8b", "pool": "p"} for n, p in paths.items()],
        "pools": [pool],
    }


def test_stage_gb_is_read_checked_and_bounded_by_host_memory() -> None:
    paths = {"a": "/ck/a", "b": "/ck/b"}
    assert parse_config(pool_file(paths, 2.5)).pools[0].stage_bytes == 2_500_000_000
    assert parse_config(pool_file(paths, None)).pools[0].stage_bytes == 0
    with pytest.raises(ConfigError, match=r"pools\[0\].stage_gb: must be a number >= 0"):
        parse_config(pool_file(paths, -1))
    with pytest.raises(ConfigError, match="exceeds host.host_memory_gb"):
        parse_config(pool_file(paths, 65))


def test_the_page_cache_reader_reads_every_file_and_knows_the_size(tmp_path: Path) -> None:
    cache = PageCache()
    path = checkpoint(tmp_path, "ft-0", 3)
    assert cache.size(path) == 3 * MB + 2
    assert cache.read(path) == 3 * MB + 2
    cache.drop(path)  # posix_fadvise(DONTNEED) on each file: no error
    assert cache.size("meta-llama/Llama-3.1-8B-Instruct") == 0 and cache.read("not/a/dir") == 0


class RecordingCache(PageCache):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.drops: list[str] = []

    def read(self, path: str) -> int:
        self.reads.append(path)
        return super().read(path)

    def drop(self, path: str) -> None:
        self.drops.append(path)
        super().drop(path)


async def test_requests_stage_their_checkpoints_and_a_hotter_one_displaces_a_colder(tmp_path: Path) -> None:
    paths = {n: checkpoint(tmp_path, f"ft-{n}", 4) for n in ("a", "b", "c")}
    cfg = parse_config(pool_file(paths, 0.009))  # room for two 4-MB checkpoints
    holdings = Holdings(cfg.pools)  # the pool's one server holds a's weights (its start)
    cache, told = RecordingCache(), list[tuple[str, int]]()
    t = [0.0]
    stager = Stager(
        cfg.pools, {"p": tuple(paths.values())}, holdings, cache, lambda p, n: told.append((p, n)), lambda: t[0]
    )

    async def ask(name: str, times: int = 1) -> None:
        for _ in range(times):
            holdings.bump("p", paths[name], t[0])
            stager.poke("p")
        await asyncio.wait_for(stager.done.wait(), 5)

    await ask("b")
    assert cache.reads == [paths["b"]] and stager.staged["p"] == {paths["b"]}
    assert told[-1] == ("p", 4 * MB + 2)
    await ask("a", 3)  # held by the server: staged after the unheld ones, in what is left
    assert stager.staged["p"] == {paths["b"], paths["a"]}
    t[0] = 1.0
    await ask("c", 5)  # hotter than the held a, but a was staged a second ago: kept (MIN_STAGED_S)
    assert stager.staged["p"] == {paths["b"], paths["a"]} and cache.drops == []
    t[0] = 1.0 + MIN_STAGED_S
    await ask("c", 5)  # a minute on, c is still hotter: a is let go, c read
    assert stager.staged["p"] == {paths["b"], paths["c"]} and cache.drops == [paths["a"]]
    assert told[-1] == ("p", 2 * (4 * MB + 2))


async def test_without_a_budget_nothing_is_read(tmp_path: Path) -> None:
    paths = {"a": checkpoint(tmp_path, "ft-a", 1)}
    cfg = parse_config(pool_file(paths, None))
    cache = RecordingCache()
    stager = Stager(cfg.pools, {"p": tuple(paths.values())}, Holdings(cfg.pools), cache)
    stager.poke("p")
    await asyncio.sleep(0.05)
    assert cache.reads == [] and stager.staged == {}


async def test_the_pool_router_stages_a_requested_models_checkpoint(tmp_path: Path) -> None:
    from tests.unit.test_pools import COSTS, FakeLoop, FakeRetargeter

    paths = {"a": checkpoint(tmp_path, "ft-a", 2), "b": checkpoint(tmp_path, "ft-b", 2)}
    loop = FakeLoop()
    loop.cfg = parse_config(pool_file(paths, 1))
    holdings = Holdings(loop.cfg.pools)
    stager = Stager(loop.cfg.pools, {"p": tuple(paths.values())}, holdings, RecordingCache())
    router = PoolRouter(
        loop, holdings, FakeRetargeter(loop), loop.cfg.models, lambda p: COSTS, lambda i, o: None, stager=stager
    )
    model = loop.cfg.model("b")
    assert model is not None
    router.release(await router.acquire(model, 5))
    await asyncio.wait_for(stager.done.wait(), 5)
    assert stager.staged["p"] == {paths["b"]}  # a, never asked, has no forecast: not read

"""The /v1/loads scraper against httpx.MockTransport: what a sample carries, which instances are
polled, and failures (logged once, no sample). No sleeping: ``scrape_once`` is driven directly."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from orchestrator.control.scrape import Scraper, sample_from_loads
from orchestrator.kv.demand import LoadsError
from orchestrator.types import InstanceState, InstanceView, LoadSample

S = InstanceState


def loads(prefill: int, generated: float | None, running: int = 2, gen_rate: float = 0.0,
          **extra: Any) -> dict[str, Any]:
    rank = {"num_running_reqs": running, "num_waiting_reqs": 1,
            "num_waiting_uncached_tokens": 40, "num_used_tokens": 900,
            "max_total_num_tokens": 10_000, "max_running_requests": 48,
            "gen_throughput": gen_rate, "total_prefill_uncached_tokens": prefill,
            "decode_moments": None if generated is None else [1, 1, 1, 1, 1, generated], **extra}
    return {"timestamp": "t", "version": "0.5.17", "loads": [rank]}


def test_sample__first_is_a_baseline_then_counter_growth_is_demand() -> None:
    first, seen = sample_from_loads("a@gpu0", loads(1_000, 500.0), 10.0, None)
    assert first.tokens == 0  # history (the readiness probe included) is not demand now
    assert (first.running, first.waiting, first.waiting_tokens) == (2, 1, 40)
    assert (first.used_tokens, first.capacity_tokens, first.max_running) == (900, 10_000, 48)
    second, seen = sample_from_loads("a@gpu0", loads(1_300, 560.0), 10.25, seen)
    assert second.tokens == 300 + 60
    restarted, _ = sample_from_loads("a@gpu0", loads(20, 5.0), 10.5, seen)
    assert restarted.tokens == 25  # counters went down: they count from zero


def test_sample__without_decode_counters_uses_gen_throughput() -> None:
    _, seen = sample_from_loads("a@gpu0", loads(0, None), 1.0, None)
    s, _ = sample_from_loads("a@gpu0", loads(0, None, gen_rate=80.0), 1.5, seen)
    assert s.tokens == pytest.approx(40.0)


def test_sample__rejects_a_body_that_is_not_sglangs() -> None:
    with pytest.raises(LoadsError):
        sample_from_loads("a@gpu0", {"loads": "nope"}, 0.0, None)


def view(iid: str, state: S) -> InstanceView:
    return InstanceView(iid, iid.split("@")[0], (0,), state, f"http://{iid.replace('@', '.')}")


async def test_scraper__polls_awake_instances_and_feeds_every_sink(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    broken = {"b.gpu0"}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.url.host}{request.url.path}?{request.url.query.decode()}")
        if request.url.host in broken:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json=loads(100, 10.0))

    views = [view("a@gpu0", S.AWAKE), view("b@gpu0", S.AWAKE), view("c@gpu0", S.PARKED)]
    got: list[LoadSample] = []
    also: list[str] = []
    scraper = Scraper(lambda: views, [got.append, lambda s: also.append(s.instance_id)],
                      clock=lambda: 1.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with caplog.at_level(logging.WARNING, "chimera.scrape"):
            await scraper.scrape_once(client)
            await scraper.scrape_once(client)
        assert sorted(calls) == ["a.gpu0/v1/loads?include=core"] * 2 + [
            "b.gpu0/v1/loads?include=core"] * 2  # the parked one is never polled
        assert [s.instance_id for s in got] == ["a@gpu0", "a@gpu0"] and also == ["a@gpu0"] * 2
        warnings = [r for r in caplog.records if "b@gpu0" in r.getMessage()]
        assert len(warnings) == 1 and "503" in warnings[0].getMessage()  # once per streak
        broken.clear()
        await scraper.scrape_once(client)
        assert [s.instance_id for s in got][-2:] == ["a@gpu0", "b@gpu0"]

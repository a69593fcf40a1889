"""The /v1/loads scraper against httpx.MockTransport: which instances are polled, what reaches
the sinks, and failures (logged once, no sample). No sleeping: ``scrape_once`` is driven
directly. What a sample carries: test_sglang_loads.py."""

from __future__ import annotations

import logging

import httpx
import pytest

from orchestrator.control.scrape import Scraper
from orchestrator.types import InstanceState, InstanceView, LoadSample
from tests.unit.sglang_fakes import loads

S = InstanceState


def view(iid: str, state: S) -> InstanceView:
    return InstanceView(iid, iid.split("@")[0], (0,), state, f"http://{iid.replace('@', '.')}")


async def test_scraper__polls_awake_instances_and_feeds_every_sink(caplog: pytest.LogCaptureFixture) -> None:
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
    scraper = Scraper(lambda: views, [got.append, lambda s: also.append(s.instance_id)], clock=lambda: 1.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with caplog.at_level(logging.WARNING, "chimera.scrape"):
            await scraper.scrape_once(client)
            await scraper.scrape_once(client)
        assert (
            sorted(calls) == ["a.gpu0/v1/loads?include=core"] * 2 + ["b.gpu0/v1/loads?include=core"] * 2
        )  # the parked one is never polled
        assert [s.instance_id for s in got] == ["a@gpu0", "a@gpu0"] and also == ["a@gpu0"] * 2
        warnings = [r for r in caplog.records if "b@gpu0" in r.getMessage()]
        assert len(warnings) == 1 and "503" in warnings[0].getMessage()  # once per streak
        broken.clear()
        await scraper.scrape_once(client)
        assert [s.instance_id for s in got][-2:] == ["a@gpu0", "b@gpu0"]

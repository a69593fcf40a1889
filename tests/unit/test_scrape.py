"""The /v1/loads scraper against httpx.MockTransport: which instances are polled, what reaches
the sinks, failures (logged once, no sample) and liveness events. No sleeping: ``scrape_once`` is driven
directly. What a sample carries: test_sglang_loads.py."""

from __future__ import annotations

import logging

import httpx
import pytest

from orchestrator.control.events import Responsive, Unresponsive
from orchestrator.control.scrape import Scraper
from orchestrator.types import InstanceState, InstanceView, LoadSample
from tests.unit.control_fakes import Clock
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


async def test_scraper_reports_an_instance_unanswered_for_the_window_once_and_its_return() -> None:
    broken = {"b.gpu0"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host in broken:
            raise httpx.ReadTimeout("stuck", request=request)
        return httpx.Response(200, json=loads(100, 10.0))

    views = [view("a@gpu0", S.AWAKE), view("b@gpu0", S.AWAKE)]
    clock = Clock(100.0)
    events: list[Unresponsive | Responsive] = []
    scraper = Scraper(lambda: views, [lambda s: None], clock=clock, liveness=events.append, window_s=3.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await scraper.scrape_once(client)  # fails since 100
        clock.t = 102.9
        await scraper.scrape_once(client)
        assert events == []  # within the window: a busy moment, not a hang
        clock.t = 103.0
        await scraper.scrape_once(client)
        clock.t = 104.0
        await scraper.scrape_once(client)
        assert len(events) == 1  # once per streak
        ev = events[0]
        assert isinstance(ev, Unresponsive) and ev.instance_id == "b@gpu0" and ev.stale_s == pytest.approx(3.0)
        assert "ReadTimeout" in ev.detail
        broken.clear()
        await scraper.scrape_once(client)
        await scraper.scrape_once(client)
        assert events[1:] == [Responsive("b@gpu0")]
        # a new streak starts over; an instance that leaves the awake state ends its streak
        broken.add("b.gpu0")
        await scraper.scrape_once(client)
        views[1] = view("b@gpu0", S.BACKOFF)
        await scraper.scrape_once(client)
        views[1] = view("b@gpu0", S.AWAKE)
        clock.t = 106.0
        await scraper.scrape_once(client)
        assert len(events) == 2  # the restarted instance's first failure is a new streak's start


async def test_a_health_streak_of_the_window_is_reported_once_as_out_of_band() -> None:
    """/v1/loads answers while SGLang is paused; its /health (a 1-token generate) does not."""
    paused = {"b.gpu0"}
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        assert request.headers["authorization"] == "Bearer k"
        if request.url.path == "/health" and request.url.host in paused:
            return httpx.Response(503)
        return httpx.Response(200, json=loads(100, 10.0))

    views = [view("a@gpu0", S.AWAKE), view("b@gpu0", S.AWAKE), view("c@gpu0", S.PARKED)]
    clock = Clock(100.0)
    events: list[Unresponsive | Responsive] = []
    scraper = Scraper(
        lambda: views,
        [lambda s: None],
        clock=clock,
        liveness=events.append,
        window_s=3.0,
        headers={"authorization": "Bearer k"},
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await scraper.health_once(client)
        assert sorted(paths) == ["/health", "/health"]  # awake instances only
        clock.t = 102.0
        await scraper.health_once(client)
        assert events == []
        clock.t = 103.0
        await scraper.health_once(client)
        await scraper.health_once(client)
        (ev,) = events
        assert isinstance(ev, Unresponsive) and ev.instance_id == "b@gpu0" and ev.stale_s == pytest.approx(3.0)
        assert "503" in ev.detail and "outside chimera" in ev.detail
        paused.clear()  # an answer ends the streak: the next one starts over
        await scraper.health_once(client)
        paused.add("b.gpu0")
        clock.t = 105.0
        await scraper.health_once(client)
        assert len(events) == 1

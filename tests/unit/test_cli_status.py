"""`chimera-orch status`: the state table from a chimera's /dashboard/state, and one clear line
(exit code 1) when nothing usable answers."""

from __future__ import annotations

import argparse
from dataclasses import replace

import httpx
import orjson
import pytest
from rich.console import Console

from orchestrator.cli import status
from orchestrator.cli.main import build_parser
from orchestrator.dashboard.routes import STATE_PATH, Dashboard
from orchestrator.metrics import ChimeraMetrics
from orchestrator.supervisor.ports import free_ports
from orchestrator.types import InstanceState
from tests.unit.test_dashboard import Clock, deployment, views


def snapshot_transport() -> httpx.MockTransport:
    dep = deployment()
    metrics = ChimeraMetrics()
    metrics.requests.labels("a", "/v1/completions", "200").inc(7)
    metrics.ttft.labels("a").observe(0.2)
    metrics.record_slo("a", 0.2, 0.02, 0.5, 0.05)
    metrics.record_slo("a", 0.2, 0.09, 0.5, 0.05)
    metrics.gpu_seconds.labels("a", "awake").inc(12.5)
    states = {"a@gpu0": InstanceState.AWAKE, "b@gpu0": InstanceState.PARKED}
    dash = Dashboard(dep, lambda: views(dep, states), metrics, clock=Clock())

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == STATE_PATH
        return httpx.Response(200, content=orjson.dumps(dash.snapshot()))

    return httpx.MockTransport(handle)


def run(argv: list[str], transport: httpx.BaseTransport | None) -> tuple[int, str]:
    args = build_parser().parse_args(["status", *argv])
    con = Console(record=True, width=200)
    rc = status.run(args, console=con, transport=transport)
    return rc, con.export_text()


def test_status_prints_one_line_per_model_and_per_gpu() -> None:
    rc, out = run(["http://chimera:8000/"], snapshot_transport())
    assert rc == 0
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["MODEL", "STATE", "INSTANCES"]
    a = next(line for line in lines if line.startswith("a "))
    assert a.split()[:4] == ["a", "awake", "a@gpu0=awake", "7"]
    assert "(500ms)" in a and "(50ms)" in a  # its TTFT and TPOT SLOs
    assert a.split()[-5:-3] == ["50%", "12.5"]  # SLO met (both), GPU-seconds; then wakes, parks, age
    b = next(line for line in lines if line.startswith("b "))
    assert b.split()[1] == "parked"
    gpu = next(line for line in lines if line.startswith("0 "))
    assert "a:" in gpu and "b:" in gpu


def test_status_says_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    rc, _ = run([f"http://127.0.0.1:{port}"], None)
    assert rc == 1
    assert f"nothing answers at http://127.0.0.1:{port}{STATE_PATH}" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("response", "says"),
    [(httpx.Response(404, text="no"), "HTTP 404"), (httpx.Response(200, text="<html>"), "did not answer JSON")],
)
def test_status_refuses_what_is_not_chimera(
    response: httpx.Response, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _ = run(["http://elsewhere"], httpx.MockTransport(lambda r: response))
    assert rc == 1 and says in capsys.readouterr().err


def test_the_parser_knows_watch_and_a_default_url() -> None:
    args = build_parser().parse_args(["status", "-w"])
    assert isinstance(args, argparse.Namespace)
    assert (args.url, args.watch, args.interval) == (status.DEFAULT_URL, True, 1.0)


def test_status_shows_a_draining_instance_with_its_reason() -> None:
    dep = deployment()
    states = {"a@gpu0": InstanceState.AWAKE, "b@gpu0": InstanceState.PARKED}
    models = [
        replace(m, instances=tuple(replace(i, draining="idle") if i.id == "a@gpu0" else i for i in m.instances))
        for m in views(dep, states)
    ]
    snap = Dashboard(dep, lambda: models, ChimeraMetrics(), clock=Clock()).snapshot()
    con = Console(record=True, width=200)
    con.print(status.render(snap))
    a = next(line for line in con.export_text().splitlines() if line.startswith("a "))
    assert a.split()[:3] == ["a", "awake", "a@gpu0=draining(idle)"]


def test_status_shows_host_ram_in_weight_backups_per_gpu_and_in_total() -> None:
    dep = deployment()
    metrics = ChimeraMetrics()
    metrics.host_memory.labels("b", "b@gpu0", "parked_weights").set(6 * status.GIB)
    states = {"a@gpu0": InstanceState.AWAKE, "b@gpu0": InstanceState.PARKED}
    snap = Dashboard(dep, lambda: views(dep, states), metrics, clock=Clock()).snapshot()
    con = Console(record=True, width=200)
    con.print(status.render(snap))
    lines = con.export_text().splitlines()
    assert lines[0].endswith("6.0 GiB of host RAM in weight backups")
    head = next(line for line in lines if line.startswith("GPU "))
    gpu = next(line for line in lines if line.startswith("0 "))
    assert head.split()[:5] == ["GPU", "USED", "GIB", "FREE", "GIB"] and gpu.split()[3] == "6.0"

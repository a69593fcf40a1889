"""What app.serve wires per mode: the one /v1/loads poller (the scraper, in every mode: it sees
hung engines first) and its sinks — the control loop, the KV runner (modes elastic and full)
and the admission gate (mode full)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from starlette.applications import Starlette

from orchestrator.app import _admission, _kv_runner, _scraper, nothing_serves
from orchestrator.config import ModelSpec, parse_config
from orchestrator.control.loop import ControlLoop
from orchestrator.deployment import derive
from orchestrator.engines import get_engine
from orchestrator.metrics.gpu_seconds import GpuSeconds
from orchestrator.metrics.registry import ChimeraMetrics
from orchestrator.supervisor.supervisor import Supervisor
from orchestrator.types import MODES, InstanceState, InstanceView, LoadSample, Mode, ModelView
from tests.unit.test_proxy import LLAMA, QWEN


def raw(mode: Mode) -> dict[str, object]:
    return {
        "mode": mode,
        "host": {"gpus": 1, "gpu_memory_gb": 40},
        "models": [{"name": "a", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]}],
    }


@pytest.mark.parametrize("mode", MODES)
async def test_the_scraper_runs_in_every_mode_with_the_sinks_each_needs(mode: Mode, tmp_path: Path) -> None:
    dep = derive(parse_config(raw(mode)))
    supervisor = Supervisor(get_engine("sim"), dep.config.host, tmp_path, post=lambda ev: None, deployment=dep)
    try:
        control = ControlLoop(dep, supervisor)
        metrics = ChimeraMetrics()
        kv = _kv_runner(
            dep, control, supervisor, metrics, GpuSeconds(dep.instances, dep.gpu_bytes, metrics.gpu_seconds)
        )
        app = Starlette()
        gate = _admission(dep, app, kv)
        scraper = _scraper(control, kv, gate, {"Authorization": "Bearer k"})
    finally:
        await supervisor.http.aclose()
    assert (kv is not None) == (mode in ("elastic", "full"))
    assert (gate is not None) == (mode == "full") and getattr(app.state, "admission", None) is gate
    rest = ([kv.observe] if kv is not None else []) + ([gate.observe] if gate else [])
    assert list(scraper.sinks)[1:] == rest
    if kv is None:
        assert scraper.sinks[0] == control.post
    assert scraper.headers == {"Authorization": "Bearer k"}  # the engines' key on every scrape
    if gate is not None and kv is not None:  # requests the gate holds are the ledger's demand too
        assert kv.held == gate.held_kv_tokens and gate.on_held == kv.poke
    assert scraper.targets == control.instances
    assert scraper.liveness == control.post and scraper.window_s == dep.config.liveness.window_s
    if kv is not None:  # the loop gets the requests' tokens (KVRunner.requests_view); the runner the sample
        posted: list[object] = []
        control.post = posted.append  # type: ignore[method-assign]
        kv.requests_view = lambda s: replace(s, used_tokens=7)  # type: ignore[method-assign]
        sample = LoadSample("a@gpu0", 0.0, 1, 0, 0, 900, 1000, None, 0.0, 0.0)
        scraper.sinks[0](sample)
        assert posted == [replace(sample, used_tokens=7)]


def _model(spec: ModelSpec, *states: tuple[InstanceState, str | None]) -> ModelView:
    views = tuple(InstanceView(f"{spec.name}@gpu{n}", spec.name, (n,), s, None, e) for n, (s, e) in enumerate(states))
    best = next((s for s, _ in states if s is not InstanceState.FAILED), InstanceState.FAILED)
    return ModelView(spec, best, views)


def test_up_exits_non_zero_with_reasons_only_when_every_model_failed() -> None:
    dead = _model(LLAMA, (InstanceState.FAILED, "engine exited with code 1"), (InstanceState.FAILED, None))
    also_dead = _model(QWEN, (InstanceState.FAILED, "out of memory"))
    reason = nothing_serves([dead, also_dead])
    assert reason is not None
    assert reason.splitlines() == [
        "  llama@gpu0: engine exited with code 1",
        "  llama@gpu1: failed",
        "  qwen@gpu0: out of memory",
    ]
    one_serves = _model(QWEN, (InstanceState.FAILED, "oom"), (InstanceState.AWAKE, None))
    assert nothing_serves([dead, one_serves]) is None
    assert nothing_serves([dead, _model(QWEN, (InstanceState.STOPPED, None))]) is None  # on demand
    assert nothing_serves([]) is None

"""A supervisor task that raises what nothing inside it expected still ends in the event the
control loop waits for: a start that raised must not leave its instance ``starting`` forever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.config import InstanceSpec, parse_config
from orchestrator.control.events import Event, StartFailed
from orchestrator.deployment import derive
from orchestrator.engines import get_engine
from orchestrator.supervisor.supervisor import Supervisor


async def test_a_start_that_raises_an_unexpected_exception_posts_start_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = derive(parse_config({"models": [{"name": "a", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]}]}))
    events: list[Event] = []
    sup = Supervisor(get_engine("sim"), dep.config.host, tmp_path, post=events.append, deployment=dep)

    async def broken_model_dir(spec: InstanceSpec) -> str | None:
        raise Exception("No such file or directory (os error 2)")  # what the tokenizers package raises

    monkeypatch.setattr(sup, "_model_dir", broken_model_dir)
    spec = dep.config.instances[0]
    sup.start(spec)
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.01)
    await sup.stop_all()
    assert len(events) == 1 and isinstance(events[0], StartFailed)
    assert events[0].instance_id == spec.id and "os error 2" in events[0].error

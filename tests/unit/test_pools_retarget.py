"""The re-target of a pooled server over HTTP (orchestrator/pools/retarget.py), against the sim
server's app: one weight update that flushes the prefix cache with the load, then the probe; no
separate ``/flush_cache``, which SGLang refuses while anything is queued (seen on the H200, where
the server's own warm-up request arrived with it)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from orchestrator.pools.retarget import HttpRetargeter, RetargetError
from orchestrator.shapes import shape_dir
from simsglang.batcher import VirtualClock
from simsglang.server import SimServer, SimSettings, create_app


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[SimServer, httpx.ASGITransport, list[str]]]:
    app = create_app(SimSettings.from_shape("tiny-llama", served_name="tiny"), clock=VirtualClock(auto=True))
    async with app.router.lifespan_context(app):
        sim = app.state.sim
        flushed: list[str] = []
        sim.batcher.flush_prefix_cache = lambda: flushed.append(sim.model_path)  # type: ignore[method-assign]
        yield sim, httpx.ASGITransport(app=app), flushed


def finetune(tmp_path: Path, name: str) -> str:
    d = tmp_path / name
    d.mkdir()
    shutil.copy(shape_dir("tiny-llama") / "config.json", d / "config.json")
    return str(d)


async def test_one_update_flushes_with_the_load_then_the_probe(
    served: tuple[SimServer, httpx.ASGITransport, list[str]], tmp_path: Path
) -> None:
    sim, app, flushed = served
    paths: list[str] = []

    async def record(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return await app.handle_async_request(request)

    retargeter = HttpRetargeter(transport=httpx.MockTransport(record))
    try:
        before = (await retargeter.switch("http://sim", "tiny-llama"))[0]
        path = finetune(tmp_path, "ft-1")
        text, phases = await retargeter.switch("http://sim", path)
    finally:
        await retargeter.aclose()
    assert paths == ["/update_weights_from_disk", "/generate"] * 2
    assert flushed == ["tiny-llama", path]  # flushed after each load, holding the new weights
    assert sim.model_path == path and text != before
    assert set(phases) == {"update_weights_s", "probe_s"}


async def test_a_refused_update_is_a_retarget_error_naming_the_engines_message(
    served: tuple[SimServer, httpx.ASGITransport, list[str]],
) -> None:
    _, app, flushed = served
    retargeter = HttpRetargeter(transport=app)
    try:
        with pytest.raises(RetargetError, match=r"update_weights_from_disk\(llama-3.2-1b\).*400.*shape"):
            await retargeter.switch("http://sim", "llama-3.2-1b")
    finally:
        await retargeter.aclose()
    assert flushed == []

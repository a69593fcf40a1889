"""The engines' API key: SGLang's ``--api-key`` as the sim enforces it (same routes, same 401),
its ``--config`` file, and chimera sending the key on every kind of call."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from orchestrator.config import parse_config
from orchestrator.control.scrape import Scraper
from orchestrator.engines.base import LaunchRequest
from orchestrator.engines.simulated import SimEngine
from orchestrator.env import Env
from orchestrator.proxy.upstream import EngineClient
from orchestrator.sglang.auth import EngineAuth, new_key, write_config
from orchestrator.sglang.launch import SGLangEngine
from orchestrator.types import InstanceState, InstanceView
from simsglang.__main__ import build_parser
from simsglang.auth import allowed, merge_config
from simsglang.batcher import VirtualClock
from simsglang.server import SimSettings, create_app
from tests.unit.test_proxy_upstream import TinyEngine, json_answer

KEY = "ck-0123abcd"


@pytest.fixture
async def engine() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SimSettings.from_shape("tiny-llama", served_name="tiny", api_key=KEY), clock=VirtualClock())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim") as c:
            yield c


GEN = {"text": "hi", "sampling_params": {"max_new_tokens": 2}}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/generate"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/model_info"),
        ("GET", "/v1/loads"),
        ("POST", "/pause_generation"),
        ("POST", "/release_memory_occupation"),
        ("GET", "/no/such/route"),  # the middleware runs before routing, as in SGLang
    ],
)
async def test_the_sim_refuses_every_route_without_the_key_with_sglangs_401(
    engine: httpx.AsyncClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = await engine.request(method, path, json={}, headers=headers)
        assert r.status_code == 401, (path, headers)
        assert r.content == b'{"error":"Unauthorized"}'
        assert r.headers["content-type"] == "application/json"


async def test_the_sim_serves_with_the_key_and_leaves_health_and_metrics_open(engine: httpx.AsyncClient) -> None:
    r = await engine.post("/generate", json=GEN, headers={"Authorization": f"bEaReR {KEY}"})  # scheme: any case
    assert r.status_code == 200 and r.json()["text"]
    for path in ("/health", "/health_generate", "/metrics"):
        assert (await engine.get(path)).status_code == 200, path
    assert (await engine.options("/generate")).status_code != 401
    info = (await engine.get("/server_info", headers={"Authorization": f"Bearer {KEY}"})).json()
    assert KEY not in str(info)


def test_sglangs_decision_table() -> None:
    assert allowed("GET", "/metrics_extra", None, KEY)  # a prefix, as in SGLang
    assert not allowed("GET", "/model_info", f"Bearer  {KEY}", KEY)  # split at the first space only
    assert allowed("GET", "/model_info", f"Bearer {KEY}", KEY)


def test_config_file_is_merged_like_sglangs_and_the_command_line_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text('api-key: "0123"\nenable-metrics: true\nsleep-on-idle: false\nport: 5\n')
    argv = merge_config(["--model-path", "tiny-llama", "--config", str(cfg), "--port", "7"])
    assert argv == ["--api-key", "0123", "--enable-metrics", "--port", "5", "--model-path", "tiny-llama", "--port", "7"]
    args = build_parser().parse_args(argv)
    assert (args.api_key, args.port) == ("0123", 7)
    for bad, why in ((tmp_path / "c.json", "YAML format"), (tmp_path / "missing.yaml", "not found")):
        bad.write_text("{}") if bad.suffix == ".json" else None
        with pytest.raises(ValueError, match=why):
            merge_config(["--config", str(bad)])
    with pytest.raises(ValueError, match="Only one"):
        merge_config(["--config", str(cfg), "--config", str(cfg)])


def test_key_file_is_private_and_the_key_stays_out_of_argv_and_repr(tmp_path: Path) -> None:
    key = new_key()
    assert key.startswith("ck-") and len(key) > 60
    auth = write_config(tmp_path / "run", key)
    assert stat.S_IMODE(auth.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth.config_file.parent.stat().st_mode) == 0o700
    assert merge_config(["--config", str(auth.config_file)]) == ["--api-key", key]
    assert key not in repr(auth) and auth.headers() == {"Authorization": f"Bearer {key}"}
    cfg = parse_config({"models": [{"name": "m", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}]})
    req = LaunchRequest(
        instance=cfg.instances[0], host=cfg.host, port=1, nccl_port=2, config_file=str(auth.config_file)
    )
    for eng in (SimEngine(), SGLangEngine(Env.read())):
        argv = eng.launch_spec(req).argv
        assert argv[-2:] == ("--config", str(auth.config_file)) and key not in " ".join(argv)
        assert key not in str(eng.launch_spec(req).env)


async def test_the_proxys_engine_client_and_the_scraper_send_the_key() -> None:
    auth = EngineAuth(KEY, Path("/unused"))
    async with TinyEngine(json_answer) as tiny:
        client = EngineClient(headers=auth.headers())
        resp = await client.post(tiny.url, "/v1/completions", b"{}")
        await resp.read()
        await resp.aclose()
        await client.aclose()
        await tiny.connections[0].closed.wait()
        assert f"authorization: Bearer {KEY}".encode() in tiny.requests[0].head.split(b"\r\n")

    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, content=b'{"error":"Unauthorized"}')

    view = InstanceView("m@gpu0", "m", (0,), InstanceState.AWAKE, base_url="http://e")
    scraper = Scraper(lambda: [view], [lambda s: None], headers=auth.headers())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        assert await scraper.scrape_once(http) == []
    assert seen == [f"Bearer {KEY}"]

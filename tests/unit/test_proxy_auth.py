"""Client authentication (proxy/auth.py): 401, 403 and 429 envelopes, /v1/models filtered by
key, keys loaded from a file and the environment, never logged; the admin API's Bearer
parsing; secrets kept out of the engines' environment and off the command line."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from orchestrator.cli.main import main
from orchestrator.config import parse_config
from orchestrator.engines.base import LaunchRequest
from orchestrator.engines.simulated import SimEngine
from orchestrator.env import SECRETS, Env, engine_environ
from orchestrator.errors import ConfigError
from orchestrator.metrics import ChimeraMetrics
from orchestrator.policy.bucket import Rate
from orchestrator.proxy import create_app
from orchestrator.proxy.admin import admin_routes
from orchestrator.proxy.auth import ClientKey, ClientKeys, bearer, digest, load_keys
from orchestrator.sglang.launch import SGLangEngine
from orchestrator.types import InstanceView
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA, QWEN, FakeEngine, engine_transport, error_of

TEAM = "sk-team-a-0123456789"
OPEN = "sk-everything-0123"
LIMITED = "sk-limited-0123456"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys(clock: Clock) -> ClientKeys:
    return ClientKeys(
        [
            ClientKey("team-a", digest(TEAM), frozenset({"llama"}), None),
            ClientKey("open", digest(OPEN), None, None),
            ClientKey("limited", digest(LIMITED), None, Rate(per_s=1.0, burst=2.0)),
        ],
        clock=clock,
    )


def app_with(router: FakeRouter, engine: FakeEngine, clock: Clock) -> Starlette:
    return create_app(router, ChimeraMetrics(), transport=engine_transport(engine), client_keys=keys(clock))


async def call(app: Starlette, method: str, path: str, key: str | None, **kw: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with app.router.lifespan_context(app):
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://proxy") as client:
            return await client.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]


CHAT = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("key", [None, "sk-unknown-key-000"])
async def test_a_missing_or_unknown_key_is_401_and_never_logged(
    key: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    router, engine = FakeRouter((LLAMA, QWEN)), FakeEngine()
    with caplog.at_level(logging.DEBUG):
        resp = await call(app_with(router, engine, Clock()), "POST", "/v1/chat/completions", key, json=CHAT)
    assert resp.status_code == 401
    err = error_of(resp)
    assert (err["type"], err["code"], err["src"]) == ("authentication_error", "invalid_api_key", "chimera")
    assert not engine.seen and not router.acquired
    assert "sk-unknown" not in caplog.text


async def test_a_key_without_the_scheme_is_refused_and_the_scheme_is_case_insensitive() -> None:
    app = app_with(FakeRouter((LLAMA, QWEN)), FakeEngine(), Clock())
    async with app.router.lifespan_context(app):
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://proxy") as client:
            bare = await client.get("/v1/models", headers={"authorization": OPEN})
            lower = await client.get("/v1/models", headers={"authorization": f"bearer {OPEN}"})
            upper = await client.get("/v1/models", headers={"authorization": f"BEARER {OPEN}"})
    assert (bare.status_code, lower.status_code, upper.status_code) == (401, 200, 200)
    assert bearer([(b"authorization", b"Basic abc")]) is None
    assert bearer([(b"authorization", b"Bearer ")]) is None


async def test_a_model_off_the_keys_list_is_403_and_nothing_is_woken() -> None:
    router, engine = FakeRouter((LLAMA, QWEN)), FakeEngine()
    app = app_with(router, engine, Clock())
    ok = await call(app, "POST", "/v1/chat/completions", TEAM, json=CHAT)
    refused = await call(app, "POST", "/v1/chat/completions", TEAM, json={**CHAT, "model": "qwen"})
    assert ok.status_code == 200
    assert refused.status_code == 403
    err = error_of(refused)
    assert (err["type"], err["code"], err["param"]) == ("permission_error", "model_not_allowed", "model")
    assert [e.instance_id for e in router.acquired] == [router.acquired[0].instance_id]  # llama only


async def test_an_unknown_model_lists_only_the_keys_models() -> None:
    resp = await call(
        app_with(FakeRouter((LLAMA, QWEN)), FakeEngine(), Clock()),
        "POST",
        "/v1/completions",
        TEAM,
        json={"model": "nope", "prompt": "x"},
    )
    assert resp.status_code == 404
    assert "llama" in error_of(resp)["message"] and "qwen" not in error_of(resp)["message"]


async def test_models_lists_only_what_the_key_may_use() -> None:
    app = app_with(FakeRouter((LLAMA, QWEN)), FakeEngine(), Clock())
    team = {m["root"] for m in (await call(app, "GET", "/v1/models", TEAM)).json()["data"]}
    every = {m["root"] for m in (await call(app, "GET", "/v1/models", OPEN)).json()["data"]}
    hidden = await call(app, "GET", "/v1/models/qwen", TEAM)
    assert team == {"llama"} and every == {"llama", "qwen"}
    assert hidden.status_code == 404


async def test_over_the_keys_rate_is_429_with_retry_after_and_the_bucket_refills() -> None:
    clock = Clock()
    app = app_with(FakeRouter((LLAMA, QWEN)), FakeEngine(), clock)
    statuses = [(await call(app, "POST", "/v1/chat/completions", LIMITED, json=CHAT)).status_code for _ in range(2)]
    over = await call(app, "POST", "/v1/chat/completions", LIMITED, json=CHAT)
    clock.now += 1.0
    later = await call(app, "POST", "/v1/chat/completions", LIMITED, json=CHAT)
    assert statuses == [200, 200]
    assert over.status_code == 429 and over.headers["retry-after"] == "1"
    assert (error_of(over)["type"], error_of(over)["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert later.status_code == 200


async def test_health_needs_no_key() -> None:
    resp = await call(app_with(FakeRouter((LLAMA, QWEN)), FakeEngine(), Clock()), "GET", "/health", None)
    assert resp.status_code == 200


def test_keys_load_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - {{name: team-a, key: {TEAM}, models: [llama], rate_per_s: 5}}\n  - {{name: ops, key: {OPEN}}}\n"
    )
    table = load_keys(path, "sk-inline-000000, sk-inline-111111", ["llama", "qwen"])
    assert table is not None and len(table) == 4
    team = table.by_digest[digest(TEAM)]
    assert team.models == frozenset({"llama"}) and team.rate == Rate(5.0, 5.0)
    assert table.by_digest[digest("sk-inline-111111")].models is None
    assert load_keys(None, None, ["llama"]) is None  # off by default


def test_bad_key_files_name_the_entry_never_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - {{name: a, key: {TEAM}, models: [nope]}}\n  - {{name: b, key: {TEAM}}}\n"
        "  - {name: c, key: short}\n  - {name: d, key: sk-d-012345678, rate_per_s: -1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_keys(path, None, ["llama"])
    text = str(info.value)
    assert "keys[0] (a).models: not in the placements file: nope" in text
    assert "b has the same key as" in text and "keys[2] (c).key" in text and "keys[3] (d)" in text
    assert TEAM not in text and "sk-d-012345678" not in text
    with pytest.raises(ConfigError, match="cannot be read"):
        load_keys(tmp_path / "missing.yaml", None, ["llama"])


class NoInstances:
    def instances(self) -> list[InstanceView]:
        return []

    async def admin(self, instance_id: str, action: str) -> str:
        return "ok"


@pytest.mark.parametrize(
    ("header", "status"),
    [("Bearer adminkey-1", 200), ("bearer adminkey-1", 200), ("adminkey-1", 401), ("Basic adminkey-1", 401)],
)
async def test_the_admin_api_needs_the_bearer_scheme_in_any_case(header: str, status: int) -> None:
    app = Starlette(routes=admin_routes(NoInstances(), "adminkey-1"))
    t = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=t, base_url="http://proxy") as client:
        resp = await client.get("/admin/instances", headers={"authorization": header})
    assert resp.status_code == status


def test_the_admin_key_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "placements/example.yaml", "--admin-key", "secret-on-argv"]) == 2
    err = capsys.readouterr().err
    assert "--admin-key is no longer accepted" in err and "CHIMERA_ADMIN_KEY_FILE" in err
    assert "secret-on-argv" not in err


def test_secrets_never_reach_an_engines_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRETS:
        monkeypatch.setenv(name, "secret-value")
    assert not set(engine_environ(os.environ)) & SECRETS
    cfg = parse_config(
        {"models": [{"name": "m", "model_path": "meta-llama/Llama-3.2-1B", "placements": [{"gpus": [0]}]}]}
    )
    req = LaunchRequest(instance=cfg.instances[0], host=cfg.host, port=30001, nccl_port=40001)
    for engine in (SimEngine(), SGLangEngine(Env.read())):
        env = engine.launch_spec(req).env
        assert not set(env) & SECRETS and "secret-value" not in env.values()

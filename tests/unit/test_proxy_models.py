"""GET /v1/models and /v1/models/{id}: SGLang's ModelCard fields (``max_model_len``) for every
name and alias, OpenAI's retrieve through the official client, the 404 envelope."""

from __future__ import annotations

import dataclasses

import httpx2
import openai
import pytest

from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.sglang.api import max_model_len
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA, QWEN, SHAPE, FakeEngine, engine_transport, error_of, proxy

# qwen is started with a shorter context than its config's: the card says what SGLang serves
QWEN_SHORT = dataclasses.replace(QWEN, engine_args=("--context-length", "1024"))


def test_max_model_len_follows_context_length_flag() -> None:
    assert max_model_len(8192, ()) == 8192
    assert max_model_len(8192, ("--context-length", "2048")) == 2048
    assert max_model_len(8192, ("--context-length=4096", "--mem-fraction-static", "0.5")) == 4096
    assert max_model_len(8192, ("--context-length", "2048", "--context-length", "512")) == 512
    assert max_model_len(8192, ("--context-length",)) == 8192  # no value: SGLang's argparse refuses it


async def test_every_listed_id_has_max_model_len() -> None:
    router = FakeRouter((LLAMA, QWEN_SHORT))
    async with proxy(router, engine_transport(FakeEngine())) as client:
        data = (await client.get("/v1/models")).json()["data"]
    lens = {m["id"]: m["max_model_len"] for m in data}
    assert lens == {
        "llama": SHAPE.max_context,
        "llama-1b": SHAPE.max_context,
        "org/llama:latest": SHAPE.max_context,
        "qwen": 1024,
    }


async def test_retrieve_by_name_alias_and_slashed_alias() -> None:
    router = FakeRouter((LLAMA, QWEN_SHORT))
    async with proxy(router, engine_transport(FakeEngine())) as client:
        listed = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        for name in ("llama", "llama-1b", "org/llama:latest", "qwen"):
            resp = await client.get(f"/v1/models/{name}")
            assert resp.status_code == 200, resp.text
            assert resp.json() == listed[name]


async def test_retrieve_unknown_is_404_envelope() -> None:
    router = FakeRouter((LLAMA, QWEN))
    async with proxy(router, engine_transport(FakeEngine())) as client:
        resp = await client.get("/v1/models/gpt-9")
    assert resp.status_code == 404
    err = error_of(resp)
    assert err["code"] == "model_not_found" and err["param"] == "model" and err["src"] == "chimera"
    assert "gpt-9" in err["message"] and "llama" in err["message"]


async def test_official_client_retrieve() -> None:
    router = FakeRouter((LLAMA, QWEN_SHORT))
    app = create_app(router, ChimeraMetrics(), transport=engine_transport(FakeEngine()))
    async with app.router.lifespan_context(app):
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        client = openai.AsyncOpenAI(base_url="http://proxy/v1", api_key="x", http_client=http, max_retries=0)
        async with client:
            model = await client.models.retrieve("qwen")
            assert model.id == "qwen" and model.owned_by == "chimera"
            assert model.model_extra is not None and model.model_extra["max_model_len"] == 1024
            alias = await client.models.retrieve("org/llama:latest")
            assert alias.id == "org/llama:latest"
            listed = [m.id async for m in client.models.list()]
            assert listed == ["llama", "llama-1b", "org/llama:latest", "qwen"]
            with pytest.raises(openai.NotFoundError) as info:
                await client.models.retrieve("gpt-9")
            assert info.value.code == "model_not_found" and "gpt-9" in info.value.message

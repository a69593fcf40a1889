"""The envelope's convention (orchestrator/proxy/errors.py): ``type`` by HTTP status and
``code`` a snake_case string, whether chimera or the engine raised the error; the engine's
message kept word for word."""

from __future__ import annotations

import re

import httpx2
import openai
import orjson
import pytest

from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.errors import ProxyError, normalize_engine_error, status_code, status_type
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA, QWEN, FakeEngine, engine_transport

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")

CATALOGUE = [
    ProxyError.bad_request("bad", code="invalid_json"),
    ProxyError.model_not_found("x", ["llama"]),
    ProxyError.unavailable("waking", 3.0),
    ProxyError.deadline_unmeetable("model 'llama' is late", 1.0),
    ProxyError.engine_unreachable("llama@gpu0", OSError("refused")),
    ProxyError.engine_timeout("llama@gpu0", TimeoutError("read")),
    ProxyError.internal(),
    ProxyError(401, "key", code="invalid_admin_key"),
    ProxyError(403, "off", code="admin_disabled"),
]


@pytest.mark.parametrize("err", CATALOGUE, ids=lambda e: e.code)
def test_chimera_errors_follow_the_convention(err: ProxyError) -> None:
    body = orjson.loads(err.body())["error"]
    assert body["type"] == status_type(err.status)
    assert isinstance(body["code"], str) and SNAKE.match(body["code"])
    assert body["src"] == "chimera" or err.status in (502, 504)


@pytest.mark.parametrize(
    "status, body, code",
    [
        (
            400,
            b'{"object": "error", "message": "m", "type": "BadRequestError", "param": null, "code": 400}',
            "bad_request",
        ),
        (400, b'{"error": {"message": "m", "code": "context_length_exceeded"}}', "context_length_exceeded"),
        (404, b'{"detail": "m"}', "not_found"),
        (422, b'{"error": {"message": "m", "code": 422, "type": "BadRequestError"}}', "unprocessable_entity"),
        (499, b"m", "http_499"),
        (503, b'{"message": "m", "code": null}', "service_unavailable"),
    ],
)
def test_engine_errors_follow_the_convention(status: int, body: bytes, code: str) -> None:
    err = orjson.loads(normalize_engine_error(status, body))["error"]
    assert err == {"message": "m", "type": status_type(status), "param": None, "code": code, "src": "engine"}


def test_status_names() -> None:
    assert [status_code(s) for s in (400, 404, 405, 429, 500, 503, 599)] == [
        "bad_request",
        "not_found",
        "method_not_allowed",
        "too_many_requests",
        "internal_server_error",
        "service_unavailable",
        "http_599",
    ]
    assert [status_type(s) for s in (400, 401, 403, 404, 409, 429, 500, 502, 503)] == [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "invalid_request_error",
        "invalid_request_error",
        "rate_limit_error",
        "server_error",
        "server_error",
        "service_unavailable_error",
    ]


async def test_official_client_sees_one_convention() -> None:
    """chimera's 404 and the engine's 400 reach openai's error classes with the same fields."""
    engine = FakeEngine()
    engine.error = (
        400,
        b'{"object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "code": 400}',
    )
    app = create_app(FakeRouter((LLAMA, QWEN)), ChimeraMetrics(), transport=engine_transport(engine))
    async with app.router.lifespan_context(app):
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        client = openai.AsyncOpenAI(base_url="http://proxy/v1", api_key="x", http_client=http, max_retries=0)
        async with client:
            with pytest.raises(openai.NotFoundError) as missing:
                await client.completions.create(model="nope", prompt="x")
            with pytest.raises(openai.BadRequestError) as bad:
                await client.completions.create(model="llama", prompt="x", max_tokens=10)
    assert (missing.value.type, missing.value.code) == ("invalid_request_error", "model_not_found")
    assert (bad.value.type, bad.value.code) == ("invalid_request_error", "bad_request")
    assert isinstance(bad.value.body, dict) and bad.value.body["message"] == "max_tokens is too large"

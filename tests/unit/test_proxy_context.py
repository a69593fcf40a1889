"""A request certain to exceed its model's context is refused by the proxy itself (400
``context_length_exceeded``, orchestrator/proxy/context.py) before any hold or engine call; one
that may fit goes to the engine. Through the proxy app with a fake engine, as test_proxy.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from orchestrator.proxy.context import MAX_BYTES_PER_TOKEN, prompt_tokens_at_least, requested_new_tokens
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA, FakeEngine, engine_transport, error_of, proxy

CONTEXT = LLAMA.shape.max_context  # tiny-llama: 2048
SHORT = [{"role": "user", "content": "hi"}]


async def post(router: FakeRouter, engine: FakeEngine, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with proxy(router, engine_transport(engine)) as client:
        r = await client.post(path, json={"model": "llama", **body})
    return r.status_code, (error_of(r) if r.status_code >= 400 else r.json())


REFUSED = [
    ("/v1/chat/completions", {"messages": SHORT, "max_tokens": CONTEXT}, "max_tokens"),
    ("/v1/chat/completions", {"messages": SHORT, "max_completion_tokens": CONTEXT}, "max_completion_tokens"),
    # SGLang reads max_completion_tokens first: a small max_tokens does not save it
    ("/v1/chat/completions", {"messages": SHORT, "max_completion_tokens": CONTEXT, "max_tokens": 8}, None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": CONTEXT + 5}, "max_tokens"),
    ("/v1/completions", {"prompt": list(range(100)), "max_tokens": CONTEXT - 99}, "max_tokens"),
    ("/generate", {"input_ids": list(range(CONTEXT))}, None),  # the input alone: n >= context
    ("/generate", {"input_ids": list(range(10)), "sampling_params": {"max_new_tokens": CONTEXT - 9}}, None),
    # text: at least bytes / MAX_BYTES_PER_TOKEN tokens
    ("/generate", {"text": "=" * (MAX_BYTES_PER_TOKEN * CONTEXT)}, "text"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "é" * (MAX_BYTES_PER_TOKEN * CONTEXT // 2)}]},
        None,
    ),
    ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": CONTEXT}, None),  # every prompt of the batch
]


@pytest.mark.parametrize(("path", "body", "param"), REFUSED, ids=range(len(REFUSED)))
async def test_a_request_certain_to_exceed_the_context_is_refused_up_front(
    path: str, body: dict[str, Any], param: str | None
) -> None:
    router, engine = FakeRouter((LLAMA,)), FakeEngine()
    status, err = await post(router, engine, path, body)
    assert status == 400, err
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
    assert err["src"] == "chimera"
    assert "'llama'" in err["message"] and f"context of {CONTEXT} tokens" in err["message"]
    if param is not None:
        assert err["param"] == param
    assert router.acquired == [] and engine.seen == []  # no hold, no wake, no engine call


PASSED = [
    ("/v1/chat/completions", {"messages": SHORT, "max_tokens": CONTEXT - 1}),
    ("/v1/chat/completions", {"messages": SHORT}),  # no limit sent: SGLang checks the input only
    ("/v1/completions", {"prompt": list(range(100)), "max_tokens": CONTEXT - 100}),  # = context: SGLang clips
    ("/generate", {"input_ids": list(range(CONTEXT - 1))}),
    ("/generate", {"input_ids": list(range(10)), "sampling_params": {"max_new_tokens": CONTEXT - 10}}),
    # a long text may still be few tokens enough: only a lower bound counts, never chars/4
    ("/generate", {"text": "=" * (MAX_BYTES_PER_TOKEN * (CONTEXT - 1))}),
    ("/v1/completions", {"prompt": ["a", "b" * (MAX_BYTES_PER_TOKEN * CONTEXT)], "max_tokens": 8}),
    ("/v1/chat/completions", {"messages": SHORT, "max_tokens": "lots"}),  # the engine validates it
]


@pytest.mark.parametrize(("path", "body"), PASSED, ids=range(len(PASSED)))
async def test_a_request_that_may_fit_goes_to_the_engine(path: str, body: dict[str, Any]) -> None:
    router, engine = FakeRouter((LLAMA,)), FakeEngine()
    status, answer = await post(router, engine, path, body)
    assert status == 200, answer
    assert [p for p, _ in engine.seen] == [path]


async def test_the_context_length_flag_sets_the_limit() -> None:
    """``--context-length`` among the engine args is the context (as /v1/models reports it)."""
    small = dataclasses.replace(LLAMA, engine_args=("--context-length", "512"))
    router, engine = FakeRouter((small,)), FakeEngine()
    status, err = await post(router, engine, "/v1/chat/completions", {"messages": SHORT, "max_tokens": 512})
    assert status == 400 and "context of 512 tokens" in err["message"]
    status, _ = await post(router, engine, "/v1/chat/completions", {"messages": SHORT, "max_tokens": 511})
    assert status == 200


def test_bounds_read_every_prompt_form() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 600}, {"type": "image_url"}]}]}
    assert prompt_tokens_at_least("/v1/chat/completions", parts) == 3  # ceil(600 / 256)
    assert prompt_tokens_at_least("/v1/chat/completions", {"messages": []}) == 1
    assert prompt_tokens_at_least("/v1/completions", {"prompt": [[1, 2, 3], [4]]}) == 1
    assert prompt_tokens_at_least("/generate", {"input_ids": [1, 2], "text": "x" * 10_000}) == 2
    assert prompt_tokens_at_least("/generate", {"input_embeds": [[0.1]]}) is None
    assert prompt_tokens_at_least("/v1/completions", {"prompt": [True, None]}) is None
    assert requested_new_tokens("/v1/chat/completions", {"max_tokens": 0}) is None
    assert requested_new_tokens("/v1/completions", {"max_tokens": True}) is None
    assert requested_new_tokens("/generate", {"sampling_params": {"max_new_tokens": 7}}) == 7

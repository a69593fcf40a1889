"""The sim engine's sampling parameters through the proxy, driven by the official ``openai``
client: ``.parse()`` with a pydantic model, stop, seed, n, logprobs, tools, and the 400s SGLang
gives for what it refuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import httpx2
import openai
import pytest
from pydantic import BaseModel

from orchestrator.config import ModelSpec, Placement
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.shapes import load_shape
from simsglang.batcher import VirtualClock
from simsglang.server import SimSettings
from simsglang.server import create_app as create_sim
from simsglang.structured import value_for
from tests.unit.proxy_fakes import FakeRouter

LLAMA = ModelSpec(name="llama", model_path="tiny-llama", shape=load_shape("tiny-llama"), placements=(Placement((0,)),))
MSG: list[Any] = [{"role": "user", "content": "tell me about the weather"}]


class City(BaseModel):
    name: str
    population: int
    tags: list[str]
    kind: Literal["town", "city"]
    mayor: str | None


class Report(BaseModel):
    city: City
    score: float
    sunny: bool


@pytest.fixture
def metrics() -> ChimeraMetrics:
    return ChimeraMetrics()


@pytest.fixture
async def client(metrics: ChimeraMetrics) -> AsyncIterator[openai.AsyncOpenAI]:
    sim = create_sim(SimSettings.from_shape("tiny-llama", served_name="served-llama"), clock=VirtualClock())
    async with sim.router.lifespan_context(sim):
        app = create_app(FakeRouter((LLAMA,)), metrics, transport=httpx.ASGITransport(app=sim))
        async with app.router.lifespan_context(app):
            http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
            async with openai.AsyncOpenAI(
                base_url="http://proxy/v1", api_key="x", http_client=http, max_retries=0
            ) as c:
                yield c


async def test_parse_with_a_pydantic_model(client: openai.AsyncOpenAI) -> None:
    done = await client.beta.chat.completions.parse(model="llama", messages=MSG, response_format=Report)
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Report)
    assert choice.message.parsed.city.kind in ("town", "city")
    assert done.usage is not None and done.usage.completion_tokens > 5
    # json_object: any JSON object
    obj = await client.chat.completions.create(model="llama", messages=MSG, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)


async def test_parse_cut_short_by_max_tokens_is_a_length_finish(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        await client.beta.chat.completions.parse(model="llama", messages=MSG, response_format=Report, max_tokens=3)


async def test_stop_strings_end_the_output_before_them(client: openai.AsyncOpenAI) -> None:
    free = await client.chat.completions.create(
        model="llama", messages=MSG, max_tokens=40, extra_body={"ignore_eos": True}
    )
    text = free.choices[0].message.content or ""
    word = text.split()[4]
    for stop in (word, ["no-such-word", word]):
        done = await client.chat.completions.create(model="llama", messages=MSG, max_tokens=40, stop=stop)
        choice = done.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.content == text[: text.index(word)]
        assert (choice.model_extra or {})["matched_stop"] == word
    plain = await client.completions.create(model="llama", prompt="once upon", max_tokens=30, stop=word)
    assert word not in plain.choices[0].text


async def test_seed_gives_the_same_output_and_another_seed_another(client: openai.AsyncOpenAI) -> None:
    async def text(seed: int | None) -> str:
        done = await client.chat.completions.create(model="llama", messages=MSG, max_tokens=20, seed=seed)
        return done.choices[0].message.content or ""

    a, b, c = await text(7), await text(7), await text(8)
    assert a == b and a != c and a != await text(None)


async def test_n_gives_n_choices(client: openai.AsyncOpenAI) -> None:
    done = await client.chat.completions.create(
        model="llama", messages=MSG, max_tokens=12, n=2, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in done.choices] == [0, 1]
    assert done.choices[0].message.content != done.choices[1].message.content
    assert done.usage is not None and done.usage.completion_tokens == 24
    stream = await client.chat.completions.create(
        model="llama", messages=MSG, max_tokens=5, n=2, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    async for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
        if chunk.usage is not None:
            assert chunk.usage.completion_tokens == 10
    assert finishes == {0: "length", 1: "length"} and texts[0] and texts[1] and texts[0] != texts[1]


async def test_logprobs_shapes(client: openai.AsyncOpenAI) -> None:
    done = await client.chat.completions.create(
        model="llama", messages=MSG, max_tokens=6, logprobs=True, top_logprobs=3
    )
    lp = done.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 6
    assert "".join(t.token for t in lp.content) == done.choices[0].message.content
    for t in lp.content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob < 0
        assert t.bytes == list(t.token.encode())
    none = await client.chat.completions.create(model="llama", messages=MSG, max_tokens=3)
    assert none.choices[0].logprobs is None
    stream = await client.chat.completions.create(model="llama", messages=MSG, max_tokens=6, logprobs=True, stream=True)
    streamed = [
        t async for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert len(streamed) == 6 and all(t.top_logprobs == [] for t in streamed)
    comp = await client.completions.create(model="llama", prompt="once upon", max_tokens=5, logprobs=2)
    clp = comp.choices[0].logprobs
    assert clp is not None and clp.tokens is not None and len(clp.tokens) == 5
    assert "".join(clp.tokens) == comp.choices[0].text
    assert clp.top_logprobs is not None and all(len(t) == 2 for t in clp.top_logprobs)
    assert clp.token_logprobs is not None and len(clp.token_logprobs) == 5


TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "noop"}}])
async def test_tool_choice_required_or_named_is_a_tool_call(client: openai.AsyncOpenAI, choice: Any) -> None:
    done = await client.chat.completions.create(model="llama", messages=MSG, tools=TOOLS, tool_choice=choice)
    c = done.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content == ""
    calls = c.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    fn = calls[0].function  # type: ignore[union-attr]
    args = json.loads(fn.arguments)
    if choice == "required":
        assert fn.name == "get_weather" and args["unit"] in ("c", "f") and isinstance(args["city"], str)
    else:
        assert fn.name == "noop" and args == {}
    stream = await client.chat.completions.create(
        model="llama", messages=MSG, tools=TOOLS, tool_choice=choice, stream=True
    )
    deltas = [ch.choices[0] async for ch in stream if ch.choices]
    streamed = [t for d in deltas for t in d.delta.tool_calls or []]
    assert [t.function.name for t in streamed if t.function] == [fn.name]
    assert deltas[-1].finish_reason == "tool_calls"


async def test_tool_choice_auto_and_none_write_text(client: openai.AsyncOpenAI) -> None:
    for choice in ("auto", "none"):
        done = await client.chat.completions.create(model="llama", messages=MSG, tools=TOOLS, tool_choice=choice)
        assert done.choices[0].message.tool_calls is None and done.choices[0].message.content


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tool_choice": "required"}, "Tools cannot be empty if tool choice is set to required."),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "Tool 'nope' not found in tools list.",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "schema_ is required for json_schema response format request.",
        ),
    ],
)
async def test_refused_like_sglang(client: openai.AsyncOpenAI, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="llama", messages=MSG, **kwargs)
    assert message in str(info.value)


def test_schema_values_conform() -> None:
    schema = Report.model_json_schema()
    for seed in range(20):
        Report.model_validate(value_for(schema, seed))
    bounded = {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "integer", "minimum": 5, "maximum": 6}}
    assert all(len(v) == 3 and all(x in (5, 6) for x in v) for v in (value_for(bounded, s) for s in range(5)))
    assert value_for({"type": "string", "minLength": 30, "maxLength": 30}, 1).__len__() == 30


async def test_whole_answers_observe_tpot(client: openai.AsyncOpenAI, metrics: ChimeraMetrics) -> None:
    def count() -> float:
        return metrics.registry.get_sample_value("chimera_request_tpot_seconds_count", {"model": "llama"}) or 0.0

    await client.chat.completions.create(model="llama", messages=MSG, max_tokens=8, extra_body={"ignore_eos": True})
    assert count() == 1
    await client.chat.completions.create(model="llama", messages=MSG, max_tokens=1)  # one token: no TPOT
    assert count() == 1

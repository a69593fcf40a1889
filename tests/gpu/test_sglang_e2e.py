"""On a GPU host: `chimera-orch up --engine sglang` with stock SGLang servers (see conftest.py),
driven through the proxy with the official openai client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chimera_proc import Running
from tests.gpu.conftest import RESULTS

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model", ["tiny", "small"])
def test_openai_client_chat_completion_and_stream(chimera_gpu: Running, model: str) -> None:
    client = openai.OpenAI(base_url=f"{chimera_gpu.base}/v1", api_key="unused")
    t = time.monotonic()
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello world"}], max_tokens=8
    )
    RESULTS[f"{model}_chat_s"] = round(time.monotonic() - t, 3)
    assert chat.choices[0].message.content is not None
    assert chat.usage and chat.usage.completion_tokens > 0
    comp = client.completions.create(
        model=model, prompt="once upon a time", max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert comp.usage and comp.usage.completion_tokens == 8
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    RESULTS[f"{model}_answer"] = chat.choices[0].message.content


def test_metrics_show_chimera_and_engine_series(chimera_gpu: Running) -> None:
    text = httpx.get(f"{chimera_gpu.base}/metrics", timeout=10).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = [s for s in fams["chimera_requests"].samples if s.name == "chimera_requests_total"]
    assert {s.labels["model"] for s in reqs} >= {"tiny", "llama-1b"}
    engine = [n for n in fams if n.startswith("sglang:")]
    assert "sglang:num_running_reqs" in engine
    assert {s.labels["server"] for s in fams["sglang:num_running_reqs"].samples} >= {"tiny@gpu0", "llama-1b@gpu0"}
    RESULTS["sglang_families_reexposed"] = len(engine)

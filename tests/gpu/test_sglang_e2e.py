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


def test_openai_client_models_and_error_classes_against_stock_sglang(chimera_gpu: Running) -> None:
    """What clients' helpers rely on, through the proxy to stock SGLang: ``models.retrieve``,
    and the one error envelope for chimera's errors and the engine's alike (openai's classes
    from the status; ``code`` a snake_case string; the engine's message kept)."""
    client = openai.OpenAI(base_url=f"{chimera_gpu.base}/v1", api_key="unused", max_retries=0)
    card = client.models.retrieve("tiny")
    assert card.id == "tiny"
    assert isinstance(card.model_extra, dict) and int(card.model_extra["max_model_len"]) > 0
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert isinstance(missing.value.code, str)
    with pytest.raises(openai.BadRequestError) as certain:  # surely beyond the context: chimera's 400
        client.completions.create(model="tiny", prompt="x" * 64, max_tokens=10**7)
    assert certain.value.code == "context_length_exceeded"
    context = int(card.model_extra["max_model_len"])
    with pytest.raises(openai.BadRequestError) as bad:  # beyond it only once tokenized: SGLang's own 400
        client.completions.create(model="tiny", prompt="hello world " * 32, max_tokens=context - 8)
    assert isinstance(bad.value.code, str) and bad.value.code == bad.value.code.lower()
    assert bad.value.code != "context_length_exceeded"  # the engine's, passed on in the one envelope
    RESULTS["engine_400"] = {"code": bad.value.code, "message": str(bad.value.message)[:200]}


def test_new_series_count_real_requests(chimera_gpu: Running) -> None:
    """GPU-seconds by state, SLO outcomes and TPOT, after the requests of the tests above."""
    client = openai.OpenAI(base_url=f"{chimera_gpu.base}/v1", api_key="unused")
    list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
        )
    )
    text = httpx.get(f"{chimera_gpu.base}/metrics", timeout=10).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    gpu_s = [s for s in fams["chimera_gpu_seconds"].samples if s.name == "chimera_gpu_seconds_total"]
    assert sum(s.value for s in gpu_s if s.labels["model"] == "tiny") > 0
    slo = [s for s in fams["chimera_slo_requests"].samples if s.name == "chimera_slo_requests_total"]
    assert sum(s.value for s in slo if s.labels["model"] == "tiny") >= 1
    tpot = [s for s in fams["chimera_request_tpot_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in tpot if s.labels["model"] == "tiny") >= 1
    RESULTS["gpu_seconds_tiny"] = round(sum(s.value for s in gpu_s if s.labels["model"] == "tiny"), 3)

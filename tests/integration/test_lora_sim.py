"""End to end on the sim engine: LoRA adapters as models of their own, with the official openai
client. The base's server starts with --enable-lora; each adapter is listed, routed to the
base's server as ``<base>:<adapter>``, loaded on first use, and metered under its own name."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chimera_proc import start_chimera

pytestmark = pytest.mark.slow

PLACEMENTS = {
    "mode": "full",
    "host": {"gpus": 1, "gpu_memory_gb": 80},
    "models": [
        {
            "name": "base",
            "model_path": "tiny-llama",
            "placements": [{"gpus": [0]}],
            "lora": {"max_loras_per_batch": 2},
        },
        {"name": "sql", "base": "base", "adapter": "/adapters/sql", "slo": {"ttft_s": 5}},
        {"name": "chat", "base": "base", "adapter": "/adapters/chat", "aliases": ["chat-v1"]},
        {"name": "math", "base": "base", "adapter": "/adapters/math"},
    ],
}


def test_adapters_are_models_served_by_their_base(tmp_path: Path) -> None:
    run = start_chimera(tmp_path, PLACEMENTS, "sim", awake=["base"], timeout_s=60, env={"CHIMERA_SIM_SPEED": "0.02"})
    try:
        client = openai.OpenAI(base_url=f"{run.base}/v1", api_key="none", max_retries=0, timeout=30)
        listed = {m.id for m in client.models.list().data}
        assert {"base", "sql", "chat", "chat-v1", "math"} <= listed
        assert client.models.retrieve("sql").model_extra["state"] == "awake"  # its base's state

        def ask(model: str) -> str:
            out = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8
            )
            assert out.model == model or out.model.startswith("base:")
            content = out.choices[0].message.content
            assert content
            return content

        texts = {m: ask(m) for m in ("base", "sql", "chat", "math")}
        assert len(set(texts.values())) == 4, texts  # each adapter's own output, none the base's
        assert ask("sql") == texts["sql"]  # three adapters over two slots: sql was re-loaded
        assert ask("chat-v1") == texts["chat"]
        gen = httpx.post(
            f"{run.base}/generate",
            json={"model": "math", "text": "hello", "sampling_params": {"max_new_tokens": 4}},
            timeout=30,
        )
        assert gen.status_code == 200, gen.text  # /generate: the adapter travels as lora_path

        text = httpx.get(f"{run.base}/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        reqs: dict[str, float] = {}
        for s in fams["chimera_requests"].samples:
            if s.name == "chimera_requests_total":
                reqs[s.labels["model"]] = reqs.get(s.labels["model"], 0) + s.value
        assert reqs.get("sql", 0) >= 2 and reqs.get("chat", 0) >= 2 and reqs.get("math", 0) >= 2
        engine_log = next((tmp_path / "run").rglob("base-gpu0.log")).read_text()
        assert "--enable-lora --max-loras-per-batch 2 --max-loaded-loras 2" in engine_log
    finally:
        run.stop()


def test_adapters_through_every_proxy_process(tmp_path: Path) -> None:
    """``--proxies 3``: the workers route through the same Router as the primary, so an adapter
    asked on any process is loaded on its base's server and answers as itself."""
    run = start_chimera(
        tmp_path,
        PLACEMENTS,
        "sim",
        awake=["base"],
        timeout_s=90,
        env={"CHIMERA_SIM_SPEED": "0.02"},
        args=("--proxies", "3"),
    )
    try:
        for w in (run.run_dir / "proxy-1.log", run.run_dir / "proxy-2.log"):
            assert w.exists()

        def ask(model: str) -> tuple[int, str]:
            with httpx.Client(timeout=60) as c:  # a fresh connection: any of the three processes
                r = c.post(
                    f"{run.base}/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
                )
            return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = list(pool.map(ask, ["sql", "chat", "math"] * 8))
        assert [code for code, _ in got] == [200] * 24, got
        by_model: dict[str, set[str]] = {}
        for model, (_, text) in zip(["sql", "chat", "math"] * 8, got, strict=True):
            by_model.setdefault(model, set()).add(text)
        assert all(len(t) == 1 for t in by_model.values()), by_model  # each adapter always itself
        assert len({next(iter(t)) for t in by_model.values()}) == 3, by_model
    finally:
        run.stop()

"""End to end: `chimera-orch up` as a subprocess on the sim engine, driven with httpx and the
official openai client; shutdown must leave no engine process."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.live import activation
from tests.chimera_proc import Running, alive, chimera_cmd, start_chimera

pytestmark = pytest.mark.slow

ADMIN_KEY = "test-admin-key"
PLACEMENTS = {
    "host": {"gpus": 2, "gpu_memory_gb": 80},
    "models": [
        {
            "name": "tiny",
            "model_path": "tiny-llama",
            "aliases": ["tiny-alias"],
            "placements": [{"gpus": [0], "on": True}],
        },
        {
            "name": "llama-1b",
            "model_path": "meta-llama/Llama-3.2-1B-Instruct",
            "placements": [{"gpus": [0], "on": True, "kv_pool_gb": 4}],
        },
        {"name": "org/model:v1", "model_path": "llama-3.2-3b", "placements": [{"gpus": [1], "on": True}]},
        {"name": "lazy", "model_path": "tiny-llama", "placements": [{"gpus": [1], "on": False}]},
    ],
}


@pytest.fixture(scope="module")
def chimera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_chimera(
        tmp_path_factory.mktemp("e2e"),
        PLACEMENTS,
        "sim",
        awake=["tiny", "llama-1b", "org/model:v1"],
        parked=("lazy",),
        timeout_s=90,
        env={"CHIMERA_SIM_SPEED": "0.02", "CHIMERA_ADMIN_KEY": ADMIN_KEY},
    )
    yield run
    run.stop()


def test_models_lists_names_aliases_and_states(chimera: Running) -> None:
    data = httpx.get(f"{chimera.base}/v1/models").json()["data"]
    ids = [m["id"] for m in data]
    assert {"tiny", "tiny-alias", "llama-1b", "org/model:v1", "lazy"} <= set(ids)
    states = {m["id"]: m["state"] for m in data}
    assert states["tiny-alias"] == "awake" and states["lazy"] == "parked"


def test_chat_and_completion_non_streaming_with_usage(chimera: Running) -> None:
    r = httpx.post(
        f"{chimera.base}/v1/chat/completions",
        json={
            "model": "tiny-alias",
            "messages": [{"role": "user", "content": "hello world"}],
            "max_tokens": 8,
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] <= 8 and body["usage"]["prompt_tokens"] > 0
    r = httpx.post(
        f"{chimera.base}/v1/completions",
        json={
            "model": "org/model:v1",
            "prompt": "once upon a time",
            "max_tokens": 5,
            "ignore_eos": True,
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5


def test_streaming_is_sse_framed_and_ends_with_done(chimera: Running) -> None:
    frames = []
    with httpx.stream(
        "POST",
        f"{chimera.base}/v1/chat/completions",
        json={
            "model": "llama-1b",
            "messages": [{"role": "user", "content": "count"}],
            "max_tokens": 6,
            "ignore_eos": True,
            "stream": True,
        },
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_raw())
    frames = raw.decode().split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    chunks = [json.loads(f[len("data: ") :]) for f in frames[:-2]]
    assert all(f.startswith("data: ") for f in frames[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text


def test_native_generate_is_routed_by_model(chimera: Running) -> None:
    r = httpx.post(
        f"{chimera.base}/generate",
        json={
            "model": "tiny",
            "text": "hello",
            "sampling_params": {"max_new_tokens": 4, "ignore_eos": True},
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["completion_tokens"] == 4


def test_official_openai_client(chimera: Running) -> None:
    client = openai.OpenAI(base_url=f"{chimera.base}/v1", api_key="unused")
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.choices[0].message.content and chat.usage and chat.usage.total_tokens > 0
    stream = client.chat.completions.create(
        model="org/model:v1", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces)
    comp = client.completions.create(model="llama-1b", prompt="say", max_tokens=3)
    assert comp.choices[0].text is not None and comp.usage and comp.usage.completion_tokens <= 3
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "tiny" in str(exc.value)


def test_errors_use_the_openai_envelope(chimera: Running) -> None:
    r = httpx.post(f"{chimera.base}/v1/chat/completions", json={"model": "nope", "messages": []})
    assert r.status_code == 404
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and "llama-1b" in err["message"]
    r = httpx.post(
        f"{chimera.base}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "error" in r.json()
    assert "Traceback" not in r.text


def test_request_for_a_parked_model_wakes_it_and_is_served(chimera: Running) -> None:
    r = httpx.post(
        f"{chimera.base}/v1/completions", json={"model": "lazy", "prompt": "wake up", "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 200, r.text
    states = {m["id"]: m["state"] for m in httpx.get(f"{chimera.base}/v1/models").json()["data"]}
    assert states["lazy"] == "awake"


def test_admin_api_parks_and_wakes_with_the_key_only(chimera: Running) -> None:
    url = f"{chimera.base}/admin/instances"
    assert httpx.get(url).status_code == 401
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    listed = httpx.get(url, headers=auth).json()["instances"]
    assert {i["id"] for i in listed} >= {"tiny@gpu0", "lazy@gpu1"}
    r = httpx.post(f"{url}/tiny@gpu0/park", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["instance"]["state"] == "parked" and "freed" in r.json()["result"]
    r = httpx.post(f"{url}/tiny@gpu0/park", headers=auth, timeout=30)
    assert r.status_code == 409 and "parked" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/tiny@gpu0/wake", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["instance"]["state"] == "awake"
    assert httpx.post(f"{url}/nope/wake", headers=auth).status_code == 404


def test_activation_benchmark_runs_on_the_sim(chimera: Running) -> None:
    res = activation.run(
        chimera.base, ADMIN_KEY, ["llama-1b"], cycles=2, simulated=True, out=None, weights={"llama-1b": 2_471_000_000}
    )
    (m,) = res["models"]
    assert res["simulated"] is True and m["identical_outputs"] == 2
    assert m["park_s"]["p50"] > 0 and m["wake_s"]["p50"] > 0 and m["held_ttft_s"]["p50"] > 0
    assert m["freed_gib"]["min"] > 2 and m["wake_over_floor_p50"] > 0


def test_metrics_parse_and_count_requests(chimera: Running) -> None:
    httpx.post(f"{chimera.base}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}, timeout=30)
    text = httpx.get(f"{chimera.base}/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = [s for s in fams["chimera_requests"].samples if s.name == "chimera_requests_total"]
    assert any(s.labels["model"] == "tiny" and s.value >= 1 for s in reqs)
    assert "chimera_request_ttft_seconds" in fams and "chimera_request_e2e_seconds" in fams
    states = fams["chimera_instance_state"].samples
    assert any(s.labels["model"] == "tiny" and s.labels["state"] == "awake" and s.value == 1 for s in states)
    parks = {
        s.labels["reason"]
        for s in fams["chimera_parks"].samples
        if s.name == "chimera_parks_total" and s.labels["model"] == "lazy"
    }
    assert "warm_start" in parks
    assert any(
        s.value > 0
        for s in fams["chimera_park_freed_bytes"].samples
        if s.labels["model"] == "lazy" and s.name.endswith("_total")
    )
    assert "chimera_wake_seconds" in fams and "chimera_hold_seconds" in fams
    running = fams["sglang:num_running_reqs"].samples  # re-exposed from the engines
    assert {s.labels["server"] for s in running} >= {"tiny@gpu0", "llama-1b@gpu0"}


def test_engines_refuse_anyone_without_chimeras_key(chimera: Running) -> None:
    """Each engine was started with an API key (never on its command line): a direct call to
    its port is refused, while everything above went through chimera with the key."""
    key = (chimera.run_dir / "engine-auth.yaml").read_text().split('"')[1]
    engines = [psutil.Process(p).cmdline() for p in chimera.engine_pids()]
    engines = [c for c in engines if "simsglang" in c]
    assert len(engines) == 4
    for argv in engines:
        assert "--config" in argv and key not in " ".join(argv)
        url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
        for method, path in (("GET", "/model_info"), ("POST", "/pause_generation"), ("POST", "/generate")):
            r = httpx.request(method, url + path, json={}, timeout=5)
            assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"}), path
        assert httpx.get(url + "/model_info", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code == 200
    assert key not in chimera.log.read_text()


def test_zz_ctrl_c_stops_every_engine_process(chimera: Running) -> None:
    pids = chimera.engine_pids()
    assert len(pids) >= 4  # three `on` instances + the lazy one started above
    chimera.proc.send_signal(signal.SIGINT)
    assert chimera.proc.wait(timeout=60) == 0
    time.sleep(0.2)
    assert alive(pids) == [], f"orphans: {alive(pids)}\n{chimera.log.read_text()}"
    assert "Traceback" not in chimera.log.read_text()


def test_bad_placements_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"models": [{"name": "m", "model_path": "tiny-llama", "placements": [{"gpus": [7]}]}], "host": {"gpus": 2}}
        )
    )
    r = subprocess.run(chimera_cmd("up", str(bad), "--engine", "sim"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "models[0].placements[0].gpus: GPU 7 does not exist (this host has 0-1)" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_help_explains_every_flag() -> None:
    r = subprocess.run(chimera_cmd("up", "--help"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("--engine", "--host", "--port", "--run-dir", "--hold-timeout-s", "--log-level"):
        assert flag in r.stdout

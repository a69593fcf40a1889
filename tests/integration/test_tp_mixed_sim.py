"""End to end on the sim engine, mode full: a 70B served with TP 4 over GPUs 0-3, and a 1B model
on each of those GPUs beside it. ``up`` starts all five servers (the TP group's ranks share
their GPUs with the small servers), every model answers through the proxy with the official
openai client, and the TP 4 group parks (every rank's shard released) and wakes: by the admin
API and by a request held for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.slow

ADMIN_KEY = "test-admin-key"
BIG = "llama-70b"
BIG_ID = "llama-70b@gpu0+1+2+3"
SMALL = [f"small-{g}" for g in range(4)]
PLACEMENTS = {
    "mode": "full",
    "host": {"gpus": 4, "gpu_memory_gb": 80},
    "models": [
        {
            "name": BIG,
            "model_path": "meta-llama/Llama-3.3-70B-Instruct",
            "tp_size": 4,
            "placements": [{"gpus": [0, 1, 2, 3], "on": True}],
        },
        *(
            {"name": f"small-{g}", "model_path": "meta-llama/Llama-3.2-1B-Instruct", "placements": [{"gpus": [g]}]}
            for g in range(4)
        ),
    ],
}


@pytest.fixture(scope="module")
def chimera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_chimera(
        tmp_path_factory.mktemp("tp-mixed"),
        PLACEMENTS,
        "sim",
        awake=[BIG, *SMALL],
        timeout_s=120,
        env={"CHIMERA_SIM_SPEED": "0.02", "CHIMERA_ADMIN_KEY": ADMIN_KEY},
    )
    yield run
    run.stop()


def _ask(client: openai.OpenAI, model: str) -> None:
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.choices[0].message.content and chat.usage and chat.usage.completion_tokens > 0, model
    stream = client.completions.create(model=model, prompt="say", max_tokens=3, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices), model


def test_every_model_serves_beside_the_tp4_group(chimera: Running) -> None:
    admin = httpx.get(
        f"{chimera.base}/admin/instances", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).json()
    ids = {i["id"] for i in admin["instances"]}
    assert BIG_ID in ids and {f"small-{g}@gpu{g}" for g in range(4)} <= ids
    client = openai.OpenAI(base_url=f"{chimera.base}/v1", api_key="unused", timeout=60)
    for model in [BIG, *SMALL]:
        _ask(client, model)


def test_tp4_group_parks_and_wakes_beside_the_small_models(chimera: Running) -> None:
    url = f"{chimera.base}/admin/instances/{BIG_ID}"
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(f"{url}/park", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["instance"]["state"] == "parked" and "freed" in r.json()["result"]
    states = chimera.states()
    assert states[BIG] == "parked" and all(states[m] == "awake" for m in SMALL)
    client = openai.OpenAI(base_url=f"{chimera.base}/v1", api_key="unused", timeout=60)
    for model in SMALL:  # the small servers keep serving while the group is parked
        _ask(client, model)

    r = httpx.post(f"{url}/wake", headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["instance"]["state"] == "awake", r.text
    _ask(client, BIG)

    # parked again, then a request for it is held and wakes the whole group
    assert httpx.post(f"{url}/park", headers=auth, timeout=60).json()["instance"]["state"] == "parked"
    _ask(client, BIG)
    assert chimera.states()[BIG] == "awake"

"""A shape pool under ``chimera-orch up --ray`` on this CPU host: a one-node Ray cluster
(``ray.cluster_utils.Cluster``), a pool of one sim server serving two same-shape models by
re-targeting it, with the official openai client. The node's agent is told each re-target's probe
output: a park and wake of the server after a switch is checked against the new model's output
and passes (the old one would fail the wake and restart the server). Runs in CI (ray is in the
test extra): never skipped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray.cluster_utils import Cluster

from tests.chimera_proc import start_chimera
from tests.integration.test_pools_sim import checkpoints

pytestmark = pytest.mark.slow

ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "num_gpus": 1,
            "resources": {"node-a": 1},
            "object_store_memory": 80 * 2**20,
            "include_dashboard": False,
        },
    )
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _samples(base: str, family: str, sample: str) -> list[tuple[dict[str, str], float]]:
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=5).text)}
    return [(s.labels, s.value) for s in fams[family].samples if s.name == sample] if family in fams else []


def test_a_pool_re_targets_under_ray_and_a_wake_is_checked_against_the_new_weights(
    cluster: Cluster, tmp_path: Path
) -> None:
    p0, p1 = checkpoints(tmp_path, 2)
    placements = {
        "mode": "full",
        "host": {"gpu_memory_gb": 80},
        "models": [{"name": "p0", "model_path": p0, "pool": "tiny"}, {"name": "p1", "model_path": p1, "pool": "tiny"}],
        "pools": [{"name": "tiny", "servers": [{"gpus": [0]}]}],
    }
    run = start_chimera(
        tmp_path,
        placements,
        "sim",
        awake=[],
        timeout_s=90,
        env={"CHIMERA_SIM_SPEED": "0.02", "CHIMERA_ADMIN_KEY": ADMIN_KEY},
        args=("--ray", cluster.address),
    )
    try:
        client = openai.OpenAI(base_url=f"{run.base}/v1", api_key="none", max_retries=0, timeout=60)

        def ask(model: str) -> str:
            out = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
            )
            assert out.choices[0].message.content
            return out.choices[0].message.content

        first = {m: ask(m) for m in ("p0", "p1")}
        assert first["p0"] != first["p1"]  # two checkpoints, two outputs: p1 needed a re-target
        assert ask("p0") == first["p0"] and ask("p1") == first["p1"]  # and back, and again
        ok = sum(
            v
            for labels, v in _samples(run.base, "chimera_retargets", "chimera_retargets_total")
            if labels["outcome"] == "ok"
        )
        assert ok >= 3

        # the server holds p1's weights: park it, and ask p1 again. Its wake is checked against
        # p1's probe output, which the node's agent was told at the re-target.
        auth = {"authorization": f"Bearer {ADMIN_KEY}"}
        r = httpx.post(f"{run.base}/admin/instances/tiny-0@gpu0/park", headers=auth, timeout=60)
        assert r.status_code == 200 and r.json()["instance"]["state"] == "parked", r.text
        assert ask("p1") == first["p1"]
        restarts = _samples(run.base, "chimera_restarts", "chimera_restarts_total")
        assert sum(v for _, v in restarts) == 0, restarts
        after = sum(
            v
            for labels, v in _samples(run.base, "chimera_retargets", "chimera_retargets_total")
            if labels["outcome"] == "ok"
        )
        assert after == ok  # woken holding p1: no switch needed
    finally:
        run.stop()

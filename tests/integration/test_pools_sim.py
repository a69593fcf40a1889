"""End to end on the sim engine: a shape pool of two servers serves five same-shape models
(two of them sharing one checkpoint) by re-targeting (/update_weights_from_disk with its cache flush,
probe), with the official openai client. Each model's answers are its own weights' (the sim's
output depends on the weights path), before and after its server was re-targeted away and
back."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.shapes import shape_dir
from tests.chimera_proc import start_chimera

pytestmark = pytest.mark.slow


def checkpoints(tmp: Path, n: int) -> list[str]:
    """``n`` distinct same-shape checkpoints (config.json only: the sim reads no weights)."""
    out = []
    for i in range(n):
        d = tmp / "ckpt" / f"ft-{i}"
        d.mkdir(parents=True)
        shutil.copy(shape_dir("tiny-llama") / "config.json", d / "config.json")
        out.append(str(d))
    return out


def placements(paths: list[str]) -> dict[str, Any]:
    return {
        "mode": "full",
        "host": {"gpus": 1, "gpu_memory_gb": 80},
        "models": [
            *({"name": f"m{i}", "model_path": p, "pool": "tiny"} for i, p in enumerate(paths)),
            {"name": "m0-copy", "model_path": paths[0], "pool": "tiny"},  # shares m0's weights
        ],
        "pools": [{"name": "tiny", "servers": [{"gpus": [0]}, {"gpus": [0]}]}],
    }


def test_a_pool_of_two_servers_serves_five_models(tmp_path: Path) -> None:
    paths = checkpoints(tmp_path, 4)
    run = start_chimera(tmp_path, placements(paths), "sim", awake=[], timeout_s=60, env={"CHIMERA_SIM_SPEED": "0.02"})
    try:
        client = openai.OpenAI(base_url=f"{run.base}/v1", api_key="none", max_retries=0, timeout=60)
        listed = {m.id for m in client.models.list().data}
        assert listed == {"m0", "m1", "m2", "m3", "m0-copy"}  # the pool's servers are hidden

        def ask(model: str) -> str:
            out = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
            )
            content = out.choices[0].message.content
            assert content
            return content

        first = {m: ask(m) for m in ("m0", "m1", "m2", "m3")}
        assert len(set(first.values())) == 4, first  # four checkpoints, four outputs
        assert ask("m0-copy") == first["m0"]  # same weights, same output
        again = {m: ask(m) for m in ("m2", "m0", "m3", "m1")}  # every one re-targeted back
        assert again == {m: first[m] for m in again}

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="tiny-0", messages=[{"role": "user", "content": "x"}])
        text = httpx.get(f"{run.base}/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        ok = sum(
            s.value
            for s in fams["chimera_retargets"].samples
            if s.name == "chimera_retargets_total" and s.labels["outcome"] == "ok"
        )
        assert ok >= 4
        holds = [s for s in fams["chimera_server_holds"].samples if s.value == 1]
        assert len(holds) == 2 and {s.labels["server"] for s in holds} == {"tiny-0@gpu0", "tiny-1@gpu0"}
    finally:
        run.stop()

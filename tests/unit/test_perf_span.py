"""A TP server's work holds every GPU of its group (orchestrator/perf/span.py), and the admission
gate's backlog counts it on each of them (proxy/admission.py)."""

from __future__ import annotations

import pytest

from orchestrator.config import ModelSpec, parse_config
from orchestrator.deployment import derive
from orchestrator.perf import span
from orchestrator.perf.model import LatencyModel
from orchestrator.proxy.admission import AdmissionGate
from orchestrator.proxy.errors import ProxyError
from orchestrator.shapes import load_shape
from orchestrator.types import LoadSample
from tests.unit.control_fakes import Clock

BODY = {"prompt": "x" * 400, "max_tokens": 100}


def test_per_gpu_charges_a_tp_servers_seconds_to_every_gpu_it_spans() -> None:
    got = span.per_gpu([((0, 1, 2, 3), 0.5), ((1,), 0.2), ((4,), 0.1)])
    assert got == {0: 0.5, 1: 0.7, 2: 0.5, 3: 0.5, 4: 0.1}
    assert span.wait_s((0, 1, 2, 3), got) == 0.7  # the group starts when its busiest GPU is free
    assert span.wait_s((2,), got) == 0.5 and span.wait_s((5,), got) == 0.0 and span.wait_s((), got) == 0.0


CFG = parse_config(
    {
        "mode": "full",
        "host": {"gpus": 4},
        "models": [
            {
                "name": "big",
                "model_path": "llama-3.3-70b",
                "tp_size": 4,
                "slo": {"ttft_s": 30.0},
                "placements": [{"gpus": [0, 1, 2, 3]}],
            },
            *(
                {"name": f"s{g}", "model_path": "llama-3.2-1b", "slo": {"ttft_s": 1.0}, "placements": [{"gpus": [g]}]}
                for g in range(4)
            ),
        ],
    }
)


def sample(iid: str, waiting_tokens: int) -> LoadSample:
    return LoadSample(iid, 100.0, 0, 0, waiting_tokens, 0, 1 << 30, 64, 0.0)


def spec(name: str) -> ModelSpec:
    m = CFG.model(name)
    assert m is not None
    return m


async def test_a_small_models_queue_counts_the_prefill_of_the_tp_group_on_its_gpu() -> None:
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    tokens = 60_000
    gate.observe(sample("big@gpu0+1+2+3", tokens))
    backlog = LatencyModel(load_shape("llama-3.3-70b"), 4).prefill_time([(tokens, 0)])
    assert backlog > 1.0  # beyond the 1B's TTFT objective
    # the group's queue is GPU 0's; the 1B on GPU 2 has its own queue, the group's work holds it
    with pytest.raises(ProxyError) as exc:
        await gate.admit(spec("s2"), BODY, "s2@gpu2", 100.0)
    assert exc.value.status == 429 and f"+ {backlog:.2f} s behind other requests" in exc.value.message


async def test_the_tp_groups_queue_waits_for_the_busiest_gpu_it_spans() -> None:
    gate = AdmissionGate(derive(CFG), clock=Clock(100.0))
    tokens = 2_000_000
    gate.observe(sample("s3@gpu3", tokens))  # only the 1B on GPU 3 has work queued
    backlog = LatencyModel(load_shape("llama-3.2-1b")).prefill_time([(tokens, 0)])
    assert backlog > 30.0  # beyond the 70B's TTFT objective
    with pytest.raises(ProxyError) as exc:
        await gate.admit(spec("big"), BODY, "big@gpu0+1+2+3", 100.0)
    assert f"+ {backlog:.2f} s behind other requests" in exc.value.message
    # a 1B on GPU 1 shares no GPU with the 1B on GPU 3 but is in no queue with it: not held up
    await gate.admit(spec("s1"), BODY, "s1@gpu1", 100.0)

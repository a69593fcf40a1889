"""The cost model's per-server memory against what stock SGLang 0.5.17 held on the H200, and the
7-model set-up A that the refit lets stay awake (perf/cost.py, perf/calibration.py)."""

from __future__ import annotations

import pytest

from bench.gpu.experiment import load_setup
from bench.gpu.systems import derive as system_file
from bench.sim.fleet import make_model
from orchestrator.cli.plan import problems
from orchestrator.config import GIB, parse_config
from orchestrator.deployment import Deployment, crowded_cost, derive
from orchestrator.kv.ledger import MARGIN_BYTES
from orchestrator.perf import calibration as cal
from orchestrator.perf.cost import ACTIVATION_BYTES, runtime_bytes, server_cost
from orchestrator.perf.model import kv_bytes_per_token_per_gpu, req_to_token_bytes, request_slots
from orchestrator.shapes import load_shape

MIB = cal.MIB

# [measured] on the lent NVIDIA H200, stock SGLang 0.5.17 with chimera's flags (incl.
# --disable-prefill-cuda-graph), dummy weights, set-up A in mode full (docs/benchmarks.md "Fourth
# runs"; bench/results/gpu-experiment-h200-a4 and -a5): the KV ledger's NVML-per-process peak
# under load less the shim's mapped KV. Per shape: its --cuda-graph-max-bs as the deployment
# passed it, the shim's virtual range then (GiB, which sizes SGLang's request slots) and what the
# server held beside its KV (GiB, weights included).
MEASURED = [
    ("llama-3.2-1b", 256, 72.96, 5.83),
    ("llama-3.2-3b", 64, 69.28, 8.38),
    ("llama-3.1-8b", 64, 60.31, 17.08),
    ("qwen2.5-7b", 128, 61.08, 15.98),
]


@pytest.mark.parametrize(("shape_name", "bs", "virtual_gib", "held_gib"), MEASURED)
def test_runtime_is_at_or_just_above_each_measured_server(
    shape_name: str, bs: int, virtual_gib: float, held_gib: float
) -> None:
    shape = load_shape(shape_name)
    tokens = int(virtual_gib * GIB) // kv_bytes_per_token_per_gpu(shape, 1)
    beside_weights = held_gib * GIB - shape.weight_bytes
    fitted = runtime_bytes(shape, bs, tokens)
    # never below what was measured (the safe side), and within 60 MiB of it
    assert 0 <= fitted - beside_weights < 60 * MIB, (fitted - beside_weights) / MIB
    # the cost a server is charged awake: that, its weights and the activation reserve
    cost = server_cost(shape, 1, None, bs, tokens)
    assert cost.held_awake_bytes == shape.weight_bytes + fitted + ACTIVATION_BYTES


def test_runtime_grows_with_the_graphs_batch_sizes_and_the_request_slots() -> None:
    shape = load_shape("llama-3.2-1b")
    assert runtime_bytes(shape, 256, 10**6) - runtime_bytes(shape, 64, 10**6) == 192 * cal.CUDA_GRAPH_BYTES_PER_BS
    # a small pool gets SGLang's fewest slots (2,048), the upper bound its most (4,096): the
    # req_to_token pool of a 128k context is 1 GiB against 2 GiB
    small, unknown = runtime_bytes(shape, 64, 10_000), runtime_bytes(shape, 64)
    assert unknown - small == pytest.approx(1.0 * GIB, rel=0.01)
    # the 7B's 32k context: a quarter of that
    qwen = load_shape("qwen2.5-7b")
    assert runtime_bytes(qwen, 64) - runtime_bytes(qwen, 64, 10_000) == pytest.approx(0.25 * GIB, rel=0.01)


@pytest.mark.parametrize("shape_name", [m[0] for m in MEASURED] + ["qwen2.5-32b"])
@pytest.mark.parametrize("bs", [16, 64, 256])
def test_parked_never_exceeds_what_the_server_holds_awake_beside_its_weights(shape_name: str, bs: int) -> None:
    for tokens in (10_000, None):
        c = server_cost(load_shape(shape_name), 1, None, bs, tokens)
        assert c.parked_bytes <= runtime_bytes(load_shape(shape_name), bs, tokens)
        assert c.parked_bytes <= cal.CONTEXT_BYTES and c.awake_bytes >= load_shape(shape_name).weight_bytes


def _system(system: str) -> Deployment:
    return derive(parse_config(system_file(load_setup("A").raw, system)))


@pytest.mark.parametrize("system", ["static", "full"])
def test_seven_model_setup_a_fits_awake_and_starts_together(system: str) -> None:
    dep = _system(system)
    assert len(dep.instances) == 7 and not problems(dep)
    # every server awake with its KV floor (or fixed pool) beside the ledger's margin
    awake = sum(f.awake_bytes + (0 if f.fixed_pool_bytes else f.cost.kv_floor_bytes) for f in dep.instances.values())
    assert awake <= dep.gpu_bytes - MARGIN_BYTES, awake / GIB
    # the start-up budgets fit the GPU together: no start waits for another
    assert sum(f.start_budget_bytes for f in dep.instances.values()) <= dep.gpu_bytes
    assert not any(f.start_alone for f in dep.instances.values())


def test_the_deployment_charges_each_server_its_own_graphs_and_the_model_the_largest() -> None:
    dep = _system("full")
    by_bs = {f.spec.model.shape.name: f.cuda_graph_max_bs for f in dep.instances.values()}
    # seven servers whose weights nearly fill the GPU: each can expect a few GiB of KV at most
    # (deployment.kv_share), so each captures graphs for the least, 32 sequences (16 ran busy
    # servers eagerly on the H200: calibration.py EAGER_DECODE_FACTOR); sized from the shim's
    # virtual range they were 256 (1B), 64 (3B, 8B) and 128 (7B): 2 GiB
    assert by_bs == {"llama-3.2-1b": 32, "llama-3.2-3b": 32, "llama-3.1-8b": 32, "qwen2.5-7b": 32}
    for f in dep.instances.values():
        shape = f.spec.model.shape
        # 8 x 32 request slots, not the 2,048 SGLang derives from any pool: 1 -> 0.125 GiB at 128k
        assert f.max_running_requests == 256
        assert f.cost == server_cost(shape, 1, None, f.cuda_graph_max_bs, f.pool_tokens, 256)
        derived = server_cost(shape, 1, None, f.cuda_graph_max_bs, f.pool_tokens)
        saved = req_to_token_bytes(shape, request_slots(f.pool_tokens or 0, shape.max_context))
        saved -= req_to_token_bytes(shape, 256)
        assert derived.held_awake_bytes - f.cost.held_awake_bytes == saved
        assert f.cost.held_awake_bytes <= server_cost(shape).held_awake_bytes  # the upper bound
        assert dep.models[f.spec.model.name].cost == f.cost  # one server each here
    # in the 7 models' full set-up the costs sum to ~63.6 GiB awake with 256 request slots each;
    # 69.1 with the 2,048 SGLang derives from the KV they are sized for (68.8 with graphs up to 16
    # sequences), 72.6 with the request slots
    # SGLang derives from the virtual range (--max-running-requests not given), 74.5 with graphs
    # sized from it too, where the cost model before its refit said 81.2 (and 85 with the KV
    # floors: more than the GPU)
    total = sum(f.cost.held_awake_bytes for f in dep.instances.values())
    assert 63.4 * GIB < total < 63.8 * GIB


def test_the_simulators_fleets_are_charged_what_a_crowded_gpu_starts() -> None:
    """bench/sim charges every server ``crowded_cost``: what ``start_mem`` starts a server with on
    a GPU its neighbours fill. Set-up A's seven servers on one GPU are such servers: each is
    charged exactly that (its KV floor is the default), less than the cost model's upper bound."""
    dep = _system("full")
    for f in dep.instances.values():
        shape = f.spec.model.shape
        assert crowded_cost(shape) == f.cost
        assert make_model("m", shape.name).cost == f.cost
        assert f.cost.held_awake_bytes < server_cost(shape).held_awake_bytes

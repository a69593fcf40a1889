"""The sim's latency and memory model (pure functions) and its toy tokenizer."""

from __future__ import annotations

import pytest

from orchestrator.perf import calibration as cal
from orchestrator.perf.model import (
    LatencyModel,
    MemoryPlanError,
    kv_bytes_per_token_per_gpu,
    plan_memory,
    req_to_token_bytes,
    sglang_defaults,
)
from orchestrator.shapes import load_shape
from simsglang.memory import MemoryTags
from simsglang.tokenizer import NATURAL_MAX, NATURAL_MIN, ToyTokenizer

GIB = 1 << 30
L8B = load_shape("llama-3.1-8b")


def test_bigger_decode_batch_takes_longer() -> None:
    m = LatencyModel(L8B)
    times = [m.decode_time([1000] * bs) for bs in (1, 8, 64, 256)]
    assert times == sorted(times) and times[0] < times[-1]


def test_longer_contexts_make_decode_slower() -> None:
    m = LatencyModel(L8B)
    assert m.decode_time([100] * 32) < m.decode_time([4000] * 32)


def test_longer_prompt_takes_longer_to_prefill() -> None:
    m = LatencyModel(L8B)
    times = [m.prefill_time([(n, 0)]) for n in (16, 1024, 8192, 32768)]
    assert times == sorted(times) and times[0] < times[-1]
    # a prefill over a long cached prefix costs more attention than the same tokens alone
    assert m.prefill_time([(1024, 30000)]) > m.prefill_time([(1024, 0)])


def test_bigger_model_is_slower() -> None:
    small, big = LatencyModel(load_shape("llama-3.2-1b")), LatencyModel(L8B)
    assert small.decode_time([500]) < big.decode_time([500])
    assert small.prefill_time([(2000, 0)]) < big.prefill_time([(2000, 0)])


def test_tensor_parallel_divides_the_work_but_pays_all_reduces() -> None:
    shape = load_shape("llama-3.3-70b")
    tp2, tp4 = LatencyModel(shape, tp_size=2), LatencyModel(shape, tp_size=4)
    assert tp4.decode_time([1000] * 8) < tp2.decode_time([1000] * 8)
    assert tp4.decode_time([1000]) > tp2.decode_time([1000]) / 2  # not a perfect 2x


def test_speed_scales_every_duration_and_zero_means_no_compute() -> None:
    one, two, zero = (LatencyModel(L8B, speed=s) for s in (1.0, 2.0, 0.0))
    assert two.decode_time([100] * 4) == pytest.approx(2 * one.decode_time([100] * 4))
    assert zero.decode_time([100] * 4) == 0.0 and zero.prefill_time([(500, 0)]) == 0.0


def test_calibrated_8b_numbers_are_in_the_range_of_public_h100_reports() -> None:
    m = LatencyModel(L8B)
    # single-stream TPOT on an H100: 6-8 ms in public reports, 9.6 ms measured with stock SGLang
    # sharing the GPU with a 1B (bench/results/gpu-trace-h100; test_sim_calibration.py)
    assert 0.006 < m.decode_time([512]) < 0.011
    assert 0.02 < m.prefill_time([(1024, 0)]) < 0.12  # TTFT of a 1k prompt: tens of ms


def test_sglang_default_mem_fraction_for_an_80g_card() -> None:
    # server_args.py: (81920 - max(512 + 8192*1.5 + 128 + 256*2, 10240)) / 81920
    frac, chunk, max_bs = sglang_defaults(80.0, 1)
    assert (frac, chunk, max_bs) == (0.836, 8192, 256)
    assert sglang_defaults(80.0, 4)[2] == 512
    assert sglang_defaults(24.0, 1)[1] == 2048


def test_kv_capacity_is_what_is_left_of_the_static_fraction() -> None:
    plan = plan_memory(L8B, gpu_memory_gb=80.0, mem_fraction_static=0.5)
    room = int(80 * GIB * 0.5) - cal.STARTUP_USED_BYTES - L8B.weight_bytes
    assert plan.kv_capacity_tokens == room // L8B.kv_bytes_per_token
    # the measured H100 run of this shape at 0.5 got a 24.2 GiB pool (docs/gpu-testing.md)
    assert plan.kv_bytes / GIB == pytest.approx(24.2, abs=0.5)
    assert plan.weight_bytes == L8B.weight_bytes


def test_max_total_tokens_caps_the_pool() -> None:
    plan = plan_memory(L8B, max_total_tokens=1000)
    assert plan.kv_capacity_tokens == 1000 and plan.kv_bytes == 1000 * L8B.kv_bytes_per_token
    huge = plan_memory(L8B, max_total_tokens=10**12)  # SGLang takes the minimum
    assert huge.kv_capacity_tokens == plan_memory(L8B).kv_capacity_tokens


def test_tp_splits_weights_and_kv_heads_and_replicates_when_too_few() -> None:
    plan1, plan2 = plan_memory(L8B, tp_size=1), plan_memory(L8B, tp_size=2)
    assert plan2.weight_bytes == L8B.weight_bytes // 2
    assert kv_bytes_per_token_per_gpu(L8B, 2) == L8B.kv_bytes_per_token // 2
    assert plan2.kv_capacity_tokens > plan1.kv_capacity_tokens
    # 8 KV heads over 16 ranks: one (replicated) head per rank, not half a head
    assert kv_bytes_per_token_per_gpu(L8B, 16) == kv_bytes_per_token_per_gpu(L8B, 8)


def test_a_model_that_cannot_fit_fails_like_sglang_at_startup() -> None:
    with pytest.raises(MemoryPlanError, match="Not enough memory"):
        plan_memory(load_shape("llama-3.3-70b"), tp_size=1)
    assert plan_memory(load_shape("llama-3.3-70b"), tp_size=2).kv_capacity_tokens > 0


def test_max_running_requests_follows_sglangs_formula() -> None:
    tiny = load_shape("tiny-llama")
    assert plan_memory(tiny, max_total_tokens=4096).max_running_requests == 2048
    assert plan_memory(tiny).max_running_requests == 4096
    assert plan_memory(tiny, max_running_requests=7).max_running_requests == 7


def test_memory_tags_release_and_resume_by_tag() -> None:
    tags = MemoryTags(plan_memory(L8B))
    awake = tags.resident_bytes()
    assert tags.release(["weights", "cuda_graph"]) == ["weights", "cuda_graph"]
    dropped = tags.plan.weight_bytes + tags.plan.cuda_graph_bytes
    assert tags.resident_bytes() == awake - dropped
    assert not tags.can_serve
    assert tags.release([]) == ["kv_cache"]  # empty = all tags; already released ones stay
    # the context: the parked cost's (cost.py), never above the runtime beside the graphs
    plan = tags.plan
    assert tags.resident_bytes() == plan.context_bytes
    assert plan.context_bytes == min(
        cal.CONTEXT_BYTES, cal.RUNTIME_BYTES + req_to_token_bytes(L8B, plan.max_running_requests)
    )
    assert tags.resume(None) == ["weights", "cuda_graph", "kv_cache"]
    assert tags.resident_bytes() == awake and tags.can_serve and tags.weights_intact
    with pytest.raises(ValueError, match="unknown memory tags"):
        tags.release(["weight"])


def test_release_without_memory_saver_frees_nothing_and_without_backup_loses_weights() -> None:
    plan = plan_memory(L8B)
    no_saver = MemoryTags(plan, memory_saver=False)
    assert no_saver.release(None) == []
    assert no_saver.resident_bytes() == MemoryTags(plan).resident_bytes()
    no_backup = MemoryTags(plan, weights_cpu_backup=False)
    no_backup.release(["weights"])
    no_backup.resume(["weights"])
    assert not no_backup.weights_intact


def test_park_and_wake_times_match_the_measured_8b_run() -> None:
    m, plan = LatencyModel(L8B), plan_memory(L8B)
    tags = ["weights", "cuda_graph", "kv_cache"]
    assert 0.3 < m.resume_time(plan, tags) < 0.7  # measured 0.40 s with TMS_RETAIN_CPU_BACKUP=1
    assert 0.3 < m.release_time(plan, tags, first=False) < 0.7  # measured 0.37 s
    assert 8.0 < m.release_time(plan, tags, first=True) < 12.0  # measured 8.3-9.8 s
    assert m.resume_time(plan, ["kv_cache"]) < 0.05  # KV pages come back empty


def test_tokenizer_output_is_a_deterministic_function_of_the_prompt() -> None:
    tok = ToyTokenizer()
    ids = tok.encode("Hello, world! How are you?")
    assert ids == ToyTokenizer().encode("Hello, world! How are you?") and len(ids) == 8
    a, b = tok.plan(ids, 1000, False), tok.plan(ids, 1000, False)
    assert a == b and a.tokens(0, 5) == b.tokens(0, 5)
    assert tok.plan(tok.encode("something else"), 1000, False).tokens(0, 5) != a.tokens(0, 5)
    assert tok.decode(a.tokens(0, 3)).count(" ") >= 2


def test_natural_length_is_capped_and_ignore_eos_gives_exactly_max_tokens() -> None:
    tok = ToyTokenizer()
    for text in ("a", "bb cc", "the quick brown fox", "1 2 3 4 5"):
        natural = tok.plan(tok.encode(text), 10**6, False)
        assert NATURAL_MIN <= natural.length <= NATURAL_MAX and natural.finish == "stop"
        assert natural.finish_reason() == {"type": "stop", "matched": 2}
        capped = tok.plan(tok.encode(text), 5, False)
        assert capped.length == 5 and capped.finish_reason() == {"type": "length", "length": 5}
        assert tok.plan(tok.encode(text), 700, True).length == 700


def test_lost_weights_change_the_output() -> None:
    tok = ToyTokenizer()
    ids = tok.encode("same prompt")
    good, bad = tok.plan(ids, 20, True), tok.plan(ids, 20, True, weights="garbage")
    assert good.tokens(0, 20) != bad.tokens(0, 20)

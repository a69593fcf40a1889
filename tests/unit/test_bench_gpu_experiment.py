"""bench/gpu: the systems derived from a set-up, and the measures of the one-GPU experiment."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bench.client.record import RequestRecord
from bench.gpu import budget, des, measure, mps
from bench.gpu.experiment import (
    LMSYS_RATES,
    REFERENCE_SETUPS,
    default_duration,
    default_rates,
    default_trace,
    load_setup,
    trace_for,
)
from bench.gpu.systems import SYSTEMS, derive, served
from bench.sim.baselines import FixedColocation
from bench.sim.fleet import make_model
from bench.sim.simulator import Simulator
from orchestrator import deployment
from orchestrator.cli.main import main as cli_main
from orchestrator.config import GIB, Yaml12Loader, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
SETUP_B = yaml.load((ROOT / "bench/gpu/placements/setup-b.yaml").read_text(), Loader=Yaml12Loader)


def test_setups_fit_one_80_gb_gpu_and_b_weights_exceed_it() -> None:
    for name in ("setup-a.yaml", "setup-b.yaml"):
        cfg = load_config(ROOT / "bench/gpu/placements" / name)
        assert cfg.gpu_count == 1 and cfg.host.gpu_memory_gb == 80 and len(cfg.models) >= 6
    b = load_config(ROOT / "bench/gpu/placements/setup-b.yaml")
    assert sum(m.shape.weight_bytes for m in b.models) > 80e9


def test_every_system_is_a_valid_file_and_static_drops_what_does_not_start() -> None:
    off = [m["name"] for m in SETUP_B["models"] if not m["placements"][0]["on"]]
    for system in SYSTEMS:
        cfg = parse_config(derive(SETUP_B, system))
        names = [m.name for m in cfg.models]
        assert names == served(SETUP_B, system)
        assert (set(off) & set(names) == set()) == (system in ("static", "elastic"))
    swap = parse_config(derive(SETUP_B, "swap"))
    assert swap.mode == "full" and swap.scheduler.max_awake_per_gpu == 1
    assert [i.placement.on for i in swap.instances].count(True) == 1
    assert all(i.placement.kv_pool_gb is None for i in parse_config(derive(SETUP_B, "elastic")).instances)
    assert all(i.placement.kv_pool_gb for i in parse_config(derive(SETUP_B, "static")).instances)
    full = derive(SETUP_B, "full")
    assert [m["name"] for m in full["models"]] == [m["name"] for m in SETUP_B["models"]]


def test_gpu_sharing_is_set_alike_in_every_system_and_refused_by_the_simulator(tmp_path: Path) -> None:
    for system in SYSTEMS:
        assert parse_config(derive(SETUP_B, system)).host.gpu_sharing == "timeslice"  # the file's
        cfg = parse_config(derive(SETUP_B, system, "mps"))
        assert cfg.host.gpu_sharing == "mps" and cfg.host.gpu_memory_gb == 80  # the rest of host kept
    from bench.gpu.experiment import main as experiment_main

    argv = ["--engine", "des", "--system", "full", "--gpu-sharing", "mps", "--out", str(tmp_path / "x")]
    assert experiment_main(argv) == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("setup", ["setup-a.yaml", "setup-b.yaml", "setup-prism18.yaml", "setup-prism9.yaml"])
def test_only_static_is_capped_at_the_static_pools(setup: str) -> None:
    """In modes elastic and full ``kv_pool_gb`` is the shim's ceiling: the systems that move KV
    may each grow past their static share (a ceiling of the static pool made full no better)."""
    raw = yaml.load((ROOT / "bench/gpu/placements" / setup).read_text(), Loader=Yaml12Loader)
    static = {i.id: i.placement.kv_pool_gb for i in parse_config(derive(raw, "static")).instances}
    for system in ("swap", "elastic", "full"):
        dep = deployment.derive(parse_config(derive(raw, system)))
        for iid, pool_gb in static.items():  # a ceiling is per GPU, a pool over the TP group
            facts = dep.instances[iid]
            assert pool_gb is not None and facts.ceiling_bytes > 1.5 * pool_gb * GIB / facts.spec.model.tp_size


@pytest.mark.parametrize(("setup", "gpus", "models"), [("prism18", 8, 18), ("prism9", 4, 9)])
def test_prism_setups_hold_the_mix_and_static_pools_fit_every_gpu(setup: str, gpus: int, models: int) -> None:
    """Issue 18's set-ups: 1B-70B with the 70B at TP 4; `check` and `plan` accept them, and the
    static system's fixed pools beside every model's awake costs fit each 80 GB GPU."""
    path = ROOT / f"bench/gpu/placements/setup-{setup}.yaml"
    assert cli_main(["check", str(path)]) == 0 and cli_main(["plan", str(path)]) == 0
    raw = load_setup(setup).raw
    cfg = parse_config(raw)
    assert (cfg.gpu_count, len(cfg.models), cfg.host.gpu_memory_gb) == (gpus, models, 80)
    assert {m.shape.name for m in cfg.models} >= {"llama-3.3-70b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"}
    assert [m.tp_size for m in cfg.models if m.shape.name == "llama-3.3-70b"] == [4]
    dep = deployment.derive(parse_config(derive(raw, "static")))
    held = dict.fromkeys(range(gpus), 0)
    for f in dep.instances.values():
        for g in f.spec.placement.gpus:
            held[g] += f.awake_bytes
    # pressed, as set-up A: the pools were sized against the cost model before its refit to the
    # H200's measured footprints, which left each GPU 2-3 GiB more (perf/calibration.py), and
    # before the servers' request slots were sized by their graphs (up to 0.9 GiB a server more)
    assert all(5 * GIB < dep.gpu_bytes - b < 15 * GIB for b in held.values()), held
    for system in SYSTEMS:  # every derived file is valid, and `plan` accepts it
        assert parse_config(derive(raw, system)).gpu_count == gpus


def test_swap_wakes_one_model_per_gpu_and_a_tp_model_takes_all_its_gpus() -> None:
    swap = parse_config(derive(load_setup("prism18").raw, "swap"))
    awake = [i for i in swap.instances if i.placement.on]
    per_gpu = [g for i in awake for g in i.placement.gpus]
    assert sorted(per_gpu) == list(range(8))  # each GPU exactly once
    assert awake[0].model.name == "llama-70b" and awake[0].placement.gpus == (0, 1, 2, 3)
    p9 = parse_config(derive(load_setup("prism9").raw, "swap"))
    assert [i.model.name for i in p9.instances if i.placement.on] == ["llama-70b"]
    assert [i.placement.on for i in parse_config(derive(SETUP_B, "swap")).instances].count(True) == 1


def test_max_rate_at_99_stops_at_the_first_miss() -> None:
    assert measure.max_rate_at([(4.0, 0.995), (2.0, 1.0), (8.0, 0.9), (16.0, 1.0)]) == 4.0
    assert measure.max_rate_at([(2.0, 0.5), (4.0, 1.0)]) is None
    assert measure.max_rate_at([(2.0, None)]) is None


def test_time_parked_and_counter_deltas() -> None:
    snaps = [
        {"t_s": 0.0, "states": {"a": {"state": "parked"}, "b": {"state": "awake"}}},
        {"t_s": 2.0, "states": {"a": {"state": "awake"}, "b": {"state": "parked"}}},
        {"t_s": 5.0, "states": {}},
    ]
    assert measure.time_parked(snaps) == {"a": 2.0, "b": 3.0}
    text = """# TYPE chimera_wake_seconds histogram
chimera_wake_seconds_bucket{le="+Inf",model="a"} %d
chimera_wake_seconds_count{model="a"} %d
chimera_wake_seconds_sum{model="a"} 1.0
# TYPE chimera_hold_seconds histogram
chimera_hold_seconds_bucket{le="0.05",model="a"} %d
chimera_hold_seconds_count{model="a"} %d
chimera_hold_seconds_sum{model="a"} 1.0
# TYPE chimera_parks_total counter
chimera_parks_total{model="a",reason="make_room"} %d
# TYPE chimera_requests_total counter
chimera_requests_total{model="a",route="/v1/completions",status="429"} %d
"""
    before = measure.counters(text % (1, 1, 10, 10, 0, 0))
    after = measure.counters(text % (4, 4, 15, 18, 2, 5))
    d = measure.chimera_deltas(before, after)
    assert d == {"wakes": 3, "parks": 2, "parks_by_reason": {"make_room": 2}, "held": 3, "shed_429": 5}


def test_des_static_serves_every_resident_model_on_the_one_gpu_with_its_fixed_pool() -> None:
    """static-partition gives each model a whole GPU, so on one GPU it served one of B's four
    resident models; the experiment's static colocates them all with their files' pools."""
    setup = load_setup("B")
    ctl = des.static_pools(parse_config(setup.raw), served(setup.raw, "static"))
    assert set(ctl.pools) == {"llama-1b-a", "llama-3b-a", "llama-8b-a", "qwen-7b-a"}
    assert ctl.pools["llama-8b-a"] == ((0,), 5 * GIB)
    doc = des.run(setup, "static", "synthetic", [2.0], 30.0, 42, trace_for)
    per_model = doc["rates"][0]["per_model"]
    for m in ctl.pools:
        assert per_model[m]["completed"] == per_model[m]["requests"] > 0, m
    for m in doc["unserved"]:
        assert per_model.get(m, {}).get("completed", 0) == 0
    assert doc["rates"][0]["chimera"]["counters"]["memory_violations"] == 0
    # each server's graphs as chimera starts it, or one size for all (a live run's)
    started = deployment.derive(parse_config(derive(setup.raw, "static"))).instances.values()
    assert doc["cuda_graph_max_bs"] == {f.spec.model.name: f.cuda_graph_max_bs for f in started}
    assert (
        des.run(setup, "static", "synthetic", [2.0], 5.0, 42, trace_for, cuda_graph_max_bs=16)["cuda_graph_max_bs"]
        == 16
    )


def test_des_runs_the_sweep_on_one_fleet_as_live() -> None:
    """One simulated clock for the whole sweep: each rate's records carry its own ids and times
    from its start, its counters are its own, and the fleet starts as the file's `on` flags."""
    setup = load_setup("B")
    out: list[list[RequestRecord]] = []
    doc = des.run(setup, "full", "synthetic", [1.0, 2.0], 30.0, 42, trace_for, "h200", records_out=out)
    assert doc["one_fleet"] is True and len(out) == 2
    for i, (rate, recs) in enumerate(zip((1.0, 2.0), out, strict=True)):
        trace = trace_for(setup, "synthetic", rate, 30.0, 42)
        assert sorted(r.id for r in recs) == sorted(r.id for r in trace)
        sent = [r for r in recs if r.route == "des"]
        assert sent and all(0.0 <= r.arrival_s <= 30.0 for r in sent)
        assert doc["rates"][i]["trace_digest"] == measure.digest(trace)
        counters = doc["rates"][i]["chimera"]["counters"]
        assert counters["decisions"] > 0 and min(counters.values()) >= 0
    # the models of `on: false` placements were parked at the start: the first request of one
    # of them waits for a wake in the first rate
    first = doc["rates"][0]
    off = [m["name"] for m in setup.raw["models"] if not all(p.get("on", True) for p in m["placements"])]
    asked = [m for m in off if first["per_model"].get(m, {}).get("requests", 0)]
    assert asked and first["chimera"]["wakes"] >= 1


def test_chimera_in_the_simulator_starts_with_the_models_it_is_told_awake() -> None:
    from bench.sim.chimera import Chimera, ChimeraOptions

    models = {n: make_model(n, "llama-3.2-1b", 1) for n in ("a", "b")}
    ctl = Chimera({"a": 1.0, "b": 1.0}, 400.0, ChimeraOptions(awake_at_start=frozenset({"b"})))
    sim = Simulator(models, 1, 80 * GIB, ctl)
    sim.run([])
    states = {s.model.name: s.state.value for s in sim.servers.values()}
    assert states == {"a": "parked", "b": "awake"}
    hot = Chimera({"a": 1.0, "b": 1.0}, 400.0)  # by default the policy wakes the hot set: both fit
    sim = Simulator(models, 1, 80 * GIB, hot)
    sim.run([])
    assert {s.state.value for s in sim.servers.values()} == {"awake"}


def test_fixed_colocation_shares_what_is_left_among_models_without_a_pool() -> None:
    models = {n: make_model(n, "llama-3.2-1b", 1) for n in ("a", "b", "c")}
    ctl = FixedColocation({"a": ((0,), 2 * GIB), "b": ((0,), None), "c": ((0,), None)})
    sim = Simulator(models, 1, 80 * GIB, ctl)
    sim.run([])
    per_token = models["a"].cost.kv_bytes_per_token
    assert ctl.home["a"].kv_limit == 2 * GIB // per_token
    assert ctl.home["b"].kv_limit == ctl.home["c"].kv_limit > ctl.home["a"].kv_limit
    assert sim.used_bytes(0) <= 80 * GIB
    assert sim.counters.memory_violations == 0


def test_a_rate_runs_while_its_arrivals_a_timeout_and_the_stop_fit() -> None:
    # the smoke run's case: ~100 s left after rate 4 and a 40 s duration: rate 12 now runs
    assert budget.rate_timeout(100.0, 40.0, 52.6) == 100.0 - budget.STOP_S - 40.0
    assert budget.rate_timeout(200.0, 40.0, 52.6) == 52.6  # room to spare: the SLO bound
    assert budget.rate_timeout(40.0 + budget.STOP_S + 9.0, 40.0, 52.6) is None  # < 10 s to answer
    assert budget.rate_timeout(60.0, 40.0, 5.0) == 5.0  # a short timeout asked for is kept


def test_slo_bound_is_the_most_lenient_models_joint_slo() -> None:
    setup = load_setup("A")
    assert budget.slo_bound_s(setup.slos, 511) == pytest.approx(1.5 + 510 * 0.1)
    assert budget.slo_bound_s({"a": (1.0, None)}, 511) == math.inf


def test_default_sweeps_of_two_systems_fit_one_device_command() -> None:
    """The runbook's pairs (docs/benchmarks.md): four rates of 30 s each, fleet start at the
    slowest measured (120 s on the H200), within one command's 570 s."""
    for setup in ("A", "B"):
        for system in SYSTEMS:
            rates = default_rates(setup, system, "synthetic")
            assert len(rates) == 4 and rates == sorted(rates)
            assert 2 * budget.sweep_s(120.0, len(rates), 30.0, 3.0) <= budget.COMMAND_S
    assert default_rates("B", "full", "lmsys") == LMSYS_RATES


def test_reference_setups_replay_lmsys_at_scale_1_and_one_system_fits_one_command() -> None:
    """Issue 18: one device command per system: the estimated multi-GPU fleet start, the trace's
    first 300 s at its own rate, the last answers and the stop fit the command's 570 s."""
    for setup in REFERENCE_SETUPS:
        assert load_setup(setup.lower()).name == setup
        assert default_trace(setup) == "lmsys" and default_rates(setup, "full", "lmsys") == [1.0]
        duration = default_duration(setup, "lmsys")
        assert budget.sweep_s(budget.BOOT_MULTI_GPU_S, 1, duration, 3.0) <= budget.COMMAND_S
        left = budget.COMMAND_S - budget.BOOT_MULTI_GPU_S
        assert budget.rate_timeout(left, duration, 156.0) is not None  # the rate is not skipped
    assert default_trace("A") == "synthetic" and default_duration("A", "lmsys") == 30.0
    assert default_rates("B", "full", "lmsys") == LMSYS_RATES
    reqs = trace_for(load_setup("prism18"), "lmsys", 1.0, 300.0, 42)
    assert 600 <= len(reqs) <= 900 and max(r.arrival_s for r in reqs) < 300.0  # ~2.5 req/s
    assert len({r.model for r in reqs}) == 18


def test_mps_pairs_compare_together_with_alone_and_mps_with_time_slicing() -> None:
    def stats(tpot: float, tps: float) -> dict:
        return {"tpot_s": {"p50": tpot}, "tokens_per_s": tps}

    alone = {m: stats(0.01 if m.startswith("8b") else 0.004, 100.0) for m in mps.SERVERS}
    together = {f"{a}+{b}": {a: stats(0.02, 60.0), b: stats(0.02, 60.0)} for a, b in mps.PAIRS}
    faster = {p: {m: stats(0.015, 80.0) for m in v} for p, v in together.items()}
    doc = {
        "simulated": False,
        "output": 128,
        "modes": {
            "timeslice": {"batches": {"4": {"alone": alone, "together": together}}},
            "mps": {"batches": {"4": {"alone": alone, "together": faster}}},
        },
    }
    rows = {(r["mode"], r["pair"]): r for r in mps.pair_rows(doc)}
    r = rows[("timeslice", "1b-a+8b-a")]
    assert r["slowdown_1b-a"] == pytest.approx(5.0) and r["slowdown_8b-a"] == pytest.approx(2.0)
    assert r["tokens_per_s_together"] == 120.0 and r["tokens_per_s_alone_sum"] == 200.0
    assert rows[("mps", "8b-a+8b-b")]["mps_over_timeslice"] == pytest.approx(160.0 / 120.0)
    assert "stock SGLang" in mps.table_text(doc) and len(mps.table_text(doc).splitlines()) == 2 + 6


def test_report_sets_full_against_static_and_swap_at_each_rate() -> None:
    """Issue 18's targets are joint attainment ratios at one rate (the trace's own)."""
    from bench.gpu import report

    def run(system: str, joints: dict[float, float]) -> dict:
        pts = [
            {"rate": r, "overall": {"attainment": {"joint": j}, "goodput": {"requests_per_s": 1.0}}}
            for r, j in joints.items()
        ]
        return {"setup": "PRISM18", "trace": "lmsys", "engine": "des", "system": system, "rates": pts}

    runs = [run("static", {1.0: 0.4, 2.0: 0.0}), run("swap", {1.0: 0.5, 2.0: 0.2}), run("full", {1.0: 0.9, 2.0: 0.6})]
    ((key, kinds),) = report.group(runs).items()
    text, summary = report.tables(key, kinds)
    assert summary["des"]["joint_ratios"]["1"] == {"full/static": pytest.approx(2.25), "full/swap": pytest.approx(1.8)}
    assert summary["des"]["joint_ratios"]["2"]["full/static"] is None  # static served nothing in time
    assert "| 1 | 40.0% | 50.0% | 90.0% | 2.25x | 1.80x |" in text
    assert "| 2 | 0.0% | 20.0% | 60.0% | inf | 3.00x |" in text  # static ran at 2 and served nothing
    # a rate only full ran compares with nothing
    runs = [run("static", {1.0: 0.4}), run("full", {1.0: 0.9, 2.0: 0.6})]
    ((key, kinds),) = report.group(runs).items()
    text, _ = report.tables(key, kinds)
    assert "| 2 | - | 60.0% | - |" in text


def test_report_marks_a_highest_rate_no_swept_rate_fell_below_99_percent_as_a_lower_bound() -> None:
    """A sweep whose every rate attained 99% has not found the system's highest rate: the table
    says ">=", and a ratio with it is a bound, or nothing when both are."""
    from bench.gpu import measure, report

    def run(system: str, joints: dict[float, float]) -> dict:
        pts = [
            {"rate": r, "offered_rate_rps": r, "overall": {"attainment": {"joint": j}, "goodput": {}}}
            for r, j in joints.items()
        ]
        best = measure.max_rate_at([(r, j) for r, j in joints.items()])
        return {"setup": "A", "trace": "lmsys", "engine": "des", "system": system, "rates": pts, "max_rate_at_99": best}

    def ratio_line(*runs: dict) -> tuple[str, dict]:
        ((key, kinds),) = report.group(list(runs)).items()
        text, summary = report.tables(key, kinds)
        return next(line for line in text.splitlines() if line.startswith("Highest rate at 99%")), summary

    bracketed_static = run("static", {2.0: 1.0, 4.0: 0.95})
    open_full = run("full", {2.0: 1.0, 8.0: 0.999})
    line, summary = ratio_line(bracketed_static, open_full)
    assert "full/static >= 4.00x" in line
    assert summary["des"]["lower_bound"] == {"static": False, "full": True}
    line, _ = ratio_line(run("static", {2.0: 1.0, 4.0: 1.0}), run("full", {2.0: 1.0, 8.0: 0.95}))
    assert "full/static <= 0.50x" in line  # static's 4 is a floor: full's 2 may be less than half of it
    line, _ = ratio_line(run("static", {2.0: 1.0}), open_full)
    assert "full/static ? (neither bracketed)" in line
    line, _ = ratio_line(bracketed_static, run("full", {2.0: 1.0, 8.0: 0.9}))
    assert "full/static 1.00x" in line  # both measured: a plain ratio
    ((key, kinds),) = report.group([bracketed_static, open_full]).items()
    assert "| full | >= 8.00 |" in report.tables(key, kinds)[0]


def test_report_joins_one_systems_sweep_split_over_two_runs() -> None:
    """A sweep split over two device commands is one curve: rates together, the later run's
    point for a rate swept twice, and the highest rate at 99% taken over both."""
    from bench.gpu import report

    def run(joints: dict[float, float]) -> dict:
        pts = [
            {"rate": r, "offered_rate_rps": r * 0.9, "overall": {"attainment": {"joint": j}}} for r, j in joints.items()
        ]
        return {"setup": "A", "trace": "synthetic", "engine": "sglang", "system": "static", "rates": pts}

    first, later = run({12.0: 1.0, 24.0: 0.95}), run({24.0: 1.0, 36.0: 0.999, 44.0: 0.93})
    ((_, kinds),) = report.group([first, later]).items()
    joined = kinds["live"]["static"]
    assert [p["rate"] for p in joined["rates"]] == [12.0, 24.0, 36.0, 44.0]
    assert joined["max_rate_at_99"] == pytest.approx(36.0 * 0.9)  # 24's miss came from the first run
    ((_, alone),) = report.group([first]).items()
    assert alone["live"]["static"] is first


def test_kv_timeline_follows_each_instance_through_the_polls() -> None:
    mib = 2**20
    snaps = [
        {"t_s": 0.5, "states": {}, "gauges": {
            'chimera_kv_limit_bytes{model=a,server=a@gpu0}': 64 * mib,
            'chimera_kv_used_tokens{model=a,server=a@gpu0}': 10.0,
            'chimera_kv_limit_bytes{model=b,server=b@gpu0}': 512 * mib,
            'chimera_gpu_bytes{gpu=0,kind=total}': 80e9,
        }},
        {"t_s": 1.5, "states": {}, "gauges": {
            'chimera_kv_limit_bytes{model=a,server=a@gpu0}': 960 * mib,
            'chimera_kv_mapped_bytes{model=a,server=a@gpu0}': 896 * mib,
            'chimera_kv_need_bytes{model=a,server=a@gpu0}': 2048 * mib,
            'chimera_kv_target_bytes{model=a,server=a@gpu0}': 1536 * mib,
        }},
    ]  # fmt: skip
    assert measure.kv_timeline(snaps) == {
        "a@gpu0": [
            {"t_s": 0.5, "limit_mib": 64.0, "used_tokens": 10.0},
            {"t_s": 1.5, "limit_mib": 960.0, "mapped_mib": 896.0, "need_mib": 2048.0, "target_mib": 1536.0},
        ],
        "b@gpu0": [{"t_s": 0.5, "limit_mib": 512.0}],
    }


def test_pollers_read_chimeras_families_and_skip_the_engines() -> None:
    from bench.client.server import chimera_families, parse_metrics

    text = (
        "# HELP chimera_requests_total Requests\n# TYPE chimera_requests_total counter\n"
        'chimera_requests_total{model="a",status="200"} 3.0\n'
        "# HELP chimera_kv_limit_bytes KV limit\n# TYPE chimera_kv_limit_bytes gauge\n"
        'chimera_kv_limit_bytes{model="a",server="a@gpu0"} 64.0\n'
        "# HELP sglang:num_running_reqs running\n# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{server="a@gpu0",chimera_model="a"} 2.0\n'
    )
    assert [f.name for f in chimera_families(text)] == ["chimera_requests", "chimera_kv_limit_bytes"]
    assert measure.counters(text) == {"chimera_requests_total{model=a,status=200}": 3.0}
    assert parse_metrics(text)["gauges"] == {"chimera_kv_limit_bytes{model=a,server=a@gpu0}": 64.0}


def test_a_decode_batch_above_the_captured_graphs_runs_eager_in_the_simulator() -> None:
    from orchestrator.perf.calibration import EAGER_DECODE_FACTOR, H100, H200

    graphs = replace(make_model("m", "llama-3.2-1b", 1, H200), graph_max_bs=16)
    every = make_model("m", "llama-3.2-1b", 1, H200)  # SGLang's default: no eager batch here
    factor = H200.decode_fit("llama-3.2-1b").eager_factor  # type: ignore[union-attr]
    assert factor is not None and factor > 1
    assert graphs.decode_s(16, 8000) == pytest.approx(every.decode_s(16, 8000))
    assert graphs.decode_s(17, 8000) == pytest.approx(factor * every.decode_s(17, 8000))
    # measured against the colocated step, so the neighbours' share is scaled as well
    assert graphs.decode_s(17, 8000, 4) == pytest.approx(factor * every.decode_s(17, 8000, 4))
    # a shape or card without a measured factor: EAGER_DECODE_FACTOR on the step alone
    h100 = replace(make_model("m", "llama-3.2-1b", 1, H100), graph_max_bs=16)
    assert h100.decode_s(17, 8000) == pytest.approx(
        EAGER_DECODE_FACTOR * make_model("m", "llama-3.2-1b", 1, H100).decode_s(17, 8000)
    )
    assert EAGER_DECODE_FACTOR > 1


def test_report_names_a_folder_without_a_run_instead_of_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.gpu import report

    assert report.main([str(tmp_path / "des-elastic"), "--out", str(tmp_path / "out")]) == 2
    assert "des-elastic" in capsys.readouterr().err

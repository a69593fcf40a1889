"""bench.traces: the synthetic generator is seeded and statistically right; the parsers read
the public traces shipped in bench/traces/data (small slices); replay knobs behave as Prism's
benchmark; a missing trace file is named with where to get it."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from bench.traces import (
    SyntheticSpec,
    TraceOptions,
    build_trace,
    default_traces_dir,
    map_models,
    popularity,
)
from bench.traces import files as tf
from bench.traces.request import with_slos
from bench.traces.synthetic import _in_off_phase, generate

MODELS = ["m1", "m2", "m3", "m4"]


def test_synthetic_is_deterministic_per_seed() -> None:
    spec = SyntheticSpec(rate=5, duration_s=20, seed=7)
    assert generate(spec, MODELS) == generate(spec, MODELS)
    assert generate(spec, MODELS) != generate(replace(spec, seed=8), MODELS)


def test_synthetic_count_rate_and_cv() -> None:
    for cv in (1.0, 2.0, 0.5):
        reqs = generate(SyntheticSpec(rate=40, duration_s=250, cv=cv, seed=1), MODELS)
        assert len(reqs) == 10_000  # int(rate x duration)
        times = [r.arrival_s for r in reqs]
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        mean = statistics.fmean(gaps)
        assert mean == pytest.approx(1 / 40, rel=0.05)
        assert statistics.pstdev(gaps) / mean == pytest.approx(cv, rel=0.08)
        assert times == sorted(times)


def test_synthetic_popularity_follows_the_power_law() -> None:
    for alpha, increasing in ((2.1, True), (0.5, False)):
        reqs = generate(SyntheticSpec(rate=50, duration_s=200, alpha=alpha, seed=3), MODELS)
        counts = Counter(r.model for r in reqs)
        shares = [counts[m] / len(reqs) for m in MODELS]
        ordered = shares == sorted(shares, reverse=not increasing)
        assert ordered, shares
        for got, want in zip(shares, popularity(len(MODELS), alpha), strict=True):
            assert got == pytest.approx(want, abs=0.015)
    assert sum(popularity(4, 2.1)) == pytest.approx(1.0)


def test_synthetic_lengths_are_uniform_in_lo_hi() -> None:
    reqs = generate(SyntheticSpec(rate=20, duration_s=100, input_range=(10, 20), output_range=(5, 6), seed=2), MODELS)
    assert {r.prompt_tokens for r in reqs} == set(range(10, 20))
    assert {r.output_tokens for r in reqs} == {5}


def test_on_off_models_are_silent_in_their_off_phase() -> None:
    spec = SyntheticSpec(rate=40, duration_s=60, seed=4, on_off_cycle_s=10, off_ratio=0.5, on_off_fraction=0.5)
    reqs = generate(spec, MODELS)
    full = generate(replace(spec, on_off_cycle_s=0), MODELS)
    on_off = ["m3", "m4"]  # the last half
    for j, m in enumerate(on_off):
        assert all(not _in_off_phase(r.arrival_s, j, 2, 10, 0.5) for r in reqs if r.model == m)
    kept = Counter(r.model for r in reqs)
    before = Counter(r.model for r in full)
    assert kept["m1"] == before["m1"] and kept["m2"] == before["m2"]
    assert 0.3 < kept["m4"] / before["m4"] < 0.7


@pytest.mark.parametrize(
    "name, reader",
    [
        ("azure_code", tf.read_azure),
        ("azure_conv", tf.read_azure),
        ("lmsys", tf.read_lmsys),
        ("mooncake", tf.read_mooncake),
    ],
)
def test_parsers_read_a_slice_of_each_real_trace(name: str, reader: object) -> None:
    assert callable(reader)
    rows = reader(tf.trace_path(name, default_traces_dir()), limit=50)
    assert len(rows) == 50
    assert rows[0].t_s == 0.0 and all(a.t_s <= b.t_s for a, b in zip(rows, rows[1:], strict=False))
    assert all(r.prompt_tokens > 0 and r.output_tokens > 0 for r in rows)
    assert all(r.model_key is None for r in rows) == (name != "lmsys")
    if name == "azure_code":
        assert (rows[0].prompt_tokens, rows[0].output_tokens) == (4808, 10)
        assert rows[1].t_s == pytest.approx(0.052)
    if name == "lmsys":
        assert rows[0].model_key == "m13" and rows[2].prompt_tokens == 456


def test_servegen_rates_become_arrivals_at_the_file_rate() -> None:
    rates = tf.read_servegen_rates(tf.trace_path("servegen", default_traces_dir()))
    assert rates["m-large"][0.0] == pytest.approx(212.78)
    arr = tf.servegen_arrivals({"m-large": rates["m-large"]}, 0.0, 60.0, 0.05, 1.0, seed=1)
    assert len(arr) / 60.0 == pytest.approx(212.78 * 0.05, rel=0.15)


def test_lmsys_replay_maps_ranks_onto_placements() -> None:
    base = TraceOptions(synthetic=SyntheticSpec(duration_s=100))
    fold = build_trace("lmsys", base, MODELS)
    top = build_trace("lmsys", replace(base, model_map="top"), MODELS)
    assert {r.model for r in fold} == set(MODELS)
    assert len(top) < len(fold)
    keys = [
        r.model_key for r in tf.read_lmsys(tf.trace_path("lmsys", default_traces_dir())) if r.t_s < 100 and r.model_key
    ]
    # the most popular trace model goes to the first placements model
    assert map_models(keys, MODELS, "fold")[Counter(keys).most_common(1)[0][0]] == "m1"
    assert [r.id for r in fold] == list(range(len(fold)))


def test_time_scale_replication_window_and_sample() -> None:
    base = TraceOptions(synthetic=SyntheticSpec(duration_s=60))
    one = build_trace("azure_conv", base, MODELS)
    fast = build_trace("azure_conv", replace(base, time_scale=0.5), MODELS)
    # half the time scale replays twice as much trace in the same 60 s
    assert len(fast) > 1.5 * len(one)
    assert max(r.arrival_s for r in fast) < 60
    twice = build_trace("azure_conv", replace(base, replication=2), MODELS)
    assert len(twice) == 2 * len(one)
    later = build_trace("azure_conv", replace(base, start_s=600), MODELS)
    assert later[0].source != one[0].source and later[0].arrival_s >= 0
    half = build_trace("azure_conv", replace(base, sample=0.5, time_scale=0.1), MODELS)
    full = build_trace("azure_conv", replace(base, time_scale=0.1), MODELS)
    assert len(half) / len(full) == pytest.approx(0.5, abs=0.05)
    clipped = build_trace("azure_conv", replace(base, max_prompt_tokens=100), MODELS)
    assert max(r.prompt_tokens for r in clipped) == 100


def test_slos_come_from_the_model_times_the_scale() -> None:
    reqs = generate(SyntheticSpec(rate=2, duration_s=5), ["a", "b"])
    out = with_slos(reqs, {"a": (0.5, 0.05)}, scale=2.0)
    for r in out:
        assert (r.slo_ttft_s, r.slo_tpot_s) == ((1.0, 0.1) if r.model == "a" else (None, None))


def test_unknown_trace_and_bad_options_fail_loudly() -> None:
    with pytest.raises(tf.TraceFileError, match="unknown trace"):
        tf.trace_path("nope", default_traces_dir())
    with pytest.raises(ValueError, match="sample"):
        build_trace("synthetic", TraceOptions(sample=0), MODELS)
    with pytest.raises(ValueError, match="alpha"):
        generate(SyntheticSpec(alpha=0), MODELS)


def test_every_trace_ships_in_the_package_data() -> None:
    data = default_traces_dir()
    assert data == Path(tf.__file__).resolve().parent / "data"
    for name in tf.FILES:
        assert tf.trace_path(name, data).stat().st_size > 0
    readme = (data / "README.md").read_text()
    assert all(f"`{f}`" in readme for f in tf.FILES.values())


@pytest.mark.parametrize("name", sorted(tf.FILES))
def test_a_missing_trace_is_named_with_where_to_get_it(name: str, tmp_path: Path) -> None:
    with pytest.raises(tf.TraceFileError) as err:
        build_trace(name, TraceOptions(traces_dir=tmp_path), MODELS)
    msg = str(err.value)
    assert f"trace file {tf.FILES[name]} not found in {tmp_path}" in msg
    assert "bench/traces/data/README.md" in msg and "--traces-dir" in msg


@pytest.mark.parametrize(
    "reader, name",
    [
        (tf.read_azure, "azure_code"),
        (tf.read_lmsys, "lmsys"),
        (tf.read_mooncake, "mooncake"),
        (tf.read_servegen_rates, "servegen"),
    ],
)
def test_readers_translate_a_missing_file(reader: object, name: str, tmp_path: Path) -> None:
    assert callable(reader)
    with pytest.raises(tf.TraceFileError, match=f"trace file {tf.FILES[name]} not found"):
        reader(tmp_path / tf.FILES[name])


def test_bench_live_reports_a_missing_trace_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.client.server import ServedModel
    from bench.live import session
    from bench.live.run import main

    async def served(client: object, base: str) -> list[ServedModel]:
        return [ServedModel("m1", "awake")]  # a proxy that serves one model, without a network

    monkeypatch.setattr(session, "served_models", served)
    rc = main(
        [
            "--url",
            "http://127.0.0.1:9",
            "--engine-label",
            "test",
            "--trace",
            "lmsys",
            "--traces-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "lmsys_arena_vtc_27models.csv not found" in err and "Traceback" not in err

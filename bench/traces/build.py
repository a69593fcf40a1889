"""From a trace name and options to the requests of one run (the one entry point of bench.traces).

Replays follow Prism's benchmark (``--time-scale``: arrival times are multiplied by it, so 0.5
replays twice as fast; ``--replication``: every request is sent that many times at its arrival
time), then chimera's own knobs, in this order:

1. window: trace seconds [start, start + duration / time_scale), shifted to start at 0;
2. time scale, replication;
3. sample: keep each request with probability ``sample`` (seeded), for traces far heavier than
   the target (ServeGen runs ~2,000 req/s; there the rates are multiplied instead);
4. lengths clipped to [1, max] (an output of 0 tokens cannot be asked for with ignore_eos);
5. models: single-model traces (Azure, Mooncake) get a model per request by Prism's power-law
   popularity (``alpha``, as the synthetic generator); multi-model traces (LMSYS, ServeGen) rank
   their models by request count and map rank r onto the r-th placements model (file order),
   either folding (``fold``: rank r -> model r mod N, all traffic kept) or keeping the top N
   (``top``: the others are dropped);
6. SLOs: each model's ``slo`` from the placements file, times ``slo_scale``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from bench.traces import files
from bench.traces.request import BenchRequest, renumber, with_slos
from bench.traces.synthetic import SyntheticSpec, generate, power_index, uniform_len

TRACES = ("synthetic", *files.FILES)
ModelMap = Literal["fold", "top"]
Slos = dict[str, tuple[float | None, float | None]]


@dataclass(frozen=True)
class TraceOptions:
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)  # rate, duration, lengths...
    traces_dir: Path = field(default_factory=files.default_traces_dir)
    start_s: float = 0.0  # replays: where in the trace to start (trace seconds)
    time_scale: float = 1.0
    replication: int = 1
    sample: float = 1.0
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    model_map: ModelMap = "fold"
    slo_scale: float = 1.0

    def check(self) -> None:
        if self.time_scale <= 0 or self.replication < 1 or not 0 < self.sample <= 1:
            raise ValueError(
                "need time_scale > 0, replication >= 1 and 0 < sample <= 1 (got "
                f"{self.time_scale}, {self.replication}, {self.sample})"
            )


def build_trace(name: str, opts: TraceOptions, models: Sequence[str], slos: Slos | None = None) -> list[BenchRequest]:
    """The requests of one run, sorted and numbered. ``models``: placements order."""
    opts.check()
    if not models:
        raise ValueError("no models to send requests to")
    if name == "synthetic":
        reqs = generate(opts.synthetic, models)
        reqs = _replicate(_scale(reqs, opts.time_scale), opts.replication)
        reqs = _sample(reqs, opts.sample, opts.synthetic.seed)
    else:
        reqs = _replay(name, opts, models)
    reqs = [
        replace(
            r,
            prompt_tokens=_clip(r.prompt_tokens, opts.max_prompt_tokens),
            output_tokens=_clip(r.output_tokens, opts.max_output_tokens),
        )
        for r in reqs
    ]
    return renumber(with_slos(reqs, slos or {}, opts.slo_scale))


def _replay(name: str, opts: TraceOptions, models: Sequence[str]) -> list[BenchRequest]:
    spec, path = opts.synthetic, files.trace_path(name, opts.traces_dir)
    span = spec.duration_s / opts.time_scale  # trace seconds that fill the run
    if name == "servegen":
        rng = random.Random(spec.seed)
        arrivals = files.servegen_arrivals(
            files.read_servegen_rates(path), opts.start_s, span, opts.sample, spec.cv, spec.seed
        )
        rows = [
            files.TraceRow(
                t, uniform_len(rng, *spec.input_range), uniform_len(rng, *spec.output_range), m, f"servegen:{m}"
            )
            for t, m in arrivals
        ]
        sample = 1.0  # already in the rates
    else:
        reader = {
            "azure_code": files.read_azure,
            "azure_conv": files.read_azure,
            "lmsys": files.read_lmsys,
            "mooncake": files.read_mooncake,
        }[name]
        rows = reader(path)
        sample = opts.sample
    rows = [r for r in rows if opts.start_s <= r.t_s < opts.start_s + span]
    mapping = map_models([r.model_key for r in rows if r.model_key is not None], models, opts.model_map)
    rng = random.Random(spec.seed + 1)
    reqs = []
    for r in rows:
        if r.model_key is None:
            model: str | None = models[power_index(rng, len(models), spec.alpha)]
        else:
            model = mapping.get(r.model_key)
        if model is not None:
            reqs.append(
                BenchRequest(
                    0, (r.t_s - opts.start_s) * opts.time_scale, model, r.prompt_tokens, r.output_tokens, source=r.where
                )
            )
    return _sample(_replicate(reqs, opts.replication), sample, spec.seed + 2)


def map_models(keys: Sequence[str], models: Sequence[str], how: ModelMap) -> dict[str, str]:
    """Trace model -> placements model: rank by request count (ties by name), rank r goes to
    ``models[r % N]`` (fold) or, for r < N only, ``models[r]`` (top)."""
    ranked = sorted(Counter(keys).items(), key=lambda kv: (-kv[1], kv[0]))
    out = {}
    for r, (key, _) in enumerate(ranked):
        if how == "fold":
            out[key] = models[r % len(models)]
        elif r < len(models):
            out[key] = models[r]
    return out


def _scale(reqs: list[BenchRequest], k: float) -> list[BenchRequest]:
    return reqs if k == 1 else [replace(r, arrival_s=r.arrival_s * k) for r in reqs]


def _replicate(reqs: list[BenchRequest], n: int) -> list[BenchRequest]:
    return [r for r in reqs for _ in range(n)]


def _sample(reqs: list[BenchRequest], p: float, seed: int) -> list[BenchRequest]:
    if p >= 1:
        return reqs
    rng = random.Random(seed)
    return [r for r in reqs if rng.random() < p]


def _clip(n: int, hi: int | None) -> int:
    return max(1, n if hi is None else min(n, hi))


def describe(reqs: Sequence[BenchRequest], duration_s: float) -> dict[str, object]:
    """Counts per model and the offered rate, for the report."""
    per_model = Counter(r.model for r in reqs)
    return {
        "requests": len(reqs),
        "duration_s": duration_s,
        "offered_rate_rps": len(reqs) / duration_s if duration_s > 0 else 0.0,
        "per_model": dict(sorted(per_model.items())),
        "prompt_tokens": sum(r.prompt_tokens for r in reqs),
        "output_tokens": sum(r.output_tokens for r in reqs),
    }

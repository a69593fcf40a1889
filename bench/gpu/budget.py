"""How one device command's seconds are spent by the one-GPU experiment
(bench/gpu/experiment.py): which rates of a sweep still fit, with what request timeout, and what
a system's sweep is predicted to take (bench/gpu/experiment.sh splits a command evenly between
two systems). Pure functions (time passed in); no clock, no I/O.

The numbers come from the H200 runs (bench/results/gpu-experiment-h200-smoke): fleet start of
set-up A 91-120 s; a rate of D seconds of arrivals took D + 1-3 s to answer at rates the
systems hold; after the sweep, stopping chimera and writing the files took 6-8 s
(``timing_s.total - boot - rate walls - gaps``; ``timing_s.stop`` now records it).

A rate is run when its arrivals and a request timeout of at least ``MIN_TIMEOUT_S`` fit in
what is left before the stop. The timeout is then cut to what is left: the last requests sent
get less than the SLO bound (``slo_bound_s``) only when the rate would otherwise overrun, and
the cut is recorded per rate (``request_timeout_s``), so the command never runs into the
machine's hard stop and loses its files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Fleet start of a multi-GPU set-up (issue 18's prism18 and prism9), an ESTIMATE: nothing of it
# has run. Servers of different GPUs boot in parallel, so the fleet is as slow as its slowest
# GPU: on the H200 six servers of one GPU were up in 72 s together (bench/results/fleet-h200:
# init 44-48 s, CUDA graphs 13-24 s each; set-up A 91-120 s in the experiment). The slowest
# GPU here holds three servers, one a rank of llama-3.3-70b at TP 4, whose 80 layers capture
# graphs ~2.5x as long as the 8B's 32 (24 s -> 60 s) after NCCL's set-up: 120 s + 40 s.
BOOT_MULTI_GPU_S = 160.0
STOP_S = 15.0  # stop chimera (engines exit), write files and tar logs: measured 6-8 s, doubled
MIN_TIMEOUT_S = 10.0  # below this a rate's last requests could not be answered at all
COMMAND_S = 570.0  # usable seconds of one 10-minute device command (install and slack kept)


def slo_bound_s(slos: Mapping[str, tuple[float | None, float | None]], max_output_tokens: int) -> float:
    """Seconds after which every request of the set-up has missed its joint TTFT+TPOT SLO:
    TTFT + (longest output - 1) x TPOT of the most lenient model. Waiting longer for an answer
    changes no attainment; a model without one of the two SLOs bounds nothing (inf)."""
    worst = 0.0
    for ttft, tpot in slos.values():
        if ttft is None or tpot is None:
            return math.inf
        worst = max(worst, ttft + (max_output_tokens - 1) * tpot)
    return worst


def rate_timeout(
    left_s: float,
    duration_s: float,
    timeout_s: float,
    stop_s: float = STOP_S,
    min_timeout_s: float = MIN_TIMEOUT_S,
) -> float | None:
    """The request timeout to run one more rate with, or None when it does not fit: its
    ``duration_s`` of arrivals, then at most the timeout for the last answers, then the stop,
    all within ``left_s``."""
    room = left_s - stop_s - duration_s
    if room < min(timeout_s, min_timeout_s):
        return None
    return min(timeout_s, room)


def sweep_s(boot_s: float, rates: int, duration_s: float, gap_s: float, drain_s: float = 3.0) -> float:
    """Predicted wall of one system: fleet start, ``rates`` rates that the system holds (answers
    drain in ``drain_s``), the gaps, and the stop. For planning device commands."""
    return boot_s + rates * (duration_s + drain_s + gap_s) + STOP_S

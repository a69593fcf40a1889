#!/bin/bash
# Issue 18's simulator predictions (SIMULATED: bench/gpu/des.py, no GPU): set-ups prism18 and
# prism9 with the LMSYS trace, systems static / swap / full, both calibrations, two runs each:
#   own:   the whole trace (600 s) at its own rate (time scale 1): the reference point;
#   sweep: scale factors 1-16 of its rate over 36 s each (scale 16 replays 576 s of the trace).
# Then python -m bench.gpu.report per (calibration, run) into OUT/report-CAL-RUN/.
#     bash bench/gpu/reference_des.sh [OUT]     (default bench/results/des-prism; ~10 min on 2 CPUs)
set -euo pipefail
out=${1:-bench/results/des-prism}
py=${PYTHON:-python3}
for setup in prism18 prism9; do
  for cal in h100 h200; do
    for system in static swap full; do
      $py -m bench.gpu.experiment --engine des --setup "$setup" --system "$system" --calibration "$cal" \
        --rates 1 --duration 600 --out "$out/own-$cal/$setup-$system"
      $py -m bench.gpu.experiment --engine des --setup "$setup" --system "$system" --calibration "$cal" \
        --rates 1,2,4,8,16 --duration 36 --out "$out/sweep-$cal/$setup-$system"
    done
  done
done
for run in own sweep; do
  for cal in h100 h200; do
    $py -m bench.gpu.report "$out/$run-$cal"/*/ --out "$out/report-$cal-$run" > /dev/null
  done
done

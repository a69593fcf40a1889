#!/bin/bash
# The live trace on this workplace's lent H100 (docs/bench-live.md, "Live trace on the H100"):
# python -m bench.gpu.trace against two stock SGLang servers, then python -m bench.calibration.calibrate.
# Run from the repo root as the last device call, after the calls that copy .whl1, .whl2 and
# .whl4 to /tmp/w (docs/gpu-testing.md), carrying .whl3 and .gpu:
#     bash bench/gpu/trace.sh [bench.gpu.trace flags...]
# Set-up as tests/gpu/device_run.sh (tests/gpu/device_env.sh). $OUT gets bench.gpu.trace's six files and
# calibration.json (and jit-cache.tgz with SAVE_JIT_CACHE=1): at most eight come back.
# The device cuts a command at 600 s: the trace gets what the install and the boots leave of
# GPU_TRACE_BUDGET_S (default 565 s) and ends within it; calibrate takes about a second.
set -uo pipefail
source tests/gpu/device_env.sh
# GPU time of prefill and decode forward passes on SGLang's /metrics (engine-side cross-check).
export SGLANG_ENABLE_METRICS_DEVICE_TIMER=${SGLANG_ENABLE_METRICS_DEVICE_TIMER:-1}
budget=$(( ${GPU_TRACE_BUDGET_S:-565} - ($(date +%s) - t0) ))
python3 -m bench.gpu.trace --engine sglang --out "$OUT" --work-dir /tmp/gpu-trace --max-wall "$budget" "$@"
rc=$?
if [ -f "$OUT/calibration_data.json" ]; then
  python3 -m bench.calibration.calibrate "$OUT" || rc=1
fi
[ "${SAVE_JIT_CACHE:-0}" = 1 ] && (cd ~ && tar czf "$OUT/jit-cache.tgz" .triton .cache 2>/dev/null)
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

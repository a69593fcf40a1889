#!/bin/bash
# Fleet start on this workplace's lent GPU (issue 17 §1): python -m bench.gpu.fleet against stock
# SGLang, one server alone then six on GPU 0. Run from the repo root after the wheel-copy calls
# of docs/gpu-testing.md, carrying .whl3 and .gpu:
#     bash tests/gpu/device_run.sh --cmd bash bench/gpu/fleet.sh [bench.gpu.fleet flags...]
# device_run.sh leaves gpu.txt and jit-cache.tgz in $OUT; this leaves fleet.json, table.txt and
# logs.txt: five files (the device returns at most eight). The device cuts a command at 600 s:
# both boots get what the install leaves of GPU_FLEET_BUDGET_S (default 560 s).
set -uo pipefail
source tests/gpu/device_env.sh
budget=$(( ${GPU_FLEET_BUDGET_S:-560} - ($(date +%s) - t0) ))
python3 -m bench.gpu.fleet --engine sglang --out "$OUT" --work-dir /tmp/gpu-fleet --max-wall "$budget" "$@"
rc=$?
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

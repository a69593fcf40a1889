#!/bin/bash
# Issue 14 on a 2-GPU kind (nvidia-h200-x2), unrun: python -m bench.gpu.tp_surge against stock SGLang
# at TP 2. Run from the repo root after the wheel-copy calls of docs/gpu-testing.md, carrying
# .whl3 and .gpu:
#     bash tests/gpu/device_run.sh --cmd bash bench/gpu/tp_surge.sh [bench.gpu.tp_surge flags...]
# Leaves its JSON (and the servers' logs) in $OUT.
set -uo pipefail
source tests/gpu/device_env.sh
python3 -m bench.gpu.tp_surge --engine sglang --out "$OUT" "$@"
rc=$?
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

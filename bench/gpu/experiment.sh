#!/bin/bash
# One system of the one-GPU experiment (python -m bench.gpu.experiment) on the lent GPU against
# stock SGLang: fleet start plus the whole rate sweep in one device command (cut at 600 s).
# Run from the repo root as bench/gpu/trace.sh is (same set-up: tests/gpu/device_env.sh):
#     bash bench/gpu/experiment.sh SYSTEM SETUP [bench.gpu.experiment flags...]
#     e.g. bash bench/gpu/experiment.sh full A --trace synthetic --rates 2,4,8,12,16,24
# SYSTEM: static | swap | elastic | full; SETUP: A | B. $OUT gets experiment.json,
# requests.jsonl, table.txt and logs.tgz (four files; jit-cache.tgz too with SAVE_JIT_CACHE=1).
# Fleet start with warm caches takes ~100-150 s on the H200; the default sweep is six rates of
# 60 s (+5 s gaps): ~6.5 minutes of traffic. Rates that would not end within the budget
# (EXPERIMENT_BUDGET_S, default 570 s, minus the install) are skipped and listed in the JSON.
set -uo pipefail
system=${1:?usage: bash bench/gpu/experiment.sh SYSTEM SETUP [flags...]}
setup=${2:?usage: bash bench/gpu/experiment.sh SYSTEM SETUP [flags...]}
shift 2
source tests/gpu/device_env.sh
budget=$(( ${EXPERIMENT_BUDGET_S:-570} - ($(date +%s) - t0) ))
python3 -m bench.gpu.experiment --engine sglang --system "$system" --setup "$setup" \
  --out "$OUT" --work-dir /tmp/gpu-experiment --max-wall "$budget" "$@"
rc=$?
[ "${SAVE_JIT_CACHE:-0}" = 1 ] && (cd ~ && tar czf "$OUT/jit-cache.tgz" .triton .cache 2>/dev/null)
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

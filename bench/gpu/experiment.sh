#!/bin/bash
# The one-GPU experiment (python -m bench.gpu.experiment) on the lent GPU against stock SGLang:
# fleet start plus the whole rate sweep of one system, or of two back to back, in one device
# command (cut at 600 s). Run from the repo root as bench/gpu/trace.sh is (same set-up:
# tests/gpu/device_env.sh):
#     bash bench/gpu/experiment.sh SYSTEM[,SYSTEM] SETUP [bench.gpu.experiment flags...]
#     e.g. bash bench/gpu/experiment.sh static,full A
# SYSTEM: static | swap | elastic | full; SETUP: A | B. Each system writes $OUT/SYSTEM/:
# experiment.json, table.txt and run.tgz (requests.jsonl and the logs): three files each, six
# for two (jit-cache.tgz too with SAVE_JIT_CACHE=1). The budget (EXPERIMENT_BUDGET_S, default
# 570 s, minus the install) is split evenly between the systems still to run, so the first one
# leaves what it does not use to the second; rates that would not end in time are skipped and
# listed in the JSON (bench/gpu/budget.py). Default sweeps: four rates of 30 s per system.
set -uo pipefail
systems=${1:?usage: bash bench/gpu/experiment.sh SYSTEM[,SYSTEM] SETUP [flags...]}
setup=${2:?usage: bash bench/gpu/experiment.sh SYSTEM[,SYSTEM] SETUP [flags...]}
shift 2
source tests/gpu/device_env.sh
IFS=, read -ra names <<< "$systems"
rc=0
for i in "${!names[@]}"; do
  left=$(( ${EXPERIMENT_BUDGET_S:-570} - ($(date +%s) - t0) ))
  budget=$(( left / (${#names[@]} - i) ))
  echo "== ${names[$i]} on set-up $setup: $budget s of $left s left"
  python3 -m bench.gpu.experiment --engine sglang --system "${names[$i]}" --setup "$setup" \
    --out "$OUT/${names[$i]}" --work-dir "/tmp/gpu-experiment-${names[$i]}" --max-wall "$budget" "$@" || rc=$?
done
[ "${SAVE_JIT_CACHE:-0}" = 1 ] && (cd ~ && tar czf "$OUT/jit-cache.tgz" .triton .cache 2>/dev/null)
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

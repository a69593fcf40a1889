#!/bin/bash
# Shape pools on the lent GPU (docs/pools.md, "The GPU run"): python -m bench.gpu.pools against
# stock SGLang. Run from the repo root, with the carried wheels as for bench/gpu/trace.sh
# (docs/gpu-testing.md; set-up in tests/gpu/device_env.sh):
#     bash bench/gpu/pools.sh [bench.gpu.pools flags...]
# 1. writes POOLS_CHECKPOINTS (default 2) real-size 8B safetensors checkpoints (16 GB each,
#    random values from distinct seeds) under /tmp/pools-ckpt, once per machine;
# 2. measures the disk-read floor (one checkpoint read cold, then from the page cache);
# 3. starts chimera with one pooled 8B server and measures, POOLS_REPS times each: the re-target
#    first token from disk (target's pages evicted) and from host RAM (page cache), every phase
#    from chimera's log, and the wake of the parked server (admin park, then a request);
# 4. $OUT gets pools-gpu.json, placements.yaml and chimera.log (+ jit-cache.tgz with SAVE_JIT_CACHE=1).
# A command is cut at 600 s: a cold machine (JIT compile ~100 s, checkpoints ~90 s) may need a
# second call; the checkpoints and kernel caches stay while the machine is warm.
set -uo pipefail
source tests/gpu/device_env.sh
df -h /tmp | tail -1
python3 -m bench.gpu.pools --engine sglang --out "$OUT" --ckpt-dir /tmp/pools-ckpt \
  --checkpoints "${POOLS_CHECKPOINTS:-2}" --reps "${POOLS_REPS:-5}" "$@"
rc=$?
[ "${SAVE_JIT_CACHE:-0}" = 1 ] && (cd ~ && tar czf "$OUT/jit-cache.tgz" .triton .cache 2>/dev/null)
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

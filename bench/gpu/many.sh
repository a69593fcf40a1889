#!/bin/bash
# Many more models than servers on the lent GPU (docs/pools.md, "The GPU run: 50 models and 500
# adapters"): python -m bench.live.pools --engine sglang against stock SGLang. Run from the repo
# root with the carried wheels, as bench/gpu/pools.sh (set-up: tests/gpu/device_env.sh):
#     bash bench/gpu/many.sh [bench.live.pools flags...]
# 1. MANY_CHECKPOINTS (default 2) real-size 8B checkpoints under /tmp/pools-ckpt (shared with
#    pools.sh: written once per machine), and MANY_ADAPTERS (default 500) PEFT adapters under
#    /tmp/adapters (bench/gpu/adapters.py);
# 2. one chimera: a pool of two 8B servers serving 50 pooled models over MANY_PATHS (default 8)
#    model paths (hard links to the checkpoints: switches between paths load weights), the two
#    most asked-for staged pinned (stage_gb for MANY_CHECKPOINTS), one 8B base
#    serving the 500 adapters, all on GPU 0; open-loop streamed requests at each skew;
# 3. $OUT/many gets pools.json, placements.yaml, requests-skew-*.jsonl and the logs (run.tgz).
set -uo pipefail
source tests/gpu/device_env.sh
n=${MANY_CHECKPOINTS:-2}
python3 -m bench.gpu.checkpoints --shape llama-3.1-8b --count "$n" --out /tmp/pools-ckpt || exit 1
python3 -m bench.gpu.adapters --shape llama-3.1-8b --count "${MANY_ADAPTERS:-500}" --out /tmp/adapters || exit 1
python3 -m bench.live.pools --engine sglang --ckpt-dir /tmp/pools-ckpt --adapter-dir /tmp/adapters \
  --checkpoints "$n" --paths "${MANY_PATHS:-8}" --adapters "${MANY_ADAPTERS:-500}" --stage pinned \
  --gpu-memory-gb 100 --out "$OUT/many" "$@"
rc=$?
(cd "$OUT/many" && tar czf run.tgz gpu 2>/dev/null; rm -rf gpu)
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

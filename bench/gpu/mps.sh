#!/bin/bash
# Colocated decode with and without CUDA MPS (python -m bench.gpu.mps, issue 17 §4) on the lent
# GPU, in one device command after the wheel calls of docs/gpu-testing.md (carry .whl3, .gpu):
#     bash bench/gpu/mps.sh [bench.gpu.mps flags...]
# Runs as root there, so it may start and quit nvidia-cuda-mps-control itself (pipe and log
# directories under /tmp/chimera-mps). $OUT gets mps.json, table.txt and servers.tgz (the
# servers' logs and the daemon's): three files. ~9 minutes with the default two batch sizes.
set -uo pipefail
source tests/gpu/device_env.sh
python3 -m bench.gpu.mps --engine sglang --out /tmp/gpu-mps "$@"
rc=$?
echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/chimera-mps/pipe nvidia-cuda-mps-control 2>/dev/null  # never leave it running
cp /tmp/gpu-mps/mps.json /tmp/gpu-mps/table.txt "$OUT/" 2>/dev/null
tar czf "$OUT/servers.tgz" --exclude=gpu-mps/work/cache -C /tmp gpu-mps/work chimera-mps/log 2>/dev/null
echo "total: $(( $(date +%s)-t0 )) s"
exit "$rc"

#!/bin/bash
# Runs the GPU suite on a GPU machine of this workplace (see docs/gpu-testing.md), from the repo
# root, after the carried wheels were copied to /tmp/w by the earlier calls. Installs them into
# /tmp/site, then runs `pytest -m gpu` against stock SGLang; logs and JSON go to $OUT.
# Usage: bash tests/gpu/device_run.sh [pytest args...]
#        bash tests/gpu/device_run.sh --cmd COMMAND...   (same set-up, then COMMAND: a benchmark)
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p /tmp/w "$OUT"
[ -d .whl3 ] && cp .whl3/*.whl /tmp/w/
t0=$(date +%s)
if [ ! -f /tmp/site/.ok ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/w/*.whl \
    > /tmp/pip.log 2>&1 || { echo "wheel install failed"; tail -20 /tmp/pip.log; exit 1; }
  touch /tmp/site/.ok
fi
echo "install: $(( $(date +%s)-t0 )) s, $(ls /tmp/w | wc -l) wheels"
# Kernel caches (Triton, flashinfer) from an earlier run skip most of the ~100 s JIT compile.
[ -f .gpu/jit-cache.tgz ] && tar xzf .gpu/jit-cache.tgz -C ~ && echo "JIT caches restored"
export PYTHONPATH=/tmp/site:$PWD
# The carried sglang-kernel lacks the FA3 kernels (gpu.md): triton attention on the lent H100.
export CHIMERA_SGLANG_ARGS=${CHIMERA_SGLANG_ARGS:-"--attention-backend triton --sampling-backend pytorch --grammar-backend none"}
export CHIMERA_GPU_OUT=$OUT CHIMERA_CACHE_DIR=${CHIMERA_CACHE_DIR:-/tmp/chimera-cache}
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -c "import sglang, torch; print('sglang', sglang.__version__, 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${1:-}" = "--cmd" ]; then
  shift
  "$@"
  rc=$?
else
  python3 -m pytest -m gpu tests/gpu -rA -p no:cacheprovider "$@" 2>&1 | tee "$OUT/pytest.log"
  rc=${PIPESTATUS[0]}
fi
(cd ~ && tar czf "$OUT/jit-cache.tgz" .triton .cache 2>/dev/null)
exit "$rc"

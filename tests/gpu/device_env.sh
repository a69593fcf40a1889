# Sourced by the scripts that run on this workplace's GPU machine (tests/gpu/device_run.sh,
# bench/gpu/trace.sh), from the repo root, after the carried wheels were copied to /tmp/w by
# the earlier calls (docs/gpu-testing.md): installs them into /tmp/site once per machine,
# restores the kernel caches and sets the environment stock SGLang needs there. Sets t0 (start
# time, seconds) and OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
t0=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p /tmp/w "$OUT"
[ -d .whl3 ] && cp .whl3/*.whl /tmp/w/
# Installed again when the set of wheels changed since the last install on this machine.
wheels=$(ls /tmp/w | sort)
if [ "$(cat /tmp/site/.ok 2>/dev/null)" != "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/w/*.whl \
    > /tmp/pip.log 2>&1 || { echo "wheel install failed"; tail -20 /tmp/pip.log; exit 1; }
  echo "$wheels" > /tmp/site/.ok
fi
echo "install: $(( $(date +%s)-t0 )) s, $(ls /tmp/w | wc -l) wheels"
# Kernel caches (Triton, flashinfer) from an earlier run skip most of the ~100 s JIT compile.
[ -f .gpu/jit-cache.tgz ] && tar xzf .gpu/jit-cache.tgz -C ~ && echo "JIT caches restored"
export PYTHONPATH=/tmp/site:$PWD
# The carried sglang-kernel lacks the FA3 kernels (tests/gpu/prepare_wheels.sh): triton attention.
export CHIMERA_SGLANG_ARGS=${CHIMERA_SGLANG_ARGS:-"--attention-backend triton --sampling-backend pytorch --grammar-backend none"}
export CHIMERA_CACHE_DIR=${CHIMERA_CACHE_DIR:-/tmp/chimera-cache}

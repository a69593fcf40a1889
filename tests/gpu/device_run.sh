#!/bin/bash
# Runs the GPU suite on a GPU machine of this workplace (see docs/gpu-testing.md), from the repo
# root, after the carried wheels were copied to /tmp/w by the earlier calls. Installs them into
# /tmp/site, then runs `pytest -m gpu` against stock SGLang; logs and JSON go to $OUT.
# Usage: bash tests/gpu/device_run.sh [TEST_FILES...] [pytest options...]   (no files: all of tests/gpu)
#        bash tests/gpu/device_run.sh --cmd COMMAND...   (same set-up, then COMMAND: a benchmark)
set -uo pipefail
source tests/gpu/device_env.sh
export CHIMERA_GPU_OUT=$OUT
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -c "import sglang, torch; print('sglang', sglang.__version__, 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${1:-}" = "--cmd" ]; then
  shift
  "$@"
  rc=$?
else
  # test files or node ids given first run alone; otherwise the whole suite (plus any options)
  targets=(tests/gpu)
  [[ "${1:-}" == tests/* ]] && targets=()
  python3 -m pytest -m gpu "${targets[@]}" -rA -p no:cacheprovider -o addopts=--strict-markers "$@" 2>&1 | tee "$OUT/pytest.log"
  rc=${PIPESTATUS[0]}
fi
(cd ~ && tar czf "$OUT/jit-cache.tgz" .triton .cache 2>/dev/null)
exit "$rc"

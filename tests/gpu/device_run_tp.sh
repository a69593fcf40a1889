#!/bin/bash
# The multi-GPU variants (tests/gpu/test_tp.py) on a lent nvidia-h200-x2 or -x4, with the same
# set-up as device_run.sh (wheels; NCCL settings from device_env.sh: NVLink multicast off).
# On 2 GPUs the TP 4 test skips. docs/gpu-testing.md. Usage: bash tests/gpu/device_run_tp.sh [pytest args...]
exec bash tests/gpu/device_run.sh --cmd bash -c 'python3 -m pytest -m gpu tests/gpu/test_tp.py -rA -p no:cacheprovider -o addopts=--strict-markers "$@" 2>&1 | tee "$OUT/pytest.log"; exit ${PIPESTATUS[0]}' tp "$@"

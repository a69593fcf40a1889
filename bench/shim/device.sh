#!/bin/bash
# The shim's GPU benchmarks in one device call (after the wheel-copy calls of docs/gpu-testing.md):
#   bash tests/gpu/device_run.sh --cmd bash bench/shim/device.sh overhead|surge [flags...]
# (flags go to the benchmark, e.g. overhead --repeats 3 --blocks 2 --block-s 15)
# At most 8 files come back from $OUT: each benchmark leaves its JSON (and plot) there, and its
# logs (the overhead run's server logs and map traces) in one tarball.
set -uo pipefail
what=${1:?overhead or surge}
shift
work=/tmp/shim-$what
rm -rf "$work"
case $what in
  overhead) python3 -m bench.shim.overhead --engine sglang --out "$work" "$@"; rc=$?
            cp "$work/overhead.json" "$OUT/" 2>/dev/null
            (cd "$work" && tar czf "$OUT/overhead-logs.tgz" --exclude=cache --exclude=shim-plugin ./*-server.log ./*-maps.txt 2>/dev/null) ;;
  surge)    python3 -m bench.shim.surge --engine sglang --out "$work" "$@"; rc=$?
            cp "$work/surge.json" "$work/surge.png" "$OUT/" 2>/dev/null
            for m in static elastic; do
              tail -c 200000 "$work/run-$m/chimera.log" > "$OUT/chimera-$m.log" 2>/dev/null
            done
            tail -c 100000 "$work/run-elastic/engines/b-gpu0.log" > "$OUT/engine-b-elastic.log" 2>/dev/null ;;
  *) echo "unknown: $what"; exit 2 ;;
esac
exit $rc

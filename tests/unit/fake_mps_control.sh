#!/bin/sh
# Stands in for nvidia-cuda-mps-control in tests (supervisor/mps.py): `-d` starts a "daemon" (a
# sleep whose pid is kept in the pipe directory) unless one runs or the file `refuse` exists there;
# a command on stdin answers 0 while the daemon runs (`quit` stops it), else 1 like the real one.
# Every call is appended to `calls` in the pipe directory.
d="$CUDA_MPS_PIPE_DIRECTORY"
# A killed "daemon" stays a zombie until the host's init reaps it, which may take a while: a
# zombie (state Z in /proc/PID/stat) is not running.
running() {
  [ -f "$d/pid" ] || return 1
  state=$(cut -d' ' -f3 "/proc/$(cat "$d/pid")/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
if [ "$1" = "-d" ]; then
  echo "-d" >> "$d/calls"
  if [ -f "$d/refuse" ]; then echo "cannot start: refused"; exit 1; fi
  if running; then echo "An instance of this daemon is already running"; exit 1; fi
  sleep 1000 </dev/null >/dev/null 2>&1 &
  echo $! > "$d/pid"
  exit 0
fi
read -r cmd
echo "$cmd" >> "$d/calls"
if running; then
  if [ "$cmd" = "quit" ]; then kill "$(cat "$d/pid")"; rm -f "$d/pid"; fi
  exit 0
fi
echo "Cannot find MPS control daemon process"
exit 1

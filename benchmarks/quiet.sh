#!/usr/bin/env bash
# Run a command on quiet cores while sweeps train: pause every sweep cell on this machine (SIGSTOP), run the
# command, and let them go on (SIGCONT), also when the command fails or is interrupted. The paused cells lose
# nothing but the wall time the command takes. For the short timing passes that need the cores to themselves
# (`edgeprune report --retime`, a benchmark's side-by-side timing); not for anything long.
#   bash benchmarks/quiet.sh edgeprune report benchmarks/runs/cifar10_pai --retime --out benchmarks/results/cifar10/pai
# Paused: Ray's cell workers (`ray::_ray_cell`) and sweeps on the local executor (whose cells train in the sweep
# process itself). A Ray sweep's driver only waits, and stays as it is.
set -u
if [ $# -eq 0 ]; then
  echo "usage: bash benchmarks/quiet.sh COMMAND [ARGS...]  (runs COMMAND with the sweeps' cells paused)" >&2
  exit 2
fi
pids=""
for dir in /proc/[0-9]*; do  # /proc itself, not pgrep: procps is not on every machine
  pid=${dir#/proc/}
  [ "$pid" = $$ ] && continue
  args=$(tr '\0' ' ' < "$dir/cmdline" 2>/dev/null) || continue
  case "$args" in
    "ray::_ray_cell"*) pids="$pids $pid" ;;
    *"edgeprune sweep "*) case "$args" in *"--executor ray"*) ;; *) pids="$pids $pid" ;; esac ;;
  esac
done
pids=${pids# }
resume() { [ -n "$pids" ] && kill -CONT $pids 2>/dev/null; }
trap resume EXIT
trap 'exit 130' INT TERM
if [ -n "$pids" ]; then
  kill -STOP $pids
  echo "quiet.sh: paused sweep cells $pids; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  sleep 2
fi
"$@"

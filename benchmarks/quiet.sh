#!/usr/bin/env bash
# Run a command on quiet cores while sweeps train: pause every sweep cell on this machine (SIGSTOP), run the
# command, and let them go on (SIGCONT), also when the command fails or is interrupted. The paused cells lose
# nothing but the wall time the command takes. For the short timing passes that need the cores to themselves
# (`edgeprune report --retime`, a benchmark's side-by-side timing); not for anything long:
#   bash benchmarks/quiet.sh edgeprune report benchmarks/runs/cifar10_pai --retime --out benchmarks/results/cifar10/pai
# Paused: Ray's cell workers (`ray::_ray_cell`) and sweeps on the local executor (whose cells train in the sweep
# process itself). A Ray sweep's driver only waits, and stays as it is.
# Ray loses a worker paused for minutes: on 2026-12-08 a 4-minute pause made the raylet drop a training cell's
# worker, hand its slot to the next cell and queue the dropped one for a retry, while the paused process, let go,
# trained on (a 60-second pause did not). So the cells are let go after QUIET_MAX_S seconds (default 30) whatever
# the command is doing, with a warning: the rest of its timing ran under load. For longer work, stop the sweep (kill -TERM) and start it again.
set -u
if [ $# -eq 0 ]; then
  echo "usage: bash benchmarks/quiet.sh COMMAND [ARGS...]  (runs COMMAND with the sweeps' cells paused;" \
       "QUIET_MAX_S, default 30, caps the pause)" >&2
  exit 2
fi
max=${QUIET_MAX_S:-30}
case "$max" in
  ''|*[!0-9]*|0) echo "quiet.sh: QUIET_MAX_S must be a whole number of seconds, at least 1, got '$max'" \
                      "(30 is the default)" >&2
                 exit 2 ;;
esac
match=${QUIET_MATCH:-}
pids=""
for dir in /proc/[0-9]*; do  # /proc itself, not pgrep: procps is not on every machine
  pid=${dir#/proc/}
  [ "$pid" = $$ ] && continue
  args=$(tr '\0' ' ' < "$dir/cmdline" 2>/dev/null) || continue
  if [ -n "$match" ]; then
    case "$args" in "$match"*) pids="$pids $pid" ;; esac
    continue
  fi
  case "$args" in
    "ray::_ray_cell"*) pids="$pids $pid" ;;
    *"edgeprune sweep "*)
      case "$args" in *"--executor ray"*|*"--executor=ray"*) ;; *) pids="$pids $pid" ;; esac ;;
  esac
done
pids=${pids# }
cmd=""
watchdog=""
resume() {
  if [ -n "$cmd" ]; then kill "$cmd" 2>/dev/null; wait "$cmd" 2>/dev/null; fi
  [ -n "$pids" ] && kill -CONT $pids 2>/dev/null
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
}
trap resume EXIT
trap 'exit 130' INT TERM
start=$SECONDS
if [ -n "$pids" ]; then
  if command -v setsid >/dev/null 2>&1; then  # outlives this script, whatever ends it; started before the pause
    setsid sh -c "sleep $((max + 5)); kill -CONT $pids 2>/dev/null" </dev/null >/dev/null 2>&1 &
    watchdog=$!
  fi
  kill -STOP $pids
  echo "quiet.sh: paused sweep cells $pids for at most ${max} s; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  sleep 1  # the paused cells' last work drains from the cores
else
  echo "quiet.sh: no sweep cells running here; the command runs beside whatever else does" >&2
fi
"$@" <&0 &  # in the background (stdin kept), so that the pause can end while it runs
cmd=$!
while kill -0 "$cmd" 2>/dev/null; do
  if [ -n "$pids" ] && [ $((SECONDS - start)) -ge "$max" ]; then
    kill -CONT $pids 2>/dev/null
    pids=""
    echo "quiet.sh: warning: the command ran past ${max} s; the sweep cells go on from here, so the rest of its" \
         "timing is under load" >&2
  fi
  sleep 0.2
done
wait "$cmd"
status=$?
cmd=""
exit "$status"

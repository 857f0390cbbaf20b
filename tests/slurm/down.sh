#!/usr/bin/env bash
# Stop the cluster tests/slurm/up.sh started: cancel its jobs, then stop its daemons by pid file.
# Logs stay in $ILM_SLURM_ROOT/log for a post-mortem; --purge removes the whole root and fake GPUs.
# Safe to run when nothing is up.
set -uo pipefail
ROOT=${ILM_SLURM_ROOT:-/var/lib/ilm-slurm}
RUN=$ROOT/run
export SLURM_CONF=$ROOT/etc/slurm.conf PATH=$PATH:/usr/sbin:/sbin

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() { # TERM, up to 10 s, then KILL
  local file=$1 pid
  alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill -TERM "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "stopped $(basename "$file" .pid) (pid $pid)"
  rm -f "$file"
}

# Jobs first, so no slurmstepd or job process outlives the daemons.
if alive "$RUN/slurmctld.pid"; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    scancel $jobs
    for _ in $(seq 60); do [ -z "$(squeue -h -t R,CG,PD -o %A 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi
stop_pidfile "$RUN/slurmd.pid"
stop_pidfile "$RUN/slurmctld.pid"
if [ -e "$RUN/munged.ours" ]; then
  stop_pidfile /run/munge/munged.pid
  rm -f "$RUN/munged.ours"
fi

# The default-path symlink up.sh made (never a site's own slurm.conf).
[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$SLURM_CONF" ] && rm -f /etc/slurm/slurm.conf

if [ "${1:-}" = --purge ]; then
  rm -rf "$ROOT"
  rm -f /dev/ilm-fakegpu[0-9]*
  echo "purged $ROOT"
fi
exit 0

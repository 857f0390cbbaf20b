#!/usr/bin/env bash
# Start a private single-node SLURM cluster (slurmctld + slurmd + munged) for the tests, as root.
#
# Everything lives under $ILM_SLURM_ROOT (default /var/lib/ilm-slurm): its own slurm.conf, ports,
# state, logs and pid files. Clients find the config through SLURM_CONF and, because the executor
# plugin's job step drops SLURM_CONF before its inner srun, through a symlink
# /etc/slurm/slurm.conf -> $ROOT/etc/slurm.conf, made only where no slurm.conf exists (a site's
# configuration is never touched: the script refuses to start instead). No systemd, cgroups or slurmdbd: job states come
# from squeue (MinJobAge=300 keeps finished jobs visible), finished jobs go to $ROOT/log/jobcomp.log.
# Fake GPUs (GRES backed by character devices) make `--gpus=1` schedulable without a GPU.
#
# Settings (environment): ILM_SLURM_ROOT, ILM_SLURM_PARTITION (debug), ILM_SLURM_FAKE_GPUS (2),
# ILM_SLURM_PORT (16817; slurmd uses +1), ILM_SLURM_INSTALL (1: apt-get the packages when missing),
# ILM_SLURM_NODE_CPUS / ILM_SLURM_NODE_MEM_MB (default: what slurmd detects): a node announced bigger
# than the machine, so a real profile's requests (e.g. 32 GB for training) are schedulable here.
# Nothing is enforced (no cgroups), so the jobs simply share the machine.
# Exit status: 0 up; 77 (automake's "skip") refused before starting anything: not root, no packages
# and no apt-get, a cluster already up, ...; anything else: a start that failed. The last line on
# stderr says why.
set -euo pipefail

ROOT=${ILM_SLURM_ROOT:-/var/lib/ilm-slurm}
PARTITION=${ILM_SLURM_PARTITION:-debug}
FAKE_GPUS=${ILM_SLURM_FAKE_GPUS:-2}
PORT=${ILM_SLURM_PORT:-16817}
INSTALL=${ILM_SLURM_INSTALL:-1}
ETC=$ROOT/etc LOG=$ROOT/log RUN=$ROOT/run
export SLURM_CONF=$ETC/slurm.conf

cannot() { echo "cannot start SLURM: $*" >&2; exit 77; }
fail() { echo "SLURM failed to start: $*" >&2; exit 1; }
# The last error lines of a daemon's log, on one line (the caller reads only stderr's last line).
errors() { grep -E 'fatal|error' "$LOG/$1.log" 2>/dev/null | grep -v -E 'pmix|MPI: Cannot create context' | tail -"${2:-2}" | tr '\n' ' '; }
# Both daemons write their pid file only after they fork (slurmd after loading its plugins and
# binding its port), so a missing file means "still starting"; a file whose process is gone
# means the daemon died. (Checking the file right after `slurmd` returned failed CI once.)
died() { [ -s "$RUN/$1.pid" ] && ! kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

[ "$(uname -s)" = Linux ] || cannot "needs Linux"
[ "$(id -u)" = 0 ] || cannot "needs root (slurmd runs jobs as their users; run the tests as root)"

# 1. Debian packages, installed only when a command is missing.
export PATH=$PATH:/usr/sbin:/sbin
need=(slurmctld slurmd sbatch squeue scancel sinfo munged munge unmunge)
missing() { for c in "${need[@]}"; do command -v "$c" >/dev/null || return 0; done; return 1; }
if missing; then
  [ "$INSTALL" = 1 ] || cannot "slurm/munge commands missing and ILM_SLURM_INSTALL=0"
  command -v apt-get >/dev/null || cannot "slurm/munge commands missing and no apt-get to install them"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge; } \
    >"${TMPDIR:-/tmp}/ilm-slurm-apt.log" 2>&1 \
    || cannot "apt-get install slurmctld slurmd slurm-client munge failed (see ${TMPDIR:-/tmp}/ilm-slurm-apt.log)"
  missing && cannot "packages installed but commands still missing: ${need[*]}"
fi

# 2. Refuse to start twice (down.sh first).
for d in slurmctld slurmd; do
  if [ -s "$RUN/$d.pid" ] && kill -0 "$(cat "$RUN/$d.pid")" 2>/dev/null; then
    cannot "$d already running (pid $(cat "$RUN/$d.pid")): another test session? else tests/slurm/down.sh"
  fi
done
for p in "$PORT" $((PORT + 1)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then cannot "port $p is in use (set ILM_SLURM_PORT)"; fi
done

# The default config path must be free or ours (see the header).
SITE_CONF=/etc/slurm/slurm.conf
if [ -e "$SITE_CONF" ] || [ -L "$SITE_CONF" ]; then
  [ "$(readlink "$SITE_CONF")" = "$SLURM_CONF" ] || cannot "$SITE_CONF exists (a real SLURM setup?); not touching it"
fi

# 3. A fresh cluster: no state, no logs from an earlier session.
rm -rf "$ROOT/ctld" "$ROOT/spool" "$LOG"
mkdir -p "$ETC" "$ROOT/ctld" "$ROOT/spool" "$LOG" "$RUN"

# 4. The submit host's name must resolve: slurmstepd connects back to it.
getent hosts "$(hostname)" >/dev/null || echo "127.0.1.1 $(hostname)" >>/etc/hosts

# 5. munge: reuse a working munged (a site's or systemd's), else start one as user munge.
if ! { munge -n | unmunge; } >/dev/null 2>&1; then
  id munge >/dev/null 2>&1 || cannot "no user 'munge' (is the munge package installed?)"
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey -c || cannot "cannot create /etc/munge/munge.key"
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  runuser -u munge -- munged || cannot "munged did not start"
  touch "$RUN/munged.ours" # down.sh stops only a munged started here
  for _ in $(seq 40); do { munge -n | unmunge; } >/dev/null 2>&1 && break; sleep 0.25; done
fi
{ munge -n | unmunge; } >/dev/null 2>&1 || fail "munge does not work (munge -n | unmunge)"

# 6. The hardware as slurmd sees it; 95% of the memory so the node never drains for lack of it.
hw=$(slurmd -C | head -1)
val() { tr ' ' '\n' <<<"$hw" | sed -n "s/^$1=//p"; }
CPUS=$(val CPUs) SOCKETS=$(val SocketsPerBoard) CORES=$(val CoresPerSocket) THREADS=$(val ThreadsPerCore)
MEM=$(($(val RealMemory) * 95 / 100))
OVERRIDES=""
if [ -n "${ILM_SLURM_NODE_CPUS:-}${ILM_SLURM_NODE_MEM_MB:-}" ]; then
  CPUS=${ILM_SLURM_NODE_CPUS:-$CPUS} MEM=${ILM_SLURM_NODE_MEM_MB:-$MEM}
  SOCKETS=1 CORES=$CPUS THREADS=1
  OVERRIDES="SlurmdParameters=config_overrides" # trust slurm.conf, not the detected hardware
fi

# 7. Fake GPUs: character devices with /dev/null's numbers; without mknod, a file-less count.
: >"$ETC/gres.conf"
GRES_TYPES="" GRES_NODE=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu" GRES_NODE="Gres=gpu:$FAKE_GPUS"
  devices=1
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    [ -c "/dev/ilm-fakegpu$i" ] || mknod -m 666 "/dev/ilm-fakegpu$i" c 1 3 2>/dev/null || { devices=0; break; }
  done
  if [ $devices = 1 ]; then
    echo "NodeName=localhost Name=gpu File=/dev/ilm-fakegpu[0-$((FAKE_GPUS - 1))]" >"$ETC/gres.conf"
  else
    echo "NodeName=localhost Name=gpu Count=$FAKE_GPUS" >"$ETC/gres.conf"
  fi
fi

cat >"$SLURM_CONF" <<EOF
# Written by tests/slurm/up.sh: a private single-node test cluster.
ClusterName=ilmtest
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$ROOT/ctld
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.log
# Finished jobs stay visible to squeue for an hour: the executor plugin reads job states from
# squeue (no slurmdbd, no sacct), and the tests read each job's rule and GPUs from it afterwards.
MinJobAge=3600
KillWait=5
DefMemPerCPU=1024
$OVERRIDES
$GRES_TYPES
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

mkdir -p "$(dirname "$SITE_CONF")"
ln -sfn "$SLURM_CONF" "$SITE_CONF"

# 8. Daemons (both daemonize; -c: ignore saved state; -N: our node name).
rm -f "$RUN/slurmctld.pid" "$RUN/slurmd.pid"
slurmctld -c -f "$SLURM_CONF" || fail "slurmctld exited: $(errors slurmctld 3)"
slurmd -N localhost -f "$SLURM_CONF" || fail "slurmd exited: $(errors slurmd 3)"

st=""
for _ in $(seq 120); do
  for d in slurmctld slurmd; do
    if died $d; then fail "$d died: $(errors $d)"; fi
  done
  st=$(timeout 5 sinfo -h -n localhost -o %t 2>/dev/null || true)
  [ "$st" = idle ] && break
  sleep 0.25
done
if [ "$st" != idle ]; then
  sinfo -R >&2 || true
  tail -5 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2 || true
  for d in slurmctld slurmd; do [ -s "$RUN/$d.pid" ] || fail "$d wrote no pid file in 30 s: $(errors $d)"; done
  fail "node state '$st' after 30 s, not idle"
fi

# 9. One real batch job through the whole path (munge, slurmd, slurmstepd, GRES).
gpus=""
[ -n "$GRES_NODE" ] && gpus="--gpus=1"
jid=$(sbatch --parsable -p "$PARTITION" -t 1 $gpus -o /dev/null --wrap true) || fail "sbatch rejected a trivial job"
for _ in $(seq 80); do
  state=$(timeout 5 squeue -h -j "$jid" -t all -o %T 2>/dev/null || true)
  [ "$state" = COMPLETED ] && break
  sleep 0.25
done
[ "$state" = COMPLETED ] || fail "a trivial job ended as '$state': $(tail -3 "$LOG/slurmd.log" | tr '\n' ' ')"

cat <<EOF
SLURM_CONF=$SLURM_CONF
ILM_SLURM_PARTITION=$PARTITION
ILM_SLURM_JOBCOMP=$LOG/jobcomp.log
ILM_SLURM_CPUS=$CPUS
ILM_SLURM_MEM_MB=$MEM
ILM_SLURM_GPUS=${GRES_NODE:+$FAKE_GPUS}
EOF

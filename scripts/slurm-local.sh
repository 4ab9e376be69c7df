#!/usr/bin/env bash
# A one-node Slurm on 127.0.0.1 for the cluster tests: `start` installs Debian's slurm-wlm and munge
# when missing (needs root), writes a configuration and a munge key under a state folder, and starts
# munged, slurmctld and slurmd; `stop` ends exactly the daemons `start` started, by their pid files.
#
#   scripts/slurm-local.sh start [STATE]   (default STATE: ${TMPDIR:-/tmp}/ckpt-scan-slurm)
#   scripts/slurm-local.sh stop  [STATE]
#   source STATE/env.sh                    SLURM_CONF for sbatch, squeue, scontrol
#
# Node CPUs and memory come from this machine; proctrack/linuxproc and task/none need no cgroups;
# accounting is off (no slurmdbd), so job history comes from `scontrol show job` and the jobcomp log.
set -euo pipefail

cmd=${1:-}
STATE=${2:-${TMPDIR:-/tmp}/ckpt-scan-slurm}
info() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { info "error: $*"; exit 1; }

install_missing() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null && return
  [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are missing; installing them needs root"
  info "installing slurm-wlm and munge (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -q slurm-wlm munge >/dev/null; } ||
    die "apt-get install slurm-wlm munge failed"
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A port nothing listens on, from $1 upwards (another local Slurm may hold the defaults).
free_port() {
  local port=$1
  while (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 2)); done
  echo "$port"
}

write_config() {
  local host cpus mem ctld_port slurmd_port
  host=$(hostname -s)
  ctld_port=$(free_port 16817)
  slurmd_port=$(free_port $((ctld_port + 1)))
  cpus=$(nproc)
  # Leave a quarter of the memory to the system and the daemons.
  mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.75 }' /proc/meminfo)
  mkdir -p "$STATE"/{spool,state,log,munge}
  chmod 700 "$STATE/munge"
  if [[ ! -f $STATE/munge/munge.key ]]; then
    head -c 1024 /dev/urandom >"$STATE/munge/munge.key"
    chmod 400 "$STATE/munge/munge.key"
  fi
  cat >"$STATE/slurm.conf" <<EOF
ClusterName=ckpt-scan-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
MaxArraySize=10001
SchedulerParameters=defer_batch
# Without a per-CPU default every job would ask for the whole node's memory and run alone.
DefMemPerCPU=$((mem / cpus))
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  printf 'export SLURM_CONF=%q\n' "$STATE/slurm.conf" >"$STATE/env.sh"
}

start() {
  install_missing
  if running "$STATE/slurmctld.pid" && running "$STATE/slurmd.pid" && running "$STATE/munged.pid"; then
    info "already running ($STATE)"
    return
  fi
  write_config
  export SLURM_CONF=$STATE/slurm.conf
  running "$STATE/munged.pid" || munged --key-file="$STATE/munge/munge.key" \
    --socket="$STATE/munge/munge.socket" --pid-file="$STATE/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munge.seed" --force
  running "$STATE/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
  running "$STATE/slurmd.pid" || slurmd -f "$SLURM_CONF"
  # Ready when the node accepts work.
  local i state
  for ((i = 0; i < 60; i++)); do
    state=$(sinfo -h -o '%t' 2>/dev/null | head -n1 || true)
    if [[ $state == idle* || $state == mix* || $state == alloc* ]]; then
      info "up: node $(hostname -s) ($(nproc) CPUs), state in $STATE; source $STATE/env.sh"
      return
    fi
    sleep 1
  done
  tail -n 20 "$STATE"/log/*.log >&2 || true
  die "the node did not become idle within 60 s (logs above)"
}

stop() {
  local daemon pid i
  for daemon in slurmd slurmctld munged; do
    [[ -f $STATE/$daemon.pid ]] || continue
    pid=$(cat "$STATE/$daemon.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$STATE/$daemon.pid"
  done
  info "stopped the daemons started in $STATE"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: scripts/slurm-local.sh start|stop [STATE]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying `SLURM=1 bash benchmark.sh` (and tests/test_grid.py) without one.
#
#   sudo bash scripts/local_slurm.sh          # install (apt-get), configure, start munged, slurmctld and slurmd
#   sudo bash scripts/local_slurm.sh stop     # stop the three daemons this script started
#
# Debian/Ubuntu, as root. The node is this machine (its hostname, all its CPUs and memory), one partition `local`;
# no cgroups (proctrack/linuxproc, task/none: works in containers), no accounting database.
# Logs: /var/log/slurm/slurm{ctld,d}.log. Safe to rerun: it restarts the daemons with a fresh config.
set -euo pipefail
CONF=/etc/slurm/slurm.conf
PIDS="/run/slurmctld.pid /run/slurmd.pid /run/munge/munged.pid"

stop() {
  for pidfile in $PIDS; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 1
}
[ "${1:-start}" = stop ] && { stop; exit 0; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi

host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
mkdir -p /etc/slurm /var/lib/slurm/slurmd /var/lib/slurm/slurmctld /var/log/slurm /run/munge
cat > "$CONF" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

stop
# munge: the package made /etc/munge/munge.key; make one if it did not
[ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
slurmctld
slurmd
for _ in $(seq 30); do  # until the controller answers and the node is up
  if sinfo -h -N -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    sinfo
    exit 0
  fi
  scontrol update nodename="$host" state=resume 2>/dev/null || true
  sleep 1
done
echo "slurm did not come up; see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log" >&2
exit 1

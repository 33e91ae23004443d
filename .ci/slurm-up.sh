#!/usr/bin/env bash
# Starts a single-node Slurm on this machine for tests/slurm.rs: installs
# Debian's slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf for
# this host (state, spool and logs under $ESPALIER_SLURM_DIR, default
# /tmp/espalier-slurm), starts munged, slurmctld and slurmd as root, and waits
# until `sinfo` shows the node idle. Stop it with .ci/slurm-down.sh.
set -euo pipefail
D=${ESPALIER_SLURM_DIR:-/tmp/espalier-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by espalier .ci/slurm-up.sh"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-up: installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up: $CONF exists and was not written by this script; not touching it" >&2
    exit 1
fi

# Leftovers of an earlier run.
bash "$(dirname "$0")/slurm-down.sh" >/dev/null 2>&1 || true
rm -rf "$D"
mkdir -p "$D/state" "$D/spool" "$D/log" /etc/slurm

# munge: a key (the package makes one; make one if it did not), then the daemon.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "slurm-up: munge does not work" >&2; exit 1; }

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$CONF" <<CONF
$MARK
ClusterName=espalier-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to scontrol for an hour.
MinJobAge=3600
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
DefMemPerCPU=$(( MEM / CPUS ))
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -i
slurmd
for _ in $(seq 120); do
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qx idle; then
        echo "slurm-up: node $HOST idle ($CPUS CPUs, ${MEM} MB); state and logs in $D"
        exit 0
    fi
    sleep 0.5
done
echo "slurm-up: the node never became idle:" >&2
sinfo -N >&2 || true
tail -n 20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
exit 1

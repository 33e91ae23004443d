#!/usr/bin/env bash
# Stops what .ci/slurm-up.sh started: slurmd, slurmctld and munged (by the
# pid files they wrote), and cancels any job still queued.
D=${ESPALIER_SLURM_DIR:-/tmp/espalier-slurm}
command -v scancel >/dev/null && scancel --full --quiet -u root 2>/dev/null || true
stop() { # pid file
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
stop "$D/slurmd.pid"
stop "$D/slurmctld.pid"
stop /run/munge/munged.pid
echo "slurm-down: stopped"

#!/usr/bin/env bash
# Stop the one-node Slurm of scripts/slurm-up.sh: exactly the daemons it started, by the PIDs it recorded
# (slurmd, slurmctld, and munged if it started one), then remove its slurm.conf and state. Idempotent: with
# nothing running it says so and exits 0. The installed packages stay.
set -euo pipefail
dir=${ATTNROBUST_SLURM_DIR:-/tmp/attnrobust-slurm}
conf=/etc/slurm/slurm.conf
marker="# written by attnrobust scripts/slurm-up.sh"

stop() {  # stop NAME: SIGTERM the PID in $dir/pids/NAME.pid, SIGKILL after 10 s
    local file="$dir/pids/$1.pid" pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null && grep -q "$1" "/proc/$pid/comm" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
        echo "slurm-down: stopped $1 (pid $pid)"
    fi
    rm -f "$file"
}

[ -d "$dir" ] || { echo "slurm-down: nothing to stop ($dir does not exist)"; exit 0; }
# jobs first, while the controller still answers: their processes are children of slurmstepd, not of slurmd
if [ -f "$dir/pids/slurmctld.pid" ] && command -v scancel >/dev/null; then
    timeout 10 scancel --full --quiet --partition=debug 2>/dev/null || true
fi
stop slurmd
stop slurmctld
stop munged
if [ -f "$conf" ] && grep -qF "$marker" "$conf"; then rm -f "$conf"; fi
rm -rf "$dir"

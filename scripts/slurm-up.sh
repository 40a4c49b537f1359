#!/usr/bin/env bash
# Start a one-node Slurm on this machine (Debian or Ubuntu, as root, no systemd needed): munged, slurmctld and
# slurmd on 127.0.0.1, one partition, no accounting database. For trying a study with eval.executor = "slurm"
# locally and for the real-Slurm tests (tests/test_slurm_real.py); scripts/slurm-down.sh stops exactly what this
# started. Idempotent: a second call finds the daemons it started alive and only checks that a job runs.
#
#   sudo scripts/slurm-up.sh        # prints the seconds it took; then: attnrobust run ... --set eval.executor=slurm
#
# Its files: /etc/slurm/slurm.conf (Debian's default place, so sbatch, squeue and submitit need no SLURM_CONF;
# refused if a slurm.conf not written by this script is there) and $ATTNROBUST_SLURM_DIR (default
# /tmp/attnrobust-slurm: state, spool, logs and the PIDs of the daemons started).
set -euo pipefail
started=$(date +%s%N)
dir=${ATTNROBUST_SLURM_DIR:-/tmp/attnrobust-slurm}
conf=/etc/slurm/slurm.conf
marker="# written by attnrobust scripts/slurm-up.sh"

die() { echo "slurm-up: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root (it installs packages and starts munged, slurmctld and slurmd)"
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mkdir -p "$dir"/{state,spool,log,pids}

# -- the packages (Debian's Slurm 22.05 in bookworm: 8 packages, 13 MB)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurmctld slurmd slurm-client munge)
    install() { apt-get install -y -q --no-install-recommends "${pkgs[@]}"; }
    install >"$dir/log/apt.log" 2>&1 || { apt-get update -q && install; } >>"$dir/log/apt.log" 2>&1 \
        || die "could not install ${pkgs[*]} with apt-get; see $dir/log/apt.log"
fi
if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
    die "$conf exists and was not written by this script (a real cluster's?); not touching it"
fi

# -- munge: Debian's package made the key; /run/munge is gone after a reboot of a machine without systemd
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$dir/pids/munged.pid"
    munge -n | unmunge >/dev/null || die "munged started but munge -n | unmunge fails (see /var/log/munge)"
fi

# -- slurm.conf: one node, as slurmd -C sees it; short intervals so a test waits seconds, not minutes
node=$(hostname -s)
hardware=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")
mkdir -p /etc/slurm
cat > "$conf.new" <<EOF
$marker: a one-node cluster for trying attnrobust studies; scripts/slurm-down.sh stops it
ClusterName=attnrobust
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again cred_expire seconds after its requeue (Slurm's default: 120)
AuthInfo=cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/pids/slurmctld.pid
SlurmdPidFile=$dir/pids/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# no cgroups in a container: processes tracked by their parent PIDs, no CPU binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# cores and memory are what jobs ask for (a job without --mem gets DefMemPerCPU per core)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( memory / cpus / 2 ))
# no accounting database: sacct answers "Slurm accounting storage is disabled" (attnrobust asks squeue instead)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# jobs may be requeued (submitit does so at a time limit); a finished job stays in squeue for MinJobAge seconds
JobRequeue=1
MinJobAge=300
# seconds, not Slurm's minutes: look at pending jobs every second, kill a cancelled job's processes 2 s after SIGTERM
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
KillWait=2
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
changed=yes
if cmp -s "$conf.new" "$conf"; then changed=no; fi
mv "$conf.new" "$conf"

# -- the daemons (each writes its PID file; a restart reads its state from $dir/state)
if alive "$dir/pids/slurmctld.pid"; then
    if [ $changed = yes ]; then scontrol reconfigure; fi
else
    slurmctld -f "$conf"
fi
alive "$dir/pids/slurmd.pid" || slurmd -f "$conf"

# a restarted slurmctld reports the node idle before slurmd has registered: a job that runs is the readiness check
for _ in $(seq 60); do
    if timeout 20 srun --quiet --time=1 --mem=64 --ntasks=1 true 2>/dev/null; then
        ms=$(( ($(date +%s%N) - started) / 1000000 ))
        printf 'slurm-up: a one-node Slurm answers on %s (%s CPUs, %s MB) after %d.%d s; ' \
            "$node" "$cpus" "$memory" $((ms / 1000)) $((ms % 1000 / 100))
        echo "stop it with scripts/slurm-down.sh"
        exit 0
    fi
    sleep 0.5
done
die "no probe job ran within a minute; see $dir/log/slurmctld.log and $dir/log/slurmd.log"

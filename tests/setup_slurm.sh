#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests/test_slurm.py and
# tests/test_distributed.py (and benchmarks/scale.py).
#
# Idempotent; run as root (CI runs it from .ci/run before `make test`):
#   - installs Debian's slurm-wlm and munge if they are missing;
#   - writes /etc/slurm/slurm.conf for this host, its cores and memory as
#     `slurmd -C` reports them (never overwrites a slurm.conf it did not write);
#   - creates the munge key, starts munged, slurmctld and slurmd;
#   - waits until `sinfo` shows the node idle.
#
# No accounting database (AccountingStorageType=accounting_storage/none):
# job status comes from `squeue` (finished jobs stay listed for MinJobAge
# seconds), and every finished job is appended to the job completion log
# $SLURM_JOBCOMP_LOG, which the tests read to prove that jobs ran through SLURM.
# No cgroups either (proctrack/linuxproc, task/none): they need a real init
# system and kernel support that containers often lack.
set -euo pipefail

PARTITION=${SLURM_PARTITION:-debug}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by trackflow tests/setup_slurm.sh"
LOG_DIR=/var/log/slurm
SLURM_JOBCOMP_LOG=$LOG_DIR/jobcomp.log
SPOOL=/var/spool/slurmd
STATE=/var/lib/slurm/slurmctld

say() { echo "setup_slurm: $*"; }
die() { echo "setup_slurm: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"

# --- packages --------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- munge -----------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# --- slurm.conf ------------------------------------------------------------
HOST=$(hostname -s)
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
NODE_LINE=$(slurmd -C | head -n 1)
case "$NODE_LINE" in NodeName=*) ;; *) die "unexpected \`slurmd -C\` output: $NODE_LINE" ;; esac
NODE_LINE="NodeName=$HOST ${NODE_LINE#NodeName=* } NodeAddr=127.0.0.1 State=UNKNOWN"

install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$SPOOL" "$STATE" /run/slurm
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    say "$CONF exists and was not written by this script: using it as it is"
else
    NEW_CONF=$(mktemp)
    cat >"$NEW_CONF" <<EOF
$MARKER
# A one-node cluster on $HOST for trackflow's tests. Not for production.
ClusterName=trackflow
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=$SPOOL
StateSaveLocation=$STATE
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: containers rarely offer them to slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no accounting database: squeue answers for running and recent jobs ...
AccountingStorageType=accounting_storage/none
# ... which it keeps listing for MinJobAge seconds after they end
MinJobAge=300
# ... and every finished job is appended here
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_JOBCOMP_LOG
# cores and memory are consumable, so several small jobs share the node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets this much per core, not the whole node
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
# quick turn-around for short test jobs
MessageTimeout=20
KillWait=5
InactiveLimit=0
Waittime=0
$NODE_LINE
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [ -e "$CONF" ] && cmp -s "$NEW_CONF" "$CONF"; then
        rm -f "$NEW_CONF"
    else
        say "writing $CONF"
        mv "$NEW_CONF" "$CONF"
        chmod 0644 "$CONF"
        CONF_CHANGED=1
    fi
fi

# --- daemons ---------------------------------------------------------------
pid_of() { cat "$1" 2>/dev/null || true; }  # pidfile
running() {  # pidfile
    local pid; pid=$(pid_of "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
if [ "${CONF_CHANGED:-0}" = 1 ]; then
    # a new configuration: restart whatever runs with the old one
    for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
        if running "$pidfile"; then
            kill "$(pid_of "$pidfile")" 2>/dev/null || true
            for _ in $(seq 50); do running "$pidfile" || break; sleep 0.1; done
        fi
    done
fi
if ! running /run/slurm/slurmctld.pid; then
    say "starting slurmctld"
    slurmctld
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer: see $LOG_DIR/slurmctld.log"
if ! running /run/slurm/slurmd.pid; then
    say "starting slurmd"
    slurmd
fi

# --- wait for the node -----------------------------------------------------
state=""
for i in $(seq 150); do
    state=$(sinfo --noheader --nodes="$HOST" --format=%T 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            # a node that was down before (e.g. a restart) comes back here
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $HOST is '${state:-unknown}' instead of idle: see $LOG_DIR/slurmd.log and $LOG_DIR/slurmctld.log" ;;
esac
say "node $HOST is $state in partition $PARTITION (job completion log: $SLURM_JOBCOMP_LOG)"

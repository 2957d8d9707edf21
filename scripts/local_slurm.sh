#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, on loopback, for the tests marked `cluster` (and for trying the
# cluster scripts before a real cluster): munged, slurmctld and two slurmd (`slurmd -N n1|n2`, SLURM's
# multiple-slurmd build, each on its own port), configured in their own folder, never in /etc.
#
#   scripts/local_slurm.sh install  install slurm-wlm and munge if missing (apt-get, root), start nothing
#   scripts/local_slurm.sh start    install slurm-wlm and munge if missing (apt-get, root), write the config, start
#                                   the daemons, wait until both nodes are idle; prints `export SLURM_CONF=...`
#   scripts/local_slurm.sh status   the daemons' pids and `sinfo`; exit 1 when the cluster is not up
#   scripts/local_slurm.sh stop     cancel the cluster's jobs, stop the daemons it started (by their pid files only)
#
# Idempotent: `start` on a running cluster and `stop` on a stopped one do nothing. Folder: LCSBENCH_SLURM_DIR
# (default /tmp/lcsbench-slurm). Clients (sbatch, srun, squeue, scontrol) find the cluster through SLURM_CONF.
# The nodes are n1 and n2 (NodeAddr 127.0.0.1, names that do not resolve, as on clusters whose node names are not
# in DNS), each with this machine's cores, in one partition `local` that is the default.
set -euo pipefail
DIR=${LCSBENCH_SLURM_DIR:-/tmp/lcsbench-slurm}
CONF=$DIR/slurm.conf
CTLD_PORT=${LCSBENCH_SLURM_PORT:-17000}  # slurmctld; the nodes' slurmd on the next two ports
NODES=(n1 n2)
die() { echo "local_slurm.sh: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return
    [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed and installing them needs root (apt-get); " \
        "run as root or install them: apt-get install -y slurm-wlm munge"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get to install them"
    echo "local_slurm.sh: installing slurm-wlm and munge (apt-get, ~20 s)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1 \
        || { apt-get update -q >>"$DIR/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q slurm-wlm munge >>"$DIR/apt.log" 2>&1; } \
        || die "apt-get install slurm-wlm munge failed (log: $DIR/apt.log)"
}

write_config() {
    local cpus memory host
    cpus=$(nproc); memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 4 ))  # MiB per node
    host=$(hostname)
    mkdir -p "$DIR/state" "$DIR/munge"
    chown munge: "$DIR/munge"; chmod 755 "$DIR/munge"
    [[ -s $DIR/munge/munge.key ]] || { head -c 1024 /dev/urandom >"$DIR/munge/munge.key"; }
    chown munge: "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"
    cat >"$CONF" <<EOF
# written by scripts/local_slurm.sh: a two-node cluster on loopback (n1, n2 on this host)
ClusterName=lcsbench-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it starts again (default 120 s)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 1)) CPUs=$cpus RealMemory=$memory State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 2)) CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

nodes_idle() {
    local states
    states=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || return 1
    [[ $(grep -cE '^n[12] (idle|mix|alloc)$' <<<"$states") == 2 ]]
}

start() {
    mkdir -p "$DIR"
    if alive "$DIR/munge/munged.pid" && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd-n1.pid" \
            && alive "$DIR/slurmd-n2.pid" && nodes_idle; then
        echo "export SLURM_CONF=$CONF"; return
    fi
    [[ $(id -u) == 0 ]] || die "starting a local SLURM cluster needs root (munged as the munge user, slurmd as root)"
    install_packages
    write_config
    if ! alive "$DIR/munge/munged.pid"; then
        runuser -u munge -- munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
            --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
            || die "munged did not start (log: $DIR/munge/munged.log)"
    fi
    alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF" -i || die "slurmctld did not start (log: $DIR/slurmctld.log)"
    for node in "${NODES[@]}"; do
        mkdir -p "$DIR/spool-$node"
        alive "$DIR/slurmd-$node.pid" || slurmd -f "$CONF" -N "$node" \
            || die "slurmd -N $node did not start (log: $DIR/slurmd-$node.log)"
    done
    for _ in $(seq 60); do
        nodes_idle && { echo "export SLURM_CONF=$CONF"; return; }
        sleep 1
    done
    die "the nodes n1, n2 did not become idle within 60 s: $(SLURM_CONF=$CONF sinfo -N 2>&1 | tr '\n' ' ') " \
        "(logs: $DIR/slurmctld.log, $DIR/slurmd-n1.log)"
}

stop_pid_file() {  # SIGTERM the process named by a pid file, SIGKILL after 15 s
    local file=$1 pid
    alive "$file" || { rm -f "$file"; return; }
    pid=$(cat "$file"); kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$file"
}

stop() {
    [[ -f $CONF ]] || return 0
    if alive "$DIR/slurmctld.pid"; then  # the jobs first, so that no rank outlives the cluster
        SLURM_CONF=$CONF scancel --full --quiet -u root 2>/dev/null || true
        for _ in $(seq 40); do
            [[ -z $(SLURM_CONF=$CONF squeue -h -t running,completing 2>/dev/null) ]] && break; sleep 0.5
        done
    fi
    for node in "${NODES[@]}"; do stop_pid_file "$DIR/slurmd-$node.pid"; done
    stop_pid_file "$DIR/slurmctld.pid"
    stop_pid_file "$DIR/munge/munged.pid"
}

status() {
    local up=0 file
    for file in munge/munged slurmctld slurmd-n1 slurmd-n2; do
        if alive "$DIR/$file.pid"; then echo "$file: pid $(cat "$DIR/$file.pid")"
        else echo "$file: not running"; up=1; fi
    done
    [[ $up == 0 ]] && SLURM_CONF=$CONF sinfo -N && echo "export SLURM_CONF=$CONF"
    return $up
}

case ${1:-} in
    install) mkdir -p "$DIR"; install_packages ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: scripts/local_slurm.sh install|start|stop|status" ;;
esac

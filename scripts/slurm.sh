#!/usr/bin/env bash
# slurm.sh runs a private single-node Slurm cluster (Debian's slurm-wlm:
# slurmctld + slurmd, authenticated by munge) rooted in one folder, for the
# tests that run the grid as a Slurm array job. Nothing outside the folder
# is touched: munged gets its own key, socket and logs, and slurmctld and
# slurmd their own slurm.conf, ports, spool and state, so the cluster can
# run beside a system one, or beside another private one.
#
#   scripts/slurm.sh install     install slurm-wlm and munge with apt-get
#                                (root or sudo); does nothing when present
#   scripts/slurm.sh start DIR [PID]
#                                start a cluster in DIR (created; it should
#                                be empty) and wait until its node is idle;
#                                prints SLURM_CONF=DIR/slurm.conf, which the
#                                client commands (sbatch, squeue) need. With
#                                PID, a watchdog stops the cluster once that
#                                process has ended (a test killed before its
#                                cleanup leaves no daemons behind)
#   scripts/slurm.sh stop DIR    stop the cluster of DIR (its daemons, by
#                                the pid files in DIR)
#   scripts/slurm.sh check       exit 0 when a cluster can be started here
#                                (the daemons are installed and this is
#                                root), else say why and exit 1
#
# The daemons run as root (slurmd must, to start jobs as their user). The
# node offers every CPU of the machine (CR_CPU), so array tasks that ask for
# one CPU each run side by side.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

sbin() { # a daemon's path, also where /usr/sbin is not on PATH
	command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || return 1
}

check() {
	local d missing=""
	for d in munged slurmctld slurmd; do
		sbin "$d" >/dev/null || missing="$missing $d"
	done
	for d in sbatch squeue sinfo scontrol; do
		command -v "$d" >/dev/null || missing="$missing $d"
	done
	if [ -n "$missing" ]; then
		say "missing:$missing (scripts/slurm.sh install, or apt-get install slurm-wlm munge)"
		return 1
	fi
	if [ "$(id -u)" != 0 ]; then
		say "slurmd must run as root to start jobs; this is uid $(id -u)"
		return 1
	fi
}

install() {
	if check 2>/dev/null; then
		say "slurm-wlm and munge already installed"
		return
	fi
	aptinstall "slurm-wlm and munge" slurm-wlm munge
	check
}

# freeport prints a TCP port that nothing listens on now.
freeport() {
	python3 - 2>/dev/null <<-'EOF' || shuf -i 20000-40000 -n 1
		import socket
		s = socket.socket()
		s.bind(("127.0.0.1", 0))
		print(s.getsockname()[1])
	EOF
}

start() {
	local dir=$1 owner=${2:-}
	if [ -n "$owner" ] && ! alive "$owner"; then
		die "owner process $owner is not running"
	fi
	check || exit 1
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	# munged refuses folders that others can write to
	chmod 0700 "$dir"
	mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
	chmod 0711 "$dir/munge" # root owns it; clients need only to reach the socket

	local host cpus port1 port2 mem
	host=$(hostname -s)
	cpus=$(nproc)
	mem=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
	port1=$(freeport)
	port2=$(freeport)
	while [ "$port2" = "$port1" ]; do port2=$(freeport); done

	# munge: a fresh key, used by this cluster only
	dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
	chmod 0400 "$dir/munge/munge.key"
	"$(sbin munged)" --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
		--pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
		--seed-file="$dir/munge/munged.seed" ||
		die "munged did not start; see $dir/log/munged.log"

	cat >"$dir/slurm.conf" <<-EOF
		# written by scripts/slurm.sh: a private single-node cluster
		ClusterName=sdpipe
		SlurmctldHost=$host(127.0.0.1)
		SlurmctldPort=$port1
		SlurmdPort=$port2
		SlurmUser=root
		SlurmdUser=root
		AuthType=auth/munge
		CredType=cred/munge
		AuthInfo=socket=$dir/munge/munge.socket
		StateSaveLocation=$dir/state
		SlurmdSpoolDir=$dir/spool/%n
		SlurmctldPidFile=$dir/slurmctld.pid
		SlurmdPidFile=$dir/slurmd.pid
		SlurmctldLogFile=$dir/log/slurmctld.log
		SlurmdLogFile=$dir/log/slurmd.log
		SlurmdDebug=info
		SlurmctldDebug=info
		PlugStackConfig=$dir/plugstack.conf
		ProctrackType=proctrack/linuxproc
		TaskPlugin=task/none
		MpiDefault=none
		SchedulerType=sched/builtin
		SelectType=select/cons_tres
		SelectTypeParameters=CR_CPU
		SlurmdParameters=config_overrides
		ReturnToService=2
		JobAcctGatherType=jobacct_gather/none
		AccountingStorageType=accounting_storage/none
		JobCompType=jobcomp/none
		MaxArraySize=10001
		KillWait=5
		InactiveLimit=0
		NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
		PartitionName=sdpipe Nodes=$host Default=YES MaxTime=INFINITE State=UP
	EOF
	: >"$dir/plugstack.conf"
	echo "SLURM_CONF=$dir/slurm.conf" >"$dir/env"

	"$(sbin slurmctld)" -f "$dir/slurm.conf" -i ||
		die "slurmctld did not start; see $dir/log/slurmctld.log"
	"$(sbin slurmd)" -f "$dir/slurm.conf" -N "$host" ||
		die "slurmd did not start; see $dir/log/slurmd.log"

	# wait for the node to register and be idle
	local i state=""
	for i in $(seq 1 150); do
		state=$(SLURM_CONF="$dir/slurm.conf" sinfo -h -N -o %T 2>/dev/null || true)
		case "$state" in
		idle*) break ;;
		esac
		sleep 0.2
	done
	case "$state" in
	idle*) ;;
	*)
		tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
		stop "$dir"
		die "the node did not become idle (state \"$state\")"
		;;
	esac
	if [ -n "$owner" ]; then
		# detached from the caller's session and output, so that it
		# neither holds the caller's pipes open nor dies with its group
		setsid "$0" watch "$dir" "$owner" </dev/null >>"$dir/log/watchdog.log" 2>&1 &
	fi
	say "cluster up in $dir: node $host, $cpus CPUs, slurmctld port $port1, slurmd port $port2"
	echo "SLURM_CONF=$dir/slurm.conf"
}

# alive reports whether a process runs (a zombie, which a container's init
# may never reap, does not).
alive() {
	local state
	state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# stopdaemon ends the process of a pid file if it is still the named daemon.
stopdaemon() {
	local pidfile=$1 name=$2 pid i
	[ -f "$pidfile" ] || return 0
	pid=$(cat "$pidfile" 2>/dev/null) || return 0
	[ -n "$pid" ] && alive "$pid" || return 0
	grep -q "$name" "/proc/$pid/comm" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 100); do
		alive "$pid" || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

stop() {
	local dir=$1
	[ -d "$dir" ] || return 0
	if [ -f "$dir/slurm.conf" ]; then
		# end the cluster's jobs first, so that no job step outlives it
		SLURM_CONF="$dir/slurm.conf" timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
	fi
	stopdaemon "$dir/slurmd.pid" slurmd
	stopdaemon "$dir/slurmctld.pid" slurmctld
	stopdaemon "$dir/munge/munged.pid" munged
}

# watch stops the cluster of DIR once process PID has ended, or once DIR's
# cluster has been stopped by other means.
watch() {
	local dir=$1 owner=$2 pid
	while alive "$owner"; do
		[ -f "$dir/slurm.conf" ] || return 0
		pid=$(cat "$dir/slurmctld.pid" 2>/dev/null) && alive "$pid" || return 0
		sleep 1
	done
	say "owner $owner ended: stopping the cluster in $dir"
	stop "$dir"
}

case "${1:-}" in
install) install ;;
check) check ;;
start)
	[ $# = 2 ] || [ $# = 3 ] || die "usage: slurm.sh start DIR [PID]"
	start "$2" "${3:-}"
	;;
watch)
	[ $# = 3 ] || die "usage: slurm.sh watch DIR PID"
	watch "$2" "$3"
	;;
stop)
	[ $# = 2 ] || die "usage: slurm.sh stop DIR"
	stop "$2"
	;;
*)
	die "usage: slurm.sh install | check | start DIR [PID] | stop DIR"
	;;
esac

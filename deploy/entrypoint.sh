#!/bin/sh
# sdpipe: the container's entrypoint. One image serves, runs the grid or
# makes images, chosen by the first argument:
#
#   serve [server flags]          the HTTP service on all interfaces, port
#                                 $SAGEMAKER_BIND_TO_PORT, else $PORT, else
#                                 8080 (SageMaker's contract: it runs the
#                                 image with the one argument "serve" and
#                                 calls GET /ping and POST /invocations).
#                                 The default when no argument is given.
#   grid run|merge|search|sheet …  the grid program as it is
#   grid-shard ROOT [run flags]   one shard of a grid run into ROOT/shard-K,
#                                 K the array index the scheduler set
#                                 (JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX
#                                 or SLURM_ARRAY_TASK_ID); the grid itself
#                                 picks its shard from the same variables
#   grid-merge ROOT [merge flags] merge ROOT/shard-* into ROOT/merged
#   txt2img [flags]               one prompt to PNG files
#   help                          this text
#   anything else                 run as a command (a shell, for debugging)
#
# Settings from the environment, for platforms that pass no arguments:
#   SDPIPE_MODEL         a model folder for serve, grid-shard and txt2img;
#                        else /opt/ml/model when it holds a model (where
#                        SageMaker unpacks ModelDataUrl), else the default
#                        model embedded in the programs
#   SDPIPE_SERVE_FLAGS   extra server flags (split on blanks), e.g.
#                        "-queue 64 -batch 4"; SDPIPE_TOKEN sets the token
#   SDPIPE_DATA          serve: the folder that keeps async jobs and their
#                        results across restarts (a mounted volume); default
#                        none, jobs in memory: a container's own filesystem
#                        is lost with it and is often read-only
set -eu

usage() {
	sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# misuse says how a command is used, on stderr, and exits 2.
misuse() {
	echo "sdpipe: usage: $*" >&2
	exit 2
}

# modeldir prints the configured model folder, or nothing for the default.
modeldir() {
	if [ -n "${SDPIPE_MODEL:-}" ]; then
		echo "$SDPIPE_MODEL"
	elif [ -f "${SDPIPE_ML_MODEL:-/opt/ml/model}/model_index.json" ]; then
		echo "${SDPIPE_ML_MODEL:-/opt/ml/model}"
	fi
}

# shardindex prints the array index the scheduler set.
shardindex() {
	for v in "${JOB_COMPLETION_INDEX:-}" "${AWS_BATCH_JOB_ARRAY_INDEX:-}" "${SLURM_ARRAY_TASK_ID:-}"; do
		if [ -n "$v" ]; then
			echo "$v"
			return
		fi
	done
	echo "sdpipe: grid-shard: no array index (JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX or SLURM_ARRAY_TASK_ID)" >&2
	return 1
}

cmd=${1:-serve}
[ $# -gt 0 ] && shift
case "$cmd" in
serve)
	port=${SAGEMAKER_BIND_TO_PORT:-${PORT:-8080}}
	# shellcheck disable=SC2086 # the flags are split on purpose
	set -- ${SDPIPE_SERVE_FLAGS:-} "$@"
	m=$(modeldir)
	[ -z "$m" ] || set -- -model "$m" "$@"
	exec server -addr "0.0.0.0:$port" -data "${SDPIPE_DATA:-none}" "$@"
	;;
grid)
	exec grid "$@"
	;;
grid-shard)
	[ $# -ge 1 ] || misuse "grid-shard ROOT [grid run flags]"
	root=$1
	shift
	k=$(shardindex)
	m=$(modeldir)
	[ -z "$m" ] || set -- -model "$m" "$@"
	exec grid run -out "$root/shard-$k" "$@"
	;;
grid-merge)
	[ $# -ge 1 ] || misuse "grid-merge ROOT [grid merge flags]"
	root=$1
	shift
	set -- "$@" -out "$root/merged"
	found=false
	for d in "$root"/shard-*; do
		[ -d "$d" ] || continue
		set -- "$@" "$d"
		found=true
	done
	$found || {
		echo "sdpipe: grid-merge: no shard-* folder in $root" >&2
		exit 1
	}
	exec grid merge "$@"
	;;
txt2img)
	m=$(modeldir)
	[ -z "$m" ] || set -- -model "$m" "$@"
	exec txt2img "$@"
	;;
help | -h | -help | --help)
	usage
	;;
*)
	exec "$cmd" "$@"
	;;
esac

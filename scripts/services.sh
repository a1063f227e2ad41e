#!/usr/bin/env bash
# services.sh installs the services the end-to-end tests start themselves:
# Debian's nats-server (the job queue shared by replicas) and nginx (the
# load balancer in front of them). The tests run them as child processes
# on loopback ports with configs in temporary folders; nothing is started
# here, and no system service is configured.
#
#   scripts/services.sh install   apt-get install nats-server and nginx
#                                 (root or sudo); does nothing when present
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
case "${1:-}" in
install)
	if have nats-server && have nginx; then
		say "nats-server and nginx already installed"
		exit 0
	fi
	aptinstall "nats-server and nginx" nats-server nginx
	;;
*)
	echo "usage: services.sh install" >&2
	exit 2
	;;
esac

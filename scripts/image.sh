#!/usr/bin/env bash
# image.sh builds the project's container image (the Dockerfile at the root)
# with Debian's podman: rootful, vfs storage in a private folder, builds in
# chroot isolation, so it needs no container engine, no overlay file system
# and no systemd.
#
#   scripts/image.sh install       apt-get install podman and debootstrap
#   scripts/image.sh check         exit 0 when podman can run a container
#                                  here, else say why and exit 1
#   scripts/image.sh bases         make local base images for the build from
#                                  Debian's packages (for a machine that
#                                  reaches no container registry): a
#                                  bookworm minbase (debootstrap), the same
#                                  with this machine's Go toolchain and a C
#                                  compiler, and with npm
#   scripts/image.sh build [TAG]   build the image (default localhost/sdpipe:dev);
#                                  with SDPIPE_LOCAL_BASES=1 from the local
#                                  bases (made first if missing)
#   scripts/image.sh podman ARGS…  podman with this storage and the settings
#                                  that let containers run here
#
# The storage lives in $SDPIPE_PODMAN_DIR (default the sdpipe cache folder's
# podman/); remove it to start over.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

cache="${SDPIPE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sdpipe}"
store="${SDPIPE_PODMAN_DIR:-$cache/podman}"
base=localhost/sdpipe-base

# Containers get lower limits than ours: some sandboxes refuse to set a
# limit at the caller's own hard value from inside the runtime (buildah's
# chroot isolation runs under a process limit of 32768 here).
nofile=$(($(ulimit -Hn) / 2))
nproc=$(($(ulimit -Hu 2>/dev/null || echo 8192) / 2))
[ "$nproc" -gt 0 ] && [ "$nproc" -le 16384 ] || nproc=16384

# runc where it is installed: crun refuses hybrid cgroup hierarchies
runtime=()
if command -v runc >/dev/null; then
	runtime=(--runtime runc)
fi

pod() {
	podman --root "$store/storage" --runroot "$store/run" --storage-driver vfs \
		--cgroup-manager cgroupfs --events-backend file "${runtime[@]}" "$@"
}

runflags=(--network host --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
buildflags=(--network host --isolation chroot --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

install() {
	if command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null; then
		say "podman and debootstrap already installed"
		return
	fi
	aptinstall "podman and debootstrap" podman runc crun conmon netavark uidmap debootstrap ca-certificates
}

check() {
	command -v podman >/dev/null || die "podman is not installed (scripts/image.sh install)"
	[ "$(id -u)" = 0 ] || die "image.sh runs podman rootful: this is uid $(id -u)"
	mkdir -p "$store"
	if ! pod image exists "$base/debian:bookworm" 2>/dev/null; then
		bases_debian >/dev/null
	fi
	local out
	if ! out=$(pod run --rm "${runflags[@]}" "$base/debian:bookworm" true 2>&1); then
		die "podman cannot run a container here: $out"
	fi
}

bases_debian() {
	if pod image exists "$base/debian:bookworm" 2>/dev/null; then
		return
	fi
	command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/image.sh install)"
	local mirror root
	mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
	mirror=${mirror:-http://deb.debian.org/debian}
	root=$(mktemp -d "$store/rootfs.XXXXXX")
	say "debootstrap bookworm minbase from $mirror"
	debootstrap --variant=minbase bookworm "$root" "$mirror" >"$store/debootstrap.log" 2>&1 ||
		{
			rm -rf "$root"
			die "debootstrap failed; see $store/debootstrap.log"
		}
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
	chmod 0755 "$root" # mktemp made it 0700: the image's / must let every user in
	tar -C "$root" -c . | pod import --change 'CMD ["/bin/bash"]' - "$base/debian:bookworm" >/dev/null
	rm -rf "$root"
}

bases() {
	bases_debian
	if ! pod image exists "$base/golang:local"; then
		local goroot
		goroot=$(go env GOROOT)
		say "golang image from $goroot ($(go env GOVERSION))"
		pod build "${buildflags[@]}" -t "$base/golang:local" -f - "$goroot" <<-EOF
			FROM $base/debian:bookworm
			RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates git >/dev/null && rm -rf /var/lib/apt/lists/*
			COPY . /usr/local/go
			ENV PATH=/usr/local/go/bin:/root/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOTOOLCHAIN=local GOPROXY=$(go env GOPROXY) GOSUMDB=$(go env GOSUMDB)
		EOF
	fi
	if ! pod image exists "$base/node:local"; then
		say "node image (Debian's npm)"
		local empty
		empty=$(mktemp -d)
		pod build "${buildflags[@]}" -t "$base/node:local" -f - "$empty" <<-EOF
			FROM $base/debian:bookworm
			RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*
			ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
		EOF
		rmdir "$empty"
	fi
}

build() {
	local tag=${1:-localhost/sdpipe:dev}
	local args=()
	if [ "${SDPIPE_LOCAL_BASES:-}" = 1 ]; then
		bases
		args=(--build-arg "GO_IMAGE=$base/golang:local" --build-arg "NODE_IMAGE=$base/node:local"
			--build-arg "RUNTIME_IMAGE=$base/debian:bookworm")
		# the build's downloads (Go modules, npm) trust what this machine
		# trusts (a proxy's CA, say), for the build only: nothing of it
		# goes into the image
		if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
			args+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
		fi
	fi
	say "building $tag"
	pod build "${buildflags[@]}" "${args[@]}" -t "$tag" -f Dockerfile .
	# each build leaves its builder stages and the image it untagged
	# behind (about 2 GB a build in vfs storage): without this, repeated
	# builds on one machine fill its disk
	pod image prune -f >/dev/null
}

mkdir -p "$store" 2>/dev/null || true
case "${1:-}" in
install) install ;;
check) check ;;
bases) bases ;;
build)
	shift
	build "$@"
	;;
podman)
	shift
	# "run" gets the flags that let a container start here
	if [ "${1:-}" = run ]; then
		shift
		pod run "${runflags[@]}" "$@"
		exit
	fi
	pod "$@"
	;;
*) die "usage: image.sh install | check | bases | build [TAG] | podman ARGS…" ;;
esac

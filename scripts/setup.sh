#!/usr/bin/env bash
# setup.sh installs what sdpipe needs at run time: ONNX Runtime's shared
# library for linux-x64, taken from the npm package onnxruntime-node, into a
# per-user cache. It is idempotent: when the library is already there and its
# checksum verifies, it touches no network.
#
#   scripts/setup.sh            install (or verify) the library
#   scripts/setup.sh --print    print the installed library's path
#   scripts/setup.sh --webgpu   also install what the WebGPU tests run on
#                               without a GPU: the Vulkan loader (libvulkan1)
#                               and SwiftShader, a software Vulkan driver,
#                               from Debian's chromium package (needs root
#                               or sudo; apt-get)
set -euo pipefail

ORT_VERSION=1.29.0
ORT_SHA256=89688f5cf51c7e31befbb7b9101bc027799009b18d1baa9a5b1146a72e69538d
TGZ_SHA256=cfdfb45ec4044b1fdca43e5d2e180fb6817e649ff8ad1e0dfc90e18e51b67037

cache="${SDPIPE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sdpipe}"
dir="$cache/onnxruntime/$ORT_VERSION"
lib="$dir/libonnxruntime.so.1"

quiet=false
webgpu=false
case "${1:-}" in
--print) quiet=true ;;
--webgpu) webgpu=true ;;
"") ;;
*)
	echo "setup: unknown option $1 (want --print or --webgpu)" >&2
	exit 2
	;;
esac
say() { $quiet || echo "setup: $*" >&2; }

verify() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }

case "$(uname -s)-$(uname -m)" in
Linux-x86_64) ;;
*)
	echo "setup: only linux-x64 is installed automatically; install ONNX Runtime $ORT_VERSION yourself and set ONNXRUNTIME_SHARED_LIBRARY_PATH" >&2
	exit 1
	;;
esac

if verify "$lib" "$ORT_SHA256"; then
	say "ONNX Runtime $ORT_VERSION already installed at $lib"
else
	command -v npm >/dev/null || { echo "setup: npm is needed to fetch onnxruntime-node (apt-get install npm)" >&2; exit 1; }
	mkdir -p "$dir"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	say "fetching onnxruntime-node@$ORT_VERSION from npm"
	(cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null)
	tgz="$tmp/onnxruntime-node-$ORT_VERSION.tgz"
	if ! verify "$tgz" "$TGZ_SHA256"; then
		echo "setup: checksum mismatch for $tgz" >&2
		exit 1
	fi
	tar -xzf "$tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
	src="$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
	if ! verify "$src" "$ORT_SHA256"; then
		echo "setup: checksum mismatch for libonnxruntime.so.1 in the npm package" >&2
		exit 1
	fi
	install -m 0644 "$src" "$lib.tmp"
	mv "$lib.tmp" "$lib"
	say "installed ONNX Runtime $ORT_VERSION at $lib"
fi
if [ "${1:-}" = --print ]; then
	echo "$lib"
fi

if $webgpu; then
	if [ -f /usr/lib/chromium/vk_swiftshader_icd.json ] && ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
		say "SwiftShader and the Vulkan loader already installed"
	else
		sudo=""
		[ "$(id -u)" = 0 ] || sudo="sudo -n"
		say "installing libvulkan1 and chromium (for SwiftShader) with apt-get"
		$sudo apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libvulkan1 chromium >/dev/null
	fi
fi

# The first build compiles the library and its cgo binding to ONNX Runtime:
# about 2 minutes on a fresh machine, seconds afterwards (Go's build cache).
# Done here, with a message, so that the README's first `go run` does not
# sit silent for that long.
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! $quiet && command -v go >/dev/null && [ -f "$root/go.mod" ]; then
	say "compiling sdpipe (about 2 minutes the first time on a fresh machine)"
	(cd "$root" && go build -o /dev/null ./examples/txt2img)
	say "ready"
fi

#!/usr/bin/env bash
# gpubench.sh OUT: issue 22's GPU figures in one bounded run. The bench
# (sdbench) with the UNet and the VAE decoder on WebGPU (Dawn over Vulkan)
# against the same bench on the CPU's cores, on generated SD 1.5 (512²,
# 20 steps) and SDXL (1024²; the VAE on the CPU) models, in priority
# order, each stage bounded by what is left of $BUDGET seconds (default
# 560); OUT/results.tgz is rewritten after each stage, so a run cut short
# keeps what it measured.
#
# For a machine without a Go toolchain: build here and carry the binaries,
#   go build -o $BIN/sdbench ./bench && go build -o $BIN/sdgen ./cmd/sdgen
# with libonnxruntime.so.1 (scripts/setup.sh --print says where) and the
# Vulkan loader (Debian's libvulkan1); there run
#   BIN=... ONNXRUNTIME_SHARED_LIBRARY_PATH=... scripts/gpubench.sh OUT
# The GPU's Vulkan driver manifest is found in the usual places (NVIDIA's
# container mounts included) unless VK_DRIVER_FILES is set. A tiny model
# on WebGPU runs first: if that fails the script stops at once (exit 3).
set -u
out=${1:?usage: gpubench.sh OUT}
mkdir -p "$out"
BIN=${BIN:-$(dirname "$0")/../bin}
B=$BIN/sdbench
G=$BIN/sdgen
M=${MODELS:-/tmp/gpubench-models}
R=$(mktemp -d)
START=$SECONDS
END=$((START + ${BUDGET:-560}))
# left N: the seconds left of the budget less N kept for later stages (≥ 5)
left() {
	local l=$((END - SECONDS - ${1:-0}))
	[ $l -lt 5 ] && l=5
	echo $l
}
log() { echo "== $(date -u +%T) [$((SECONDS - START))s] $*"; }
pack() { tar czf "$out/results.tgz" -C "$R" . 2>/dev/null; }

if [ -z "${VK_DRIVER_FILES:-}" ]; then
	for j in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
		[ -f "$j" ] && { export VK_DRIVER_FILES=$j; break; }
	done
fi
echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-none}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
lscpu | grep -E 'Model name|^CPU\(s\)'
GPU=${GPU:-unet=webgpu,vae_decoder=webgpu}

log "smoke: the tiny model on $GPU"
"$G" -config tiny -out "$M/tiny" >/dev/null || exit 4
timeout 90 "$B" -model "$M/tiny" -arch tiny -device "$GPU" -modes sequential,pipelined-full -single 1 -scaling=false \
	-size 64 -steps 2 -n 2 -matmul 64 -out "$R/smoke" >"$R/smoke.log" 2>&1
rc=$?
tail -4 "$R/smoke.log"
if [ $rc != 0 ]; then
	log "smoke failed (rc $rc)"
	pack
	exit 3
fi

log "generate SD 1.5 (the converter's baddbmm attention)"
"$G" -config sd15 -attention baddbmm -out "$M/sd15" >/dev/null || exit 4
log "GPU: SD 1.5 512², 20 steps"
timeout "$(left 330)" "$B" -model "$M/sd15" -attention baddbmm -device "$GPU" -size 512 -steps 20 -n 3 \
	-modes sequential,pipelined-full -single 1 -scaling=false -out "$R/gpu512" >"$R/gpu512.log" 2>&1
log "rc $?"
pack
log "CPU: SD 1.5 512², 20 steps"
timeout "$(left 200)" "$B" -model "$M/sd15" -attention baddbmm -size 512 -steps 20 -n 2 \
	-modes sequential,pipelined-full -single 0 -scaling=false -out "$R/cpu512" >"$R/cpu512.log" 2>&1
log "rc $?"
pack
rm -rf "$M/sd15"

log "generate SDXL"
timeout "$(left 150)" "$G" -config sdxl -out "$M/sdxl" >/dev/null || {
	log "SDXL generation failed or ran out of time"
	pack
	exit 5
}
log "GPU: SDXL 1024², 20 steps (the UNet on WebGPU, the VAE on the CPU)"
timeout "$(left 70)" "$B" -model "$M/sdxl" -arch sdxl -device unet=webgpu -size 1024 -steps 20 -n 1 \
	-modes pipelined-full -single 0 -scaling=false -out "$R/gpuxl" >"$R/gpuxl.log" 2>&1
log "rc $?"
pack
log "CPU: SDXL 1024², 2 steps"
timeout "$(left 5)" "$B" -model "$M/sdxl" -arch sdxl -size 1024 -steps 2 -n 1 \
	-modes pipelined-full -single 0 -scaling=false -out "$R/cpuxl" >"$R/cpuxl.log" 2>&1
log "rc $?"
pack
log done

# One image for local runs and the cloud: the service, the grid and txt2img
# on ONNX Runtime's CPU provider, with the default model (embedded in the
# programs; written to $SDPIPE_CACHE_DIR at build time, so a read-only root
# file system works). See deploy/entrypoint.sh for the arguments.
#
#   podman build -t sdpipe .          (or docker build)
#   podman run --rm -p 8080:8080 sdpipe                  # serve, as SageMaker runs it
#   podman run --rm -v $PWD/out:/data sdpipe txt2img -prompt "a red circle" -out /data/a.png
#   podman run --rm -v $PWD/grid:/data sdpipe grid run -config /data/grid.json -out /data/out
#
# The base images are build arguments, so that a machine without access to
# a registry can build from images of its own (scripts/image.sh does).
ARG GO_IMAGE=golang:1.26-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- the programs (cgo: onnxruntime_go loads the library at run time)
FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -o /out/ ./examples/server ./examples/grid ./examples/txt2img

# ---- libonnxruntime.so.1, from the npm package scripts/setup.sh uses,
# checked against the same checksums
FROM ${NODE_IMAGE} AS ort
COPY scripts/setup.sh /setup.sh
RUN SDPIPE_CACHE_DIR=/ort bash /setup.sh && cp "$(SDPIPE_CACHE_DIR=/ort bash /setup.sh --print)" /libonnxruntime.so.1

# ---- the runtime: the programs, the library, the entrypoint
FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home sdpipe && \
	mkdir -p /data /var/cache/sdpipe /opt/ml && chown sdpipe:sdpipe /data /var/cache/sdpipe
COPY --from=ort /libonnxruntime.so.1 /usr/local/lib/libonnxruntime.so.1
COPY --from=build /out/server /out/grid /out/txt2img /usr/local/bin/
COPY deploy/entrypoint.sh /usr/local/bin/sdpipe
ENV SDPIPE_CACHE_DIR=/var/cache/sdpipe \
	ONNXRUNTIME_SHARED_LIBRARY_PATH=/usr/local/lib/libonnxruntime.so.1
USER sdpipe
WORKDIR /data
# a smoke test that also writes the default model into the cache: the
# image does not build unless it makes an image
RUN txt2img -steps 2 -seed 1 -threads 1 -out /tmp/smoke.png && rm /tmp/smoke.png
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sdpipe"]
CMD ["serve"]

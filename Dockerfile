# syntax=docker/dockerfile:1
#
# One image with every Courier binary (COURIER_BINARIES below). Pick the service with the
# command (compose.yaml and the Helm chart do):
#
#   docker build -t courier:dev .
#   docker run --rm courier:dev courier-worker --help
#
# Migrations are embedded in the worker and sender binaries; protobuf is compiled with protox,
# so the build needs no protoc and no database.
#
# Targets:
#   runtime (the default, last): the multi-stage build, compiling in the `builder` stage.
#   runtime-prebuilt: the same runtime stage, with binaries built on the host and passed as
#     the build context (a directory holding bin/<binary>), from any Debian base given as
#     RUNTIME_IMAGE. `cargo xtask image` builds it that way, with buildah, from a base made
#     by mmdebstrap, where no registry is reachable (docs/DEPLOYMENT.md):
#
#   buildah bud --target runtime-prebuilt --build-arg RUNTIME_IMAGE=localhost/courier-base:… \
#     -f Dockerfile -t courier:local target/courier-image/context

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# The binaries the image holds, the one list of them (`cargo xtask image` reads it from here).
# A name that no package of the workspace builds is left out, with a message.
ARG COURIER_BINARIES="courier-ingress courier-worker courier-sender courier-sandbox courier-admin courierctl"

FROM ${RUST_IMAGE} AS builder
ARG COURIER_BINARIES
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the build directory between builds (BuildKit);
# the binaries are copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && for bin in ${COURIER_BINARIES}; do \
      if [ -x "target/release/$bin" ]; then cp "target/release/$bin" /out/; \
      else echo "no package builds $bin: it is not in the image"; fi; \
    done

# The runtime stage without binaries: the base of both targets below.
FROM ${RUNTIME_IMAGE} AS runtime-base
# ca-certificates: the sender calls https://api.telegram.org. A base that has it already
# (the mmdebstrap one of `cargo xtask image`) needs no package index, so no network.
# hadolint ignore=DL3008
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --system --gid 10001 courier \
 && useradd --system --uid 10001 --gid courier --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin courier
USER 10001:10001
ENV COURIER_LOG_FORMAT=json
# ingress 8081 (webhook, /healthz, /readyz, /metrics); worker 9091 (/healthz, /readyz,
# /metrics, /partitions); sender 9092 (/healthz, /readyz, /metrics); sandbox 8080 (set
# COURIER_SANDBOX_ADDR).
EXPOSE 8081 9091 9092 8080
CMD ["courier-ingress"]

# Host-built binaries: the build context is a directory holding bin/.
FROM runtime-base AS runtime-prebuilt
COPY bin/ /usr/local/bin/

# The default target: the binaries of the builder stage.
FROM runtime-base AS runtime
COPY --from=builder /out/ /usr/local/bin/

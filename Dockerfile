# syntax=docker/dockerfile:1
#
# One image with all four Courier binaries: courier-ingress, courier-worker, courier-sender and
# courier-sandbox. Pick the service with the command (compose.yaml and the Helm chart do):
#
#   docker build -t courier:dev .
#   docker run --rm courier:dev courier-worker --help
#
# Migrations are embedded in the worker and sender binaries; protobuf is compiled with protox,
# so the build needs no protoc and no database.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the build directory between builds (BuildKit);
# the binaries are copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      -p courier-ingress -p courier-worker -p courier-sender -p courier-sandbox \
 && mkdir -p /out \
 && cp target/release/courier-ingress target/release/courier-worker \
       target/release/courier-sender target/release/courier-sandbox /out/

FROM ${RUNTIME_IMAGE}
# ca-certificates: the sender calls https://api.telegram.org.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 courier \
 && useradd --system --uid 10001 --gid courier --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin courier
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV COURIER_LOG_FORMAT=json
# ingress 8081 (webhook, /healthz, /readyz, /metrics); worker 9091 (/healthz, /readyz,
# /metrics, /partitions); sender 9092 (/healthz, /readyz, /metrics); sandbox 8080 (set
# COURIER_SANDBOX_ADDR).
EXPOSE 8081 9091 9092 8080
CMD ["courier-ingress"]

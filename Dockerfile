# syntax=docker/dockerfile:1
#
# storageclass-migrate: a static binary in an otherwise empty image (no shell, no package manager),
# run as a numeric non-root user.
#
#   docker build -t storageclass-migrate .                  builds the binary in a Rust image
#   docker build --target runtime-prebuilt -t storageclass-migrate .
#       takes the binary from the build context instead, built on the host with
#       RUSTFLAGS="-C target-feature=+crt-static" \
#         cargo build --release --locked --target x86_64-unknown-linux-gnu
#       (scripts/build-image.sh does that, and builds the image with buildah).

ARG RUST_VERSION=1.95
ARG VERSION=0.1.0
ARG REVISION=unknown

# Everything the final images have but the binary.
FROM scratch AS base
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="storageclass-migrate" \
      org.opencontainers.image.description="Helm hook that lets an upgrade change a PersistentVolumeClaim's storage class" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
ENTRYPOINT ["/storageclass-migrate"]

# The binary built on the host. This stage comes before the Rust one so that building it never
# needs the Rust image.
FROM base AS runtime-prebuilt
COPY target/x86_64-unknown-linux-gnu/release/storageclass-migrate /storageclass-migrate

# A fully static binary: glibc with crt-static (static-pie), so that the empty image can run it.
FROM rust:${RUST_VERSION}-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's other member: cargo reads it to resolve the workspace, but the release binary
# does not build it (it is a dev-dependency only).
COPY testkit ./testkit
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/storageclass-migrate /storageclass-migrate \
 && ldd /storageclass-migrate 2>&1 | grep -q -e 'not a dynamic executable' -e 'statically linked'

# The default target: the binary built in the Rust image.
FROM base AS runtime
COPY --from=builder /storageclass-migrate /storageclass-migrate

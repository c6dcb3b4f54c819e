# syntax=docker/dockerfile:1
#
# The entra-rotator image: a release build on Debian 12 (bookworm), copied into
# distroless/cc (glibc, libgcc, CA certificates; no shell, no package manager), running as
# the non-root user 65532. The same binary serves every mode; the Helm chart passes
# `controller` or `run --namespace NS`. Built without the `demo` feature: no stand-in code
# (fake Graph, Key Vault, Kubernetes API, SMTP relay) is in the image.
#
#   docker build -t registry.example.com/platform/entra-rotator:0.1.0 .
#
# "cc" rather than "static": the TLS stack (rustls on aws-lc-rs) compiles C and links
# against glibc, so the binary needs the C runtime that distroless/cc carries.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds; the binary
# is copied out of the cached target directory so the final stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin entra-rotator \
    && install -D -m 0755 target/release/entra-rotator /out/entra-rotator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/entra-rotator /usr/local/bin/entra-rotator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/entra-rotator"]
CMD ["controller"]

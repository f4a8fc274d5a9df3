# syntax=docker/dockerfile:1
# One static binary in an empty image, run as a non-root user; every role is a subcommand. The test
# kit (crates/testkit, the clusteraudit-dev binary) is never built into it.

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
COPY crds ./crds
COPY examples ./examples
COPY scripts ./scripts
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin clusteraudit \
 && cp target/x86_64-unknown-linux-musl/release/clusteraudit /clusteraudit

FROM scratch
COPY --from=build /clusteraudit /usr/local/bin/clusteraudit
# kubectl finds plugins by name: the same binary answers as `kubectl audit ...`.
COPY --from=build /clusteraudit /usr/local/bin/kubectl-audit
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clusteraudit"]

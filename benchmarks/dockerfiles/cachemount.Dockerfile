# Flow 3, multi-stage with cache mounts: the cargo registry and the target directory live in
# build-cache mounts that outlive the layers, so cargo builds incrementally like on a host.
# The binary must be copied out of the mount within the same RUN.
ARG BUILDER
ARG BASE
FROM ${BUILDER} AS builder
ARG FEATURES
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=authd-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=authd-target,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
      --no-default-features --features "$FEATURES" --bin authd \
 && cp target/x86_64-unknown-linux-musl/release/authd /authd

FROM ${BASE}
WORKDIR /app
COPY --from=builder /authd /app/authd
ENV AUTHD_LISTEN=0.0.0.0:8080 RUST_LOG=info
LABEL org.opencontainers.image.title=authd
EXPOSE 8080
ENTRYPOINT ["/app/authd"]

# Flow 2, multi-stage, dependency-cached: the cargo-chef idea by hand. The manifests alone go
# first and the dependencies are built against a dummy main.rs in their own layer, which stays
# cached until Cargo.toml or Cargo.lock change; a source change rebuilds only the service crate.
ARG BUILDER
ARG BASE
FROM ${BUILDER} AS builder
ARG FEATURES
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
      --no-default-features --features "$FEATURES" --bin authd \
 && rm -rf src target/x86_64-unknown-linux-musl/release/authd \
      target/x86_64-unknown-linux-musl/release/deps/authd-* \
      target/x86_64-unknown-linux-musl/release/.fingerprint/authd-*
COPY src ./src
# touch: the copied sources may be older than the dummy build; cargo must not skip the real one.
RUN touch src/main.rs && cargo build --release --locked --target x86_64-unknown-linux-musl \
      --no-default-features --features "$FEATURES" --bin authd

FROM ${BASE}
WORKDIR /app
COPY --from=builder /src/target/x86_64-unknown-linux-musl/release/authd /app/authd
ENV AUTHD_LISTEN=0.0.0.0:8080 RUST_LOG=info
LABEL org.opencontainers.image.title=authd
EXPOSE 8080
ENTRYPOINT ["/app/authd"]

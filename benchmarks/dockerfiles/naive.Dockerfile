# Flow 1, multi-stage, naive: the Dockerfile most Rust services start with. Any change to any file
# in the context invalidates `COPY . .`, so every build compiles every crate again.
ARG BUILDER
ARG BASE
FROM ${BUILDER} AS builder
ARG FEATURES
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      --no-default-features --features "$FEATURES" --bin authd

FROM ${BASE}
WORKDIR /app
COPY --from=builder /src/target/x86_64-unknown-linux-musl/release/authd /app/authd
ENV AUTHD_LISTEN=0.0.0.0:8080 RUST_LOG=info
LABEL org.opencontainers.image.title=authd
EXPOSE 8080
ENTRYPOINT ["/app/authd"]

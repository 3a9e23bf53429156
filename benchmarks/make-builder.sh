#!/usr/bin/env bash
# Assembles the rust builder base image for the multi-stage flows, like a `docker pull rust:1.95`
# (there is no Docker Hub here): Debian bookworm minbase from debootstrap with gcc, libc6-dev,
# musl-tools, ca-certificates and pkg-config, plus this machine's rustup toolchain laid out as the
# official rust image does (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, PATH with
# /usr/local/cargo/bin), with the x86_64-unknown-linux-musl target. Not timed by the benchmark.
#
#   benchmarks/make-builder.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/lib/common.sh
# The flows load it from an OCI layout into their own buildah stores.
export_layout() {
  rm -rf "$BUILDER_OCI"
  bh push --quiet --disable-compression "$BUILDER_IMAGE" "oci:$BUILDER_OCI:1"
}
if [ "${1:-}" != --force ] && bh inspect --type image "$BUILDER_IMAGE" >/dev/null 2>&1; then
  [ -f "$BUILDER_OCI/index.json" ] || export_layout
  echo "make-builder: $BUILDER_IMAGE exists" >&2; exit 0
fi
toolchain=$(rustup show active-toolchain | awk '{print $1}')
tc_dir=$(rustc --print sysroot)
[ -d "$tc_dir/lib/rustlib/x86_64-unknown-linux-musl" ] || rustup target add x86_64-unknown-linux-musl
rust_version=$(rustc --version | awk '{print $2}')
name="$rust_version-x86_64-unknown-linux-gnu"

mkdir -p "$BENCH_DIR"
root="$BENCH_DIR/builder-rootfs"
if [ ! -x "$root/usr/bin/musl-gcc" ]; then
  rm -rf "$root"
  timeout 1200 debootstrap --variant=minbase \
    --include=gcc,libc6-dev,musl-tools,ca-certificates,pkg-config \
    bookworm "$root" http://deb.debian.org/debian >"$BENCH_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$BENCH_DIR/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
fi
# The machine's CA bundle: the crate registry is only reachable through it here.
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

ctr=$(bh from scratch)
trap 'bh rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(bh mount "$ctr")
cp -a "$root/." "$mnt/"
mkdir -p "$mnt/usr/local/rustup/toolchains" "$mnt/usr/local/cargo/bin"
# The toolchain without docs and without targets the benchmark does not use (rust:slim has no docs either).
tar -C "$tc_dir" --exclude=./share/doc --exclude=./lib/rustlib/aarch64-unknown-linux-musl -cf - . \
  | tar -C "$mnt/usr/local/rustup/toolchains" --one-top-level="$name" -xf -
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n\n[overrides]\n' "$name" \
  >"$mnt/usr/local/rustup/settings.toml"
# rustup and its proxies, as in the official image.
cp "$HOME/.cargo/bin/rustup" "$mnt/usr/local/cargo/bin/rustup"
for proxy in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt; do
  ln -f "$mnt/usr/local/cargo/bin/rustup" "$mnt/usr/local/cargo/bin/$proxy"
done
bh umount "$ctr" >/dev/null
bh config \
  --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
  --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env RUST_VERSION="$rust_version" \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --env CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt \
  --env CC_x86_64_unknown_linux_musl=musl-gcc \
  --workingdir / --cmd /bin/bash --os linux --arch amd64 "$ctr"
bh commit --rm "$ctr" "$BUILDER_IMAGE" >/dev/null
trap - EXIT
export_layout
echo "make-builder: $BUILDER_IMAGE ($toolchain, rustc $rust_version, musl target)" >&2

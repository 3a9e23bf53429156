#!/usr/bin/env bash
# Flow 6, the floor: bare `cargo zigbuild` of the same variants with the same flags galley passes,
# then, timed apart as "compress", strip + `upx --best --lzma` on a copy (the floor with UPX).
#   zigbuild.sh prepare|clean|build   (env from benchmarks/bench.py)
set -euo pipefail
. "$REPO_ROOT/benchmarks/lib/common.sh"
# COMPILE_DIR: the flow's own directory, or its UPX sibling's for the -noupx flows.
cdir=${COMPILE_DIR:-$FLOW_DIR}
export CARGO_HOME="$cdir/cargo-home" ZIG_GLOBAL_CACHE_DIR="$cdir/zig-cache"
case "$1" in
  prepare)
    mkdir -p "$FLOW_DIR" "$CARGO_HOME" ;;
  clean)
    [ "$cdir" = "$FLOW_DIR" ] || { echo "$FLOW shares $cdir: no cold run of its own" >&2; exit 2; }
    rm -rf "$CARGO_HOME" "$ZIG_GLOBAL_CACHE_DIR" "$cdir/target" "$FLOW_DIR/bin"; mkdir -p "$CARGO_HOME"
    # KEEP_TOOLCHAIN=1 (the coldproj scenario): a warm toolchain, as a builder image has its libc
    # prebuilt. zig's cache is emptied too (zig cc also caches the project's C objects), then
    # filled with musl libc and compiler-rt alone by linking the dependency-free fixture.
    if [ "${KEEP_TOOLCHAIN:-0}" = 1 ]; then warm_toolchain; fi ;;
  build)
    mkdir -p "$FLOW_DIR/bin"
    for variant in ${VARIANTS//,/ }; do
      phase compile
      (cd "$PROJECT" && cargo zigbuild --release --locked --target x86_64-unknown-linux-musl \
        --no-default-features --features "$(feature_of "$variant")" --bin authd \
        --target-dir "$cdir/target")
      phase compress
      out="$FLOW_DIR/bin/authd-$variant"; rm -f "$out" "$out.raw" "$out.stripped"
      cp "$cdir/target/x86_64-unknown-linux-musl/release/authd" "$out.raw"
      cp "$out.raw" "$out"
      strip "$out"
      cp "$out" "$out.stripped"
      upx -q --best --lzma "$out" >/dev/null
    done ;;
esac

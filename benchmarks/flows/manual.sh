#!/usr/bin/env bash
# Flow 4, the manual host flow galley replaces, per variant: cargo zigbuild, strip, upx (unless
# BENCH_UPX=0), `buildah bud -f Dockerfile.runtime` on a context holding only the binary, buildah push.
#   manual.sh prepare|clean|build   (env from benchmarks/bench.py)
set -euo pipefail
. "$REPO_ROOT/benchmarks/lib/common.sh"
# COMPILE_DIR: the flow's own directory, or its UPX sibling's for the -noupx flows.
cdir=${COMPILE_DIR:-$FLOW_DIR}
export CARGO_HOME="$cdir/cargo-home" ZIG_GLOBAL_CACHE_DIR="$cdir/zig-cache"
case "$1" in
  prepare)
    mkdir -p "$FLOW_DIR" "$CARGO_HOME"
    load_bases ;;
  clean)
    [ "$cdir" = "$FLOW_DIR" ] || { echo "$FLOW shares $cdir: no cold run of its own" >&2; exit 2; }
    reset_store
    rm -rf "$CARGO_HOME" "$ZIG_GLOBAL_CACHE_DIR" "$cdir/target" "$FLOW_DIR/ctx"; mkdir -p "$CARGO_HOME"
    # KEEP_TOOLCHAIN=1 (the coldproj scenario): a warm toolchain, as a builder image has its libc
    # prebuilt. zig's cache is emptied too (zig cc also caches the project's C objects), then
    # filled with musl libc and compiler-rt alone by linking the dependency-free fixture.
    if [ "${KEEP_TOOLCHAIN:-0}" = 1 ]; then warm_toolchain; fi
    reset_repo ;;
  build)
    for variant in ${VARIANTS//,/ }; do
      phase compile
      (cd "$PROJECT" && cargo zigbuild --release --locked --target x86_64-unknown-linux-musl \
        --no-default-features --features "$(feature_of "$variant")" --bin authd \
        --target-dir "$cdir/target")
      phase package
      ctx="$FLOW_DIR/ctx/$variant"; mkdir -p "$ctx"; rm -f "$ctx/authd"
      cp "$cdir/target/x86_64-unknown-linux-musl/release/authd" "$ctx/authd"
      strip "$ctx/authd"
      if [ "${BENCH_UPX:-1}" = 1 ]; then upx -q --best --lzma "$ctx/authd" >/dev/null; fi
      fbh bud --isolation chroot --layers --pull=false --build-arg BASE="$RUNTIME_LOCAL" \
        -f "$REPO_ROOT/Dockerfile.runtime" -t "bench/$FLOW:$variant-$VERSION" "$ctx"
      phase push
      fbh push --tls-verify=false "bench/$FLOW:$variant-$VERSION" \
        "docker://$REGISTRY/bench/$FLOW:$variant-$VERSION"
    done ;;
esac

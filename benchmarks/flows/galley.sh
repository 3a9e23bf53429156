#!/usr/bin/env bash
# Flow 5, galley: one `galley build --push` for all the variants (UPX unless BENCH_UPX=0).
#   galley.sh prepare|clean|build   (env from benchmarks/bench.py)
#   galley.sh runner-prepare|runner-build: the ephemeral-runner scenario. A runner is a fresh
#   directory: a copy of the project (with its edits), an empty target dir, an empty local stage
#   cache, a new CARGO_HOME (crates downloaded again) and zig's cache holding musl and
#   compiler-rt alone, as a CI runner image has its toolchain prebuilt. Only the shared tiers
#   are warm: the registry's stage cache ($REGISTRY/bench/galley-cache, entries signed with
#   $BENCH_DIR/cache.key) and sccache on Redis ($BENCH_REDIS).
set -euo pipefail
. "$REPO_ROOT/benchmarks/lib/common.sh"
# COMPILE_DIR: the flow's own directory, or its UPX sibling's for the -noupx flows.
cdir=${COMPILE_DIR:-$FLOW_DIR}
export CARGO_HOME="$cdir/cargo-home" ZIG_GLOBAL_CACHE_DIR="$cdir/zig-cache"
export GALLEY_CACHE_DIR="$FLOW_DIR/galley-cache" SOURCE_DATE_EPOCH=1700000000
case "$1" in
  prepare)
    mkdir -p "$FLOW_DIR" "$CARGO_HOME" ;;
  clean)
    [ "$cdir" = "$FLOW_DIR" ] || { echo "$FLOW shares $cdir: no cold run of its own" >&2; exit 2; }
    rm -rf "$CARGO_HOME" "$ZIG_GLOBAL_CACHE_DIR" "$GALLEY_CACHE_DIR" "$PROJECT/target" "$FLOW_DIR/out"
    mkdir -p "$CARGO_HOME"
    # KEEP_TOOLCHAIN=1 (the coldproj scenario): a warm toolchain, as a builder image has its libc
    # prebuilt. zig's cache is emptied too (zig cc also caches the project's C objects), then
    # filled with musl libc and compiler-rt alone by linking the dependency-free fixture.
    if [ "${KEEP_TOOLCHAIN:-0}" = 1 ]; then warm_toolchain; fi
    reset_repo ;;
  runner-prepare)
    runner="$FLOW_DIR/runner"
    rm -rf "$runner"; mkdir -p "$runner/cargo-home" "$runner/project"
    tar -C "$PROJECT" --exclude=./target -cf - . | tar -C "$runner/project" -xf -
    # The toolchain part of zig's cache, made once and copied (not timed).
    if [ ! -d "$FLOW_DIR/zig-toolchain" ]; then
      ZIG_GLOBAL_CACHE_DIR="$FLOW_DIR/zig-toolchain.tmp" warm_toolchain
      mv "$FLOW_DIR/zig-toolchain.tmp" "$FLOW_DIR/zig-toolchain"
    fi
    cp -a "$FLOW_DIR/zig-toolchain" "$runner/zig-cache" ;;
  runner-build)
    runner="$FLOW_DIR/runner"
    extra=(); [ "${BENCH_UPX:-1}" = 1 ] || extra=(--no-compress)
    phase galley
    CARGO_HOME="$runner/cargo-home" ZIG_GLOBAL_CACHE_DIR="$runner/zig-cache" GALLEY_CACHE_DIR="$runner/galley-cache" \
    "$GALLEY_BIN" build --project "$runner/project" --variants "$VARIANTS" --version "$VERSION" \
      --base "$REGISTRY/library/busybox:$RUNTIME_TAG" --push "$REGISTRY/bench/$FLOW-runner" \
      --cache-repo "$REGISTRY/bench/galley-cache" --cache-key-file "$BENCH_DIR/cache.key" \
      --sccache "$BENCH_REDIS" --output "$runner/out" --json "${extra[@]}" >"$FLOW_DIR/report.json"
    echo "@@galley-report $FLOW_DIR/report.json" ;;
  build)
    extra=(); [ "${BENCH_UPX:-1}" = 1 ] || extra=(--no-compress)
    phase galley
    "$GALLEY_BIN" build --project "$PROJECT" --variants "$VARIANTS" --version "$VERSION" \
      --base "$REGISTRY/library/busybox:$RUNTIME_TAG" --push "$REGISTRY/bench/$FLOW" \
      --output "$FLOW_DIR/out" --json "${extra[@]}" >"$FLOW_DIR/report.json"
    echo "@@galley-report $FLOW_DIR/report.json" ;;
esac

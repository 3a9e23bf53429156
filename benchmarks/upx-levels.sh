#!/usr/bin/env bash
# UPX as data: builds the three authd variants with cargo zigbuild (stripped by the linker, as
# galley ships them), then measures UPX at --best --lzma, --lzma, -9 and --ultra-brute on each:
# pack time, sizes, the layer, start-up time and resident memory. See benchmarks/README.md.
#
#   bash benchmarks/upx-levels.sh [--results DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
results=$PWD/benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --results) results=$2; shift ;;
    *) echo "upx-levels.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
. benchmarks/lib/common.sh
bash benchmarks/setup.sh
work=$BENCH_DIR/upx-levels
mkdir -p "$work"
rm -rf "$work/project"; cp -r fixtures/authd "$work/project"; rm -rf "$work/project/target"
export ZIG_GLOBAL_CACHE_DIR=${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}
bins=()
for v in sqlite postgres mysql; do
  (cd "$work/project" && cargo zigbuild --release --locked --target x86_64-unknown-linux-musl \
     --no-default-features --features "$(feature_of "$v")" --bin authd --target-dir "$work/target" -q)
  cp "$work/target/x86_64-unknown-linux-musl/release/authd" "$work/authd-$v"
  bins+=("$v=$work/authd-$v")
done
mkdir -p "$results"
python3 benchmarks/upx_levels.py --binaries "${bins[@]}" --work "$work" \
  --out "$results/$(date -u +%Y-%m-%d)-upx.json"

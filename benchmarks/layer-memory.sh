#!/usr/bin/env bash
# Peak memory of writing one layer (tar + gzip + two sha256, one streaming pass) for inputs of
# growing size: it must stay flat. Prints a table; writes nothing outside a temporary directory.
#
#   bash benchmarks/layer-memory.sh [SIZES_MIB...]     (default: 16 128 512)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(16 128 512)
cargo build --release --locked --example layer >/dev/null 2>&1
bin=target/release/examples/layer
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '| input MiB | layer MiB (gzip) | wall s | max RSS MiB |\n|---:|---:|---:|---:|\n'
for mib in "${sizes[@]}"; do
  # Half random, half zeros: gzip has work to do on both kinds.
  head -c $((mib * 1024 * 512)) /dev/urandom >"$work/input"
  head -c $((mib * 1024 * 512)) /dev/zero >>"$work/input"
  rm -rf "$work/out"
  /usr/bin/time -f '%e %M' -o "$work/time" "$bin" "$work/input" "$work/out" >"$work/layer.json"
  read -r wall rss_kib <"$work/time"
  size=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["size"]/1048576, 1))' "$work/layer.json")
  printf '| %s | %s | %s | %s |\n' "$mib" "$size" "$wall" "$((rss_kib / 1024))"
done

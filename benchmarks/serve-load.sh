#!/usr/bin/env bash
# Load on `galley serve`: 100 SSE clients following one build, a burst of 50 submissions, history
# reads, cancels. Starts its own service (release build, tiny fixture, a token) on a free
# loopback port and stops it with SIGTERM at the end. Figures go to benchmarks/results/; nothing
# is asserted about time. See benchmarks/README.md.
#
#   bash benchmarks/serve-load.sh [--clients N] [--burst M] [--results DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
clients=100; burst=50; results=$repo/benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift ;;
    --burst) burst=$2; shift ;;
    --results) results=$2; shift ;;
    *) echo "serve-load.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
. benchmarks/lib/common.sh
bash scripts/setup.sh
cargo build --release --locked --quiet
mkdir -p "$BENCH_DIR"
[ -f "$BENCH_DIR/base/index.json" ] || bash fixtures/base/make-base.sh "$BENCH_DIR/base" "$RUNTIME_TAG"

work=$BENCH_DIR/serve-load
rm -rf "$work"; mkdir -p "$work"
cp -r fixtures/tiny "$work/tiny"; rm -rf "$work/tiny/target"
token=$(bench_token)
printf 'bench %s\n' "$token" >"$work/tokens"
cat >"$work/serve.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/data"
token_file = "$work/tokens"
max_queued = 20
max_running = 2
compile_slots = 1
[projects.tiny]
path = "$work/tiny"
base = "oci:$BENCH_DIR/base:$RUNTIME_TAG"
TOML
export ZIG_GLOBAL_CACHE_DIR=${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}
serve_start "$work/serve.toml" "$work"
pid=$serve_pid url=$serve_url

stamp=$(date -u +%Y-%m-%d)
mkdir -p "$results"
python3 benchmarks/serve_load.py --url "$url" --token "$token" --clients "$clients" --burst "$burst" \
  --out "$results/$stamp-serve.json"
kill -TERM "$pid"
wait "$pid"
echo "serve-load.sh: service stopped with SIGTERM, exit $?; results in $results/$stamp-serve.json" >&2

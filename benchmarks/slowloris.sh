#!/usr/bin/env bash
# Slowloris against `galley serve`: N half-open connections from one client while another reads
# /api/v1/builds (see slowloris.py). Starts its own service (release build, tiny fixture, a token,
# the default [http] limits) on a free loopback port and stops it with SIGTERM. Figures go to
# benchmarks/results/; nothing is asserted about time. See benchmarks/README.md.
#
#   bash benchmarks/slowloris.sh [--connections N] [--seconds S] [--results DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
connections=500; seconds=20; results=$repo/benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) connections=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --results) results=$2; shift ;;
    *) echo "slowloris.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
. benchmarks/lib/common.sh
cargo build --release --locked --quiet
work=$BENCH_DIR/slowloris
rm -rf "$work"; mkdir -p "$work"
cp -r fixtures/tiny "$work/tiny"; rm -rf "$work/tiny/target"
token=$(bench_token)
printf 'bench %s\n' "$token" >"$work/tokens"
cat >"$work/serve.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/data"
token_file = "$work/tokens"
[projects.tiny]
path = "$work/tiny"
TOML
# The attacker's sockets and the service's: one more descriptor each, beside the reader's.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
serve_start "$work/serve.toml" "$work"
pid=$serve_pid url=$serve_url
stamp=$(date -u +%Y-%m-%d)
mkdir -p "$results"
python3 benchmarks/slowloris.py --url "$url" --token "$token" --connections "$connections" \
  --seconds "$seconds" --out "$results/$stamp-slowloris.json"
kill -TERM "$pid"
wait "$pid"
echo "slowloris.sh: service stopped with SIGTERM, exit $?; results in $results/$stamp-slowloris.json" >&2

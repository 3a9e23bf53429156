#!/usr/bin/env bash
# The fleet: two release `galley serve` workers on one PostgreSQL (Debian's binaries, a cluster
# made by initdb in a temporary directory, a free loopback port). Measures how long a queued
# build waits for a claim, 100 SSE followers on the instance that does not run the build (every
# event once, in order), and 200 queued builds drained by both workers (each claimed once).
# Figures go to benchmarks/results/; nothing is asserted about time. See benchmarks/README.md.
#
#   bash benchmarks/fleet.sh [--followers N] [--drain M] [--results DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
followers=100; drain=200; results=$repo/benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --followers) followers=$2; shift ;;
    --drain) drain=$2; shift ;;
    --results) results=$2; shift ;;
    *) echo "fleet.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
. benchmarks/lib/common.sh
bash scripts/setup.sh
cargo build --release --locked --quiet
mkdir -p "$BENCH_DIR"
[ -f "$BENCH_DIR/base/index.json" ] || bash fixtures/base/make-base.sh "$BENCH_DIR/base" "$RUNTIME_TAG"

# PostgreSQL refuses to run as root: its cluster belongs to the postgres user then.
work=$(mktemp -d /tmp/galley-fleet-bench.XXXXXX)
chmod 755 "$work"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pw=$(bench_token)
mkdir -p "$work/pg"; printf '%s\n' "$pw" >"$work/pg/pw"
[ "$(id -u)" = 0 ] && chown -R postgres: "$work/pg"
as_pg "$pgbin/initdb" -D "$work/pg/cluster" -U galley -A scram-sha-256 --no-sync -E UTF8 \
  --pwfile="$work/pg/pw" >"$work/pg/initdb.log"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$pgbin/postgres" -D "$work/pg/cluster" -p "$port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$work/pg" -c fsync=off -c max_connections=200 \
  >"$work/pg/postgres.log" 2>&1 &
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # The server itself (runuser is only its parent): a fast shutdown, then it is gone.
  local pg
  pg=$(head -1 "$work/pg/cluster/postmaster.pid" 2>/dev/null || true)
  if [ -n "$pg" ]; then
    kill -INT "$pg" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pg" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
export PGPASSWORD=$pw
for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
export GALLEY_STORE="postgres://galley:$pw@127.0.0.1:$port/postgres"

cp -r fixtures/tiny "$work/tiny"; rm -rf "$work/tiny/target"
# A build that runs for a few seconds (its build script waits): what the followers watch.
cp -r fixtures/tiny "$work/chatty"; rm -rf "$work/chatty/target"
cat >"$work/chatty/build.rs" <<'RS'
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    std::thread::sleep(std::time::Duration::from_secs(4));
}
RS
token=$(bench_token)
printf 'bench %s\n' "$token" >"$work/tokens"
export ZIG_GLOBAL_CACHE_DIR=${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}
urls=()
for name in a b; do
  mkdir -p "$work/$name"
  cat >"$work/$name/serve.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/$name/data"
cache_dir = "$work/cache"
token_file = "$work/tokens"
worker_name = "$name"
sticky_delay = "1s"
max_queued = $((drain + 10))
max_running = 2
compile_slots = 1
[retention]
max_builds = $((drain + 100))
[projects.tiny]
path = "$work/tiny"
base = "oci:$BENCH_DIR/base:$RUNTIME_TAG"
[projects.chatty]
path = "$work/chatty"
base = "oci:$BENCH_DIR/base:$RUNTIME_TAG"
TOML
  ./target/release/galley serve --config "$work/$name/serve.toml" >"$work/$name/serve.out" 2>"$work/$name/serve.err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$work/$name/serve.out" 2>/dev/null && break; sleep 0.1; done
  url=$(sed -n 's/^galley serve: listening on //p' "$work/$name/serve.out")
  [ -n "$url" ] || { cat "$work/$name/serve.err" >&2; exit 1; }
  urls+=("$url")
done

stamp=$(date -u +%Y-%m-%d)
mkdir -p "$results"
python3 benchmarks/fleet.py --a "${urls[0]}" --b "${urls[1]}" --token "$token" \
  --followers "$followers" --drain "$drain" --out "$results/$stamp-fleet.json"
if grep -q -- "$pw" "$work"/a/serve.err "$work"/b/serve.err; then
  echo "fleet.sh: the store's password appears in a service log" >&2; exit 1
fi
echo "fleet.sh: results in $results/$stamp-fleet.json" >&2

#!/usr/bin/env bash
# Runs the benchmark: galley against multi-stage builds and the manual host flow, on
# fixtures/authd, pushing to a private local registry. See benchmarks/README.md.
#
#   bash benchmarks/run.sh            # the full matrix: 8 flows x {change, nochange, cold} x 3 reps, 3 variants
#   bash benchmarks/run.sh --quick    # smoke test: 1 rep, sqlite, no-change (and the ephemeral runner), every flow end to end
#
# Options (after --quick they override it): --reps N, --first-rep N, --flows a,b, --variants a,b (warm scenarios),
# --cold-variants a,b, --cold-flows a:3,b:1, --scenarios change,nochange,cold, --deadline-min M (start
# no run after M minutes), --results DIR (default benchmarks/results; --quick: $BENCH_DIR/quick),
# --notes FILE (lines copied into the results, e.g. what a reduced run left out).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
orig_args="$*"; quick=0; bench_args=(); results=""; notes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; bench_args+=(--reps 1 --variants sqlite --scenarios nochange,ephemeral --strict) ;;
    --reps|--first-rep|--flows|--variants|--cold-variants|--cold-flows|--scenarios) bench_args+=("$1" "$2"); shift ;;
    --deadline-min) bench_args+=(--deadline "$(( $(date +%s) + $2 * 60 ))"); shift ;;
    --results) results=$2; shift ;;
    --notes) notes=$(realpath "$2"); shift ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
. benchmarks/lib/common.sh
export BENCH_DIR
if [ -z "$results" ]; then
  if [ $quick = 1 ]; then results=$BENCH_DIR/quick; else results=$repo/benchmarks/results; fi
fi
start=$(date +%s)

timeout 1800 bash benchmarks/setup.sh
timeout 1800 cargo build --release --locked --quiet
export GALLEY_BIN=$repo/target/release/galley

# Bases, outside the timed part (like a `docker pull`).
mkdir -p "$BENCH_DIR"
[ -f "$BENCH_DIR/base/index.json" ] || timeout 300 bash fixtures/base/make-base.sh "$BENCH_DIR/base" "$RUNTIME_TAG"
timeout 1800 bash benchmarks/make-builder.sh

# The registry: Debian's docker-registry on a free loopback port, filesystem storage, stopped on exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export REGISTRY=127.0.0.1:$port REGISTRY_ROOT=$BENCH_DIR/registry
rm -rf "$REGISTRY_ROOT"; mkdir -p "$REGISTRY_ROOT"
cat >"$BENCH_DIR/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_ROOT
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: galley-bench
YML
env -u REGISTRY_HTTP_ADDR docker-registry serve "$BENCH_DIR/registry.yml" >"$BENCH_DIR/registry.log" 2>&1 &
export REGISTRY_PID=$!
# Redis for sccache (the ephemeral-runner scenario): Debian's redis-server, no persistence.
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$BENCH_DIR/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$BENCH_DIR/redis" >"$BENCH_DIR/redis.log" 2>&1 &
REDIS_PID=$!
export BENCH_REDIS=redis://127.0.0.1:$redis_port
# The key the runners share to sign the registry's stage cache entries.
[ -s "$BENCH_DIR/cache.key" ] || head -c 32 /dev/urandom | base64 >"$BENCH_DIR/cache.key"
trap 'kill "$REGISTRY_PID" "$REDIS_PID" 2>/dev/null || true; wait "$REGISTRY_PID" "$REDIS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 50); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://$REGISTRY/v2/" >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$BENCH_DIR/base:$RUNTIME_TAG" \
  "docker://$REGISTRY/library/busybox:$RUNTIME_TAG"

stamp=$(date -u +%Y-%m-%dT%H%M)
mkdir -p "$results"
runs="$BENCH_DIR/runs-$stamp.jsonl"
python3 benchmarks/machine.py >"$BENCH_DIR/machine-$stamp.json"
python3 benchmarks/bench.py --out "$runs" "${bench_args[@]}"
python3 benchmarks/sizes.py "$runs" >"$BENCH_DIR/sizes-$stamp.json"
python3 benchmarks/report.py --runs "$runs" --sizes "$BENCH_DIR/sizes-$stamp.json" \
  --machine "$BENCH_DIR/machine-$stamp.json" --out "$results/$stamp" \
  --args="$orig_args" --quick "$quick" ${notes:+--notes "$notes"}
echo "run.sh: done in $(( $(date +%s) - start )) s: $results/$stamp.md" >&2

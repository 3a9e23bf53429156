# Shared settings for the benchmark scripts (sourced, not run).
# State lives outside the work tree so it survives between clones on the same machine.
BENCH_DIR=${GALLEY_BENCH_DIR:-/var/tmp/galley-bench}
# buildah uses its own store, so cold runs can empty it without touching anyone else's images.
BUILDAH_ROOT=$BENCH_DIR/storage
BUILDAH_RUNROOT=$BENCH_DIR/runroot
BUILDER_IMAGE=localhost/galley-bench/rust-builder:1
RUNTIME_TAG=3.20
# Flows say BENCH_UPX=0|1, never UPX: upx reads $UPX as default options.
bh() { buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" --storage-driver overlay "$@"; }
RUNTIME_LOCAL=localhost/galley-bench/runtime:$RUNTIME_TAG
BUILDER_OCI=$BENCH_DIR/builder-oci
feature_of() {
  case "$1" in
    sqlite) echo db_sqlite ;; postgres) echo db_psql ;; mysql) echo db_mysql ;;
    *) echo "unknown variant $1" >&2; return 2 ;;
  esac
}
phase() { echo "@@phase $1"; }
# A flow's own buildah store, so its disk use and its cold reset concern it alone.
fbh() { buildah --root "$FLOW_DIR/storage" --runroot "$FLOW_DIR/runroot" --storage-driver overlay "$@"; }
# Loads the runtime base (pulled from the benchmark's registry, like a `docker pull`) and, with
# an argument, the builder base into the flow's store, under stable local names. Not timed.
load_bases() {
  local id
  if ! fbh inspect --type image "$RUNTIME_LOCAL" >/dev/null 2>&1; then
    id=$(fbh pull --quiet --tls-verify=false "$REGISTRY/library/busybox:$RUNTIME_TAG")
    fbh tag "$id" "$RUNTIME_LOCAL"
  fi
  if [ -n "${1:-}" ] && ! fbh inspect --type image "$BUILDER_IMAGE" >/dev/null 2>&1; then
    id=$(fbh pull --quiet "oci:$BUILDER_OCI:1")
    fbh tag "$id" "$BUILDER_IMAGE"
  fi
}
# Cold reset of a buildah store: every image but the bases, every container. Not --no-cache:
# buildah would then miss its own cache on the next build.
reset_store() {
  fbh rm --all >/dev/null 2>&1 || true
  local keep id
  # The manual flow's store has no builder image: a missing base is not an error here.
  keep=$(for ref in "$RUNTIME_LOCAL" "$BUILDER_IMAGE"; do fbh inspect --type image --format '{{.FromImageID}}' "$ref" 2>/dev/null || true; done)
  for id in $(fbh images --all --noheading --no-trunc --format '{{.ID}}' | sed 's/^sha256://' | sort -u); do
    grep -q "$id" <<<"$keep" || fbh rmi --force "$id" >/dev/null 2>&1 || true
  done
  fbh rmi --prune >/dev/null 2>&1 || true
}
# Deletes the flow's repository in the benchmark registry (filesystem storage), so a cold push
# uploads every blob again instead of finding them there.
reset_repo() { rm -rf "$REGISTRY_ROOT/docker/registry/v2/repositories/bench/$FLOW"; }
# Fills zig's cache ($ZIG_GLOBAL_CACHE_DIR) with musl libc and compiler-rt and nothing of the
# project: links the dependency-free fixture for the musl target in a scratch target dir.
warm_toolchain() {
  local t
  t=$(mktemp -d)
  (cd "$REPO_ROOT/fixtures/tiny" && cargo zigbuild --release --locked --target x86_64-unknown-linux-musl --target-dir "$t" -q) >&2
  rm -rf "$t"
}
# Starts `galley serve` (BIN, default the release build) on CONFIG with its output in WORK
# (serve.out, serve.err); sets serve_pid and serve_url, and a trap that stops the service when
# the script exits.
serve_start() {
  local config=$1 work=$2 bin=${3:-./target/release/galley}
  "$bin" serve --config "$config" >"$work/serve.out" 2>"$work/serve.err" &
  serve_pid=$!
  trap 'kill "$serve_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
  serve_url=$(sed -n 's/^galley serve: listening on //p' "$work/serve.out")
  [ -n "$serve_url" ] || { cat "$work/serve.err" >&2; return 1; }
}
# A random API token (hex).
bench_token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

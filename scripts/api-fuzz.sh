#!/usr/bin/env bash
# Fuzzes the running `galley serve` from its own OpenAPI document with schemathesis, every check
# on: undocumented statuses, content types and headers, schema-valid requests refused,
# schema-invalid ones accepted, 5xx, response bodies that do not match their schema. Builds the
# fuzzer submits really run (the tiny fixture on a local busybox base, no push). Fails on any
# finding; prints how many cases ran.
#
#   bash scripts/api-fuzz.sh [--max-examples N]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
examples=25
while [ $# -gt 0 ]; do
  case "$1" in
    --max-examples) examples=$2; shift ;;
    *) echo "api-fuzz.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# schemathesis in its own venv, outside the work tree (installed once, ~20 s).
venv=${GALLEY_TOOLS_DIR:-/var/tmp/galley-tools}/schemathesis
st=$venv/bin/schemathesis
if ! "$st" --version 2>/dev/null | grep -q 4.32.5; then
  rm -rf "$venv"; python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis==4.32.5
fi
bash scripts/setup.sh
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}"
cargo build --locked --quiet
. benchmarks/lib/common.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/galley-api-fuzz.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cp -r fixtures/tiny "$work/tiny"; rm -rf "$work/tiny/target"
bash fixtures/base/make-base.sh "$work/base" 3.20 >/dev/null
token=$(bench_token)
printf 'fuzz %s\n' "$token" >"$work/tokens"
cat >"$work/serve.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/data"
token_file = "$work/tokens"
[projects.tiny]
path = "$work/tiny"
base = "oci:$work/base:3.20"
TOML
serve_start "$work/serve.toml" "$work" "$repo/target/debug/galley"
pid=$serve_pid url=$serve_url
# serve_start's trap stops the service only; this one also removes the scratch directory.
trap cleanup EXIT
# The fuzzer never sees the token in argv: it reads it from its environment through a config.
cat >"$work/schemathesis.toml" <<'TOML'
headers = { Authorization = "Bearer ${GALLEY_FUZZ_TOKEN}" }
TOML
# A reused Idempotency-Key with another body is answered 422, as the IETF draft says, and the
# generator reuses its few small keys across bodies: every valid key it makes is made unique
# (replays of one key are tested in tests/it/serve.rs). Invalid keys stay as generated.
cat >"$work/galley_hooks.py" <<'PY'
import re, uuid
import schemathesis

VALID = re.compile(r'^([!#-~]{1,255}|"[!#-~]{1,255}")$')

# before_call runs in every phase (map_headers misses the coverage phase).
@schemathesis.hook
def before_call(ctx, case, kwargs):
    # A negative case is refused anyway, and editing it makes schemathesis re-judge it.
    if case.meta is not None and case.meta.generation.mode.is_negative:
        return
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and VALID.match(key):
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
PY
status=0
(cd "$work" && PYTHONPATH=$work SCHEMATHESIS_HOOKS=galley_hooks GALLEY_FUZZ_TOKEN=$token "$st" --config-file "$work/schemathesis.toml" run "$url/api/v1/openapi.json" \
  --checks all --max-examples "$examples" --seed 1 --no-color \
  --report junit --report-dir "$work/report") >"$work/fuzz.out" 2>&1 || status=$?
cat "$work/fuzz.out"
cases=$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$work/fuzz.out" | tail -1)
if [ "$status" != 0 ]; then
  echo "api-fuzz.sh: schemathesis found problems (exit $status) in ${cases:-?} cases" >&2
  exit 1
fi
[ -n "$cases" ] && [ "$cases" -gt 0 ] || { echo "api-fuzz.sh: no case ran" >&2; exit 1; }
echo "api-fuzz.sh: $cases cases, every check on, no finding" >&2

#!/usr/bin/env bash
# galley serve on the demo fixture: installs what galley needs (idempotent), builds galley, makes
# the small base image, and serves fixtures/authd on http://127.0.0.1:8700 (loopback only, no
# token) until Ctrl-C. Extra arguments go to `galley serve` (e.g. --listen 127.0.0.1:9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
demo=$PWD/target/demo
if [ ! -f "$demo/base/index.json" ]; then
  bash fixtures/base/make-base.sh "$demo/base" 3.20
fi
cat >"$demo/serve.toml" <<TOML
# Written by scripts/serve-demo.sh.
listen = "127.0.0.1:8700"
data_dir = "$demo/serve-data"

[projects.authd]
path = "$PWD/fixtures/authd"
base = "oci:$demo/base:3.20"
TOML
export ZIG_GLOBAL_CACHE_DIR=${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}
echo "serve-demo: config in $demo/serve.toml; try: curl -s http://127.0.0.1:8700/api/v1/projects" >&2
exec ./target/release/galley serve --config "$demo/serve.toml" "$@"

#!/usr/bin/env bash
# galley's main job on the realistic fixture: installs what galley needs (idempotent), builds
# galley, makes a small base image (Docker Hub is not reachable here, so the base comes from
# Debian's busybox-static), then builds the three authd variants into an OCI layout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
demo=target/demo
if [ ! -f "$demo/base/index.json" ]; then
  bash fixtures/base/make-base.sh "$demo/base" 3.20
fi
# Commit time of HEAD unless the caller pinned it.
./target/release/galley build --project fixtures/authd --variants sqlite,postgres,mysql \
  --base "oci:$demo/base:3.20" --output "$demo/out" "$@"
echo "demo: images in $demo/out (skopeo inspect oci:$demo/out:sqlite-0.3.1); report in $demo/out/report.json" >&2

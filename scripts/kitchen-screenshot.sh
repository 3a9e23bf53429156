#!/usr/bin/env bash
# Retakes docs/kitchen-build.png, the README's picture of the build view: runs the browser tests
# with the service's projects and data under /tmp/galley-demo (so the picture shows no checkout's
# paths), then copies their build-view screenshot. Needs what scripts/test.sh installs and a
# built target/debug/galley.
#
#   bash scripts/kitchen-screenshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
demo=/tmp/galley-demo
trap 'rm -rf "$demo"' EXIT
(cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
GALLEY_KITCHEN_WORK=$demo node --test --test-concurrency=1 --test-name-pattern "a build of two variants" tests/web/kitchen.test.mjs
cp target/kitchen-screenshots/build-view.png docs/kitchen-build.png
echo "kitchen-screenshot: docs/kitchen-build.png (paths under $demo)" >&2

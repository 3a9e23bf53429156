#!/usr/bin/env bash
# Runs galley's checks and tests: installs what they need (idempotent), then fmt, clippy, the
# Rust test suite, the dashboard's browser tests and the API fuzzer. The tests build real
# fixtures with cargo-zigbuild, UPX, skopeo, umoci and chroot (chroot needs root), drive Debian's
# chromium with playwright-core against a real `galley serve`, and fuzz one with schemathesis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One zig cache for every build the tests run (the first musl link fills it once, ~40 s).
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
# The browser tests use the galley that `cargo test` just built (target/debug/galley).
(cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
node --test --test-concurrency=1 tests/web/kitchen.test.mjs
# The API against its own OpenAPI document: schemathesis, every check, a fixed seed (~40 s).
bash scripts/api-fuzz.sh

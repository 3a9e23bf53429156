#!/usr/bin/env bash
# Installs what the benchmark needs beyond galley's own tools (scripts/setup.sh), from Debian.
# Idempotent: every package is checked first; nothing is installed when all are present.
#   buildah       runs the Dockerfiles (multi-stage flows and the manual host flow)
#   debootstrap   assembles the rust builder base image from Debian packages
#   fuse-overlayfs overlay storage for buildah where the kernel's overlay cannot be used
#   time          GNU time, for the max RSS of each flow's process tree
#   python3       the summariser and the SVG chart (no extra Python packages)
set -euo pipefail
cd "$(dirname "$0")/.."
# galley's own tools first (skopeo, umoci, busybox-static, docker-registry, UPX 4, zig, cargo-zigbuild).
bash scripts/setup.sh
need=()
for pkg in buildah debootstrap fuse-overlayfs time python3; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "benchmarks/setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

#!/usr/bin/env bash
# Flows 1-3: a multi-stage Dockerfile under `buildah bud --isolation chroot --layers`, one build and
# one push per variant.   multistage.sh prepare|clean|build   (env from benchmarks/bench.py)
set -euo pipefail
. "$REPO_ROOT/benchmarks/lib/common.sh"
dockerfile="$REPO_ROOT/benchmarks/dockerfiles/$FLOW.Dockerfile"
# Cache mounts go under $TMPDIR/buildah-cache-0: keep them in the flow's directory.
export TMPDIR="$FLOW_DIR/tmp"
case "$1" in
  prepare)
    mkdir -p "$FLOW_DIR" "$TMPDIR"
    load_bases builder ;;
  clean)
    reset_store
    rm -rf "$TMPDIR"; mkdir -p "$TMPDIR"
    reset_repo ;;
  build)
    for variant in ${VARIANTS//,/ }; do
      phase build
      fbh bud --isolation chroot --layers --pull=false \
        --build-arg BUILDER="$BUILDER_IMAGE" --build-arg BASE="$RUNTIME_LOCAL" \
        --build-arg FEATURES="$(feature_of "$variant")" \
        -f "$dockerfile" -t "bench/$FLOW:$variant-$VERSION" "$PROJECT"
      phase push
      fbh push --tls-verify=false "bench/$FLOW:$variant-$VERSION" \
        "docker://$REGISTRY/bench/$FLOW:$variant-$VERSION"
    done ;;
esac

#!/usr/bin/env bash
# Builds the docker-sim image: the debootstrap base (when missing), the wheelhouse, then docker build.
#
#   scripts/build_sim_image.sh [IMAGE_TAG]        (default pytest-sglang-pd-sim:latest)
#   scripts/build_sim_image.sh --base-only        only the debootstrap base image
#
# Environment: BASE_IMAGE (default pytest-sglang-pd-base:bookworm), DEBIAN_MIRROR
# (default http://deb.debian.org/debian), WITH_NIXL=1 to add the NIXL wheel (large).
# Idempotent: an existing base image and already downloaded wheels are reused; docker build
# reuses its layer cache. Each step's output goes to a log that is printed only on failure.
set -euo pipefail

BASE_ONLY=0
if [[ ${1:-} == --base-only ]]; then BASE_ONLY=1; shift; fi
IMAGE_TAG=${1:-pytest-sglang-pd-sim:latest}
BASE_IMAGE=${BASE_IMAGE:-pytest-sglang-pd-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WITH_NIXL=${WITH_NIXL:-0}
# python3 matches the image's interpreter (bookworm: CPython 3.11 on glibc 2.36, x86_64)
PIP_TARGET_ARGS=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
  --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64 --platform any)

repo=$(cd "$(dirname "$0")/.." && pwd)
wheelhouse=$repo/docker/wheelhouse
step_log=$(mktemp)
rootfs=""
cleanup() {
  rm -f "$step_log"
  if [[ -n $rootfs ]]; then rm -rf "$rootfs"; fi
}
trap cleanup EXIT

step() {  # step DESCRIPTION CMD...: run CMD quietly, show its output only when it fails
  local what=$1; shift
  echo "build_sim_image: $what"
  if ! "$@" >"$step_log" 2>&1; then
    tail -n 40 "$step_log" >&2
    echo "build_sim_image: FAILED: $what" >&2
    exit 1
  fi
}

make_base_image() {
  rootfs=$(mktemp -d /tmp/sglang-pd-rootfs.XXXXXX)
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,libibverbs1,librdmacm1,libnuma1,libcurl4,procps \
    bookworm "$rootfs" "$DEBIAN_MIRROR"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE"
}

project_requirements() {  # the project's runtime dependencies, from pyproject.toml
  python3 - "$repo/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
}

build_wheelhouse() {
  mkdir -p "$wheelhouse/deps" "$wheelhouse/project" "$wheelhouse/nixl"
  project_requirements >"$wheelhouse/deps/requirements.txt"
  pip download --quiet -d "$wheelhouse/deps" "${PIP_TARGET_ARGS[@]}" -r "$wheelhouse/deps/requirements.txt"
  rm -f "$wheelhouse"/project/*.whl
  pip wheel --quiet --no-deps -w "$wheelhouse/project" "$repo"
  if [[ $WITH_NIXL == 1 ]]; then
    pip download --quiet --no-deps -d "$wheelhouse/nixl" "${PIP_TARGET_ARGS[@]}" nixl-cu12 numpy
  fi
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  step "making base image $BASE_IMAGE with debootstrap (takes a few minutes)" make_base_image
fi
if [[ $BASE_ONLY == 1 ]]; then echo "build_sim_image: ready: $BASE_IMAGE"; exit 0; fi
step "filling wheelhouse $wheelhouse" build_wheelhouse
# The label lets a run tell an image built from other sources of the suite (pytest_sglang_pd/image.py).
source_digest=$(cd "$repo" && python3 -m pytest_sglang_pd.image)
step "building image $IMAGE_TAG" docker build \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "WITH_NIXL=$WITH_NIXL" \
  --label "pytest-sglang-pd.source=$source_digest" \
  -t "$IMAGE_TAG" -f "$repo/docker/Dockerfile" "$repo/docker"
echo "build_sim_image: ready: $IMAGE_TAG"

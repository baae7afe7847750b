#!/usr/bin/env bash
# Container smoke test (what `make docker-smoke` runs): build the image, then analyze -> train ->
# predict on data_samples/ inside the container, and check on the host that the outputs exist, are
# non-empty and belong to the invoking user.
#
# Environment:
#   CONTAINER_ENGINE  docker | podman (default: the first of podman, docker whose `info` answers)
#   IMAGE             tag to build and run (default: defectdet:smoke)
#   BASE_IMAGE        base image build argument (default: python:3.11-slim)
#   VARIANT           cpu | cuda build argument (default: cpu)
#   TORCH_INDEX_URL   PyTorch wheel index build argument (default: empty = the configured index)
#   BUILD_ARGS        extra arguments for the build command (word-split)
#   SKIP_BUILD=1      reuse an existing $IMAGE instead of building it
#   KEEP_TMP=1        keep the temporary runs folder for inspection
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
IMAGE=${IMAGE:-defectdet:smoke}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
VARIANT=${VARIANT:-cpu}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
DATA=$REPO/data_samples

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nDOCKER SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------------------ engine
ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
    # the first one that answers (a docker client without a daemon does not)
    for candidate in podman docker; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
            ENGINE=$candidate
            break
        fi
    done
    [ -n "$ENGINE" ] || die "no working container engine: podman/docker missing or not running (set CONTAINER_ENGINE)"
fi
command -v "$ENGINE" >/dev/null 2>&1 || die "container engine '$ENGINE' not found"
"$ENGINE" info >/dev/null 2>&1 || die "'$ENGINE info' fails: is the engine (daemon/socket) running?"
[ -d "$DATA/images" ] || die "$DATA/images not found"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/defectdet-smoke.XXXXXX")
RUNS=$TMP/runs
mkdir -p "$RUNS"
cleanup() {
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        echo "(kept $TMP)"
    # files written in the container as another uid (rootless engines) may need the engine to remove
    elif ! rm -rf "$TMP" 2>/dev/null && [ "$ENGINE" = podman ]; then
        podman unshare rm -rf "$TMP" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ build
declare -a build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VARIANT=$VARIANT")
[ -n "$TORCH_INDEX_URL" ] && build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
# podman would try to pull the base from a registry; use a local base image when there is one
if [ "$ENGINE" = podman ] && podman image exists "$BASE_IMAGE"; then
    build_args+=(--pull=never)
fi
# shellcheck disable=SC2206
[ -n "${BUILD_ARGS:-}" ] && build_args+=($BUILD_ARGS)

if [ "${SKIP_BUILD:-0}" = 1 ]; then
    say "skipping the build, using $IMAGE"
    "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1 || die "SKIP_BUILD=1 but image $IMAGE does not exist"
else
    say "$ENGINE build -t $IMAGE ${build_args[*]} ."
    t0=$SECONDS
    "$ENGINE" build -t "$IMAGE" "${build_args[@]}" . || die "image build failed"
    echo "build took $((SECONDS - t0)) s"
fi

# ------------------------------------------------------------------------------ run
# --user: the files written to /runs belong to whoever runs this script (root under rootful
# engines run as root). HOME=/tmp: that uid may have no home directory in the image.
# Rootless engines map the container's uids: podman keeps ours with --userns=keep-id; rootless
# docker maps container root to us, so run as root inside.
user="$(id -u):$(id -g)"
declare -a extra=()
if [ "$(id -u)" != 0 ]; then
    if [ "$ENGINE" = podman ]; then
        extra+=(--userns=keep-id)
    elif "$ENGINE" info --format '{{.SecurityOptions}}' 2>/dev/null | grep -q rootless; then
        user=0:0
    fi
fi
declare -a run=("$ENGINE" run --rm --user "$user" -e HOME=/tmp ${extra[@]+"${extra[@]}"}
    -v "$DATA:/data:ro" -v "$RUNS:/runs")
run+=("$IMAGE")

declare -a summary=()
step() {  # step NAME ARGS...: run `defectdet ARGS...` in the container, timed
    local name=$1
    shift
    say "defectdet $*"
    local t0=$SECONDS
    "${run[@]}" "$@" || die "'defectdet $*' failed in the container"
    summary+=("$(printf '%-8s ok    %4d s' "$name" $((SECONDS - t0)))")
}
check_file() {  # check_file PATH: exists, non-empty, owned by the invoking user
    local f=$1
    [ -e "$f" ] || die "expected output missing: $f"
    [ -s "$f" ] || die "output is empty: $f"
    local owner
    owner=$(stat -c '%u:%g' "$f")
    [ "$owner" = "$(id -u):$(id -g)" ] || die "$f is owned by $owner, expected $(id -u):$(id -g)"
    printf '   ok  %-40s %8s bytes  owner %s\n' "${f#"$RUNS"/}" "$(stat -c %s "$f")" "$owner"
}

t_start=$SECONDS
say "defectdet --version"
version=$("${run[@]}" --version) || die "'defectdet --version' failed in the container"
echo "$version"
summary+=("$(printf '%-8s ok    %s' version "$version")")

step analyze analyze /data --json /runs/analysis.json
check_file "$RUNS/analysis.json"
if command -v python3 >/dev/null 2>&1; then
    python3 -c "import json, sys; json.load(open(sys.argv[1]))" "$RUNS/analysis.json" 2>/dev/null \
        || die "$RUNS/analysis.json is not valid JSON"
fi

if "${run[@]}" train --help >/dev/null 2>&1; then
    step train train /data --epochs 1 --batch-size 4 --image-size 128 --backbone resnet18 \
        --backbone-weights none --workers 0 --max-steps 5 --fpn-channels 64 --head-convs 1 \
        --project /runs/train --name smoke
    for f in best.pt last.pt; do check_file "$RUNS/train/smoke/weights/$f"; done
    for f in config.yaml metrics.csv; do check_file "$RUNS/train/smoke/$f"; done
    have_weights=1
else
    echo "SKIPPED: train not available in this build"
    summary+=("$(printf '%-8s SKIPPED (not available in this build)' train)")
    have_weights=0
fi

if ! "${run[@]}" predict --help >/dev/null 2>&1; then
    echo "SKIPPED: predict not available in this build"
    summary+=("$(printf '%-8s SKIPPED (not available in this build)' predict)")
elif [ "$have_weights" = 0 ]; then
    echo "SKIPPED: predict needs the weights from the train step"
    summary+=("$(printf '%-8s SKIPPED (no weights: train skipped)' predict)")
else
    step predict predict /data/images --weights /runs/train/smoke/weights/best.pt --out /runs/predict
    for f in predictions.json predictions.csv images.csv; do check_file "$RUNS/predict/$f"; done
fi

# ------------------------------------------------------------------------------ summary
size=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}' 2>/dev/null || echo 0)
say "docker smoke summary"
printf '   engine   %s (%s)\n' "$ENGINE" "$("$ENGINE" --version 2>/dev/null | head -n1)"
printf '   image    %s, %s MB, variant %s, base %s\n' "$IMAGE" "$((size / 1000000))" "$VARIANT" "$BASE_IMAGE"
printf '   %s\n' "${summary[@]}"
printf '   outputs  %s\n' "$(cd "$RUNS" && find . -type f | sort | sed 's|^\./||' | tr '\n' ' ')"
printf '   total    %d s (runs)\n' $((SECONDS - t_start))
echo "DOCKER SMOKE PASSED"

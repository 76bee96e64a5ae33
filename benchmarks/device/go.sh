#!/usr/bin/env bash
# Device side of bundle.sh: unpack the bundle and the provider, run a grid on the GPU, put the result files, the
# checkpoints of unfinished runs, the runner's log and nvidia-smi samples under $OUT. Stops the runner BUDGET
# seconds after it starts (default 540) so that the call ends inside its limit.
#   bash benchmarks/device/go.sh benchmarks/device/ablation_seeds12.yaml --cpus 16 --threads 2 --gpus-per-run 0.125
set -u
GRID=${1:?grid file}; shift
export PYTHONUNBUFFERED=1
t0=$(date +%s)
tar xJf .devbundle/site312.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site312:$PWD
mkdir -p .devwork && tar xJf .devbundle/data.tar.xz -C .devwork || exit 1
echo "unpacked in $(($(date +%s) - t0)) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, ray, qlib, mlflow; print(torch.__version__, torch.cuda.is_available(), ray.__version__, qlib.__version__, mlflow.__version__)"
(while true; do
    echo "$(($(date +%s) - t0)) s: $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)" >> "$OUT/smi.log"
    sleep 15
done) > /dev/null 2>&1 &
sampler=$!
left=$((${BUDGET:-540} - ($(date +%s) - t0)))
timeout -s INT "$left" python3 -m benchmarks.run --grid "$GRID" --provider-uri .devwork/data/cn_csi300 \
    --sw-csv .devdata/sw_industry_history.csv --model-path .devdata/qlib_reference/model_lstm_csi300.pkl \
    --cache-dir .devwork/cache --results-dir .devwork/results "$@" > "$OUT/run.log" 2>&1
echo "runner exit $? at $(($(date +%s) - t0)) s"
kill "$sampler"
ray stop --force > /dev/null 2>&1
tar czf "$OUT/back.tgz" .devwork/results $(ls -d .devwork/cache/checkpoints 2>/dev/null)
ls .devwork/results/*/runs

#!/usr/bin/env bash
# Device side of bundle.sh: unpack the bundle and the provider, run one command with them on the GPU, and put under
# $OUT its log (run.log), nvidia-smi samples (smi.log) and back.tgz: .devwork/results, the rolling result files, the
# search's trial records (benchmarks/results/search), the search experiment (.devwork/cache/search_ray) and
# the checkpoints of unfinished runs. The command is stopped BUDGET seconds after go.sh starts (default 540), so
# that the call ends inside its limit. From the repository root:
#   bash benchmarks/device/go.sh python3 -m benchmarks.run --grid benchmarks/device/ablation_seeds12.yaml \
#       --provider-uri .devwork/data/cn_csi300 --sw-csv .devdata/sw_industry_history.csv \
#       --model-path .devdata/qlib_reference/model_lstm_csi300.pkl --cache-dir .devwork/cache \
#       --results-dir .devwork/results --cpus 16 --threads 2 --gpus-per-run 0.125
set -u
[ $# -gt 0 ] || { echo "usage: go.sh COMMAND [ARGS...]" >&2; exit 2; }
export PYTHONUNBUFFERED=1
t0=$(date +%s)
tar xJf .devbundle/site312.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site312:$PWD PATH=/tmp/site312/bin:$PATH  # the bundle; its bin holds ray and mlflow
mkdir -p .devwork && tar xJf .devbundle/data.tar.xz -C .devwork || exit 1
echo "unpacked in $(($(date +%s) - t0)) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, ray, qlib, mlflow; print(torch.__version__, torch.cuda.is_available(), ray.__version__, qlib.__version__, mlflow.__version__)"
(while true; do
    echo "$(($(date +%s) - t0)) s: $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)" >> "$OUT/smi.log"
    sleep 15
done) > /dev/null 2>&1 &
sampler=$!
timeout -s INT "$((${BUDGET:-540} - ($(date +%s) - t0)))" "$@" > "$OUT/run.log" 2>&1
echo "command exit $? at $(($(date +%s) - t0)) s"
kill "$sampler"
ray stop --force > /dev/null 2>&1
tar czf "$OUT/back.tgz" $(ls -d .devwork/results benchmarks/results/rolling/runs benchmarks/results/search .devwork/cache/checkpoints .devwork/cache/search_ray 2>/dev/null)
grep -a "===\|grid \|rolling step" "$OUT/run.log" | tail -20

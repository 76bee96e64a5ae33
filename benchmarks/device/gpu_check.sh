#!/usr/bin/env bash
# Issue 29's GPU checks in one call, run by go.sh on a lent GPU (from the repository root, carrying .devbundle and
# .devdata as for the ablation):
#   BUDGET=560 bash benchmarks/device/go.sh bash benchmarks/device/gpu_check.sh
# 1. the whole test suite with CUDA present (it stops here on a failure), 2. five members' train epoch, sequential
# against batched, 3. the speed table: qlib's HIST, ours before 0.6's loop, ours, ours with cuda_graphs, ours with
# ensemble: 5 batched, ours bf16, and 8 of the fastest sharing the GPU, 3 epochs each, on one cached
# handler (results in .devwork/results/speed_cuda.json, and so in back.tgz). The bf16-vs-fp32 IC check is a grid of
# its own (benchmarks/device/precision.yaml, ~8 min with 6 runs sharing the GPU): run it in a second call.
set -u
# the whole suite with CUDA present (the gpu-marked tests run; the rest must pass on a CUDA machine too): a failure
# ends the check here, with a non-zero status, before any timing is taken
if ! python3 -m pytest -q -p no:cacheprovider -x; then
    echo "gpu_check: THE TEST SUITE FAILED WITH CUDA PRESENT: no timings taken" >&2
    exit 1
fi
# K members' train epoch, sequential against batched (ensemble_mode), on synthetic days: seconds, not minutes
mkdir -p .devwork/results && python3 benchmarks/ensemble_step_bench.py --members 5 --pairs 4 --device cuda | tee .devwork/results/ensemble_step_cuda.txt
python3 -m benchmarks.speed --device cuda --precision fp32 bf16 --shared 8 --epochs 3 \
    --provider-uri .devwork/data/cn_csi300 --sw-csv .devdata/sw_industry_history.csv --cache-dir .devwork/cache \
    --out .devwork/results/speed_cuda.json

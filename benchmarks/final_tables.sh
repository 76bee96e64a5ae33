#!/usr/bin/env bash
# The two final tables and the targets page, rewritten from the committed run files (no fit runs here):
#   benchmarks/results/final.md                 the dev window (train 2010-2016, valid 2017-2018, test 2019-2022)
#   benchmarks/results/qlib-segments-capped.md  qlib's segments (train 2010-2014, valid 2015-2016, test 2017-2020)
# The shipped YAML's row (hist_pit+chosen) is the screen's fits of its choice (grids/screen_dev.yaml and
# grids/screen_qlib_segments.yaml, row hist_pit+best_aux), borrowed: the same data and budget as each table's rows.
# qlib's HIST at its own budget (grids/qlib_segments_full.yaml: 200 epochs, early stop 20) joins the second table
# as qlib_hist_patched+full_budget once a run of it has finished (--borrow-budget: the page states its budget).
#   bash benchmarks/final_tables.sh
set -euo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results
provider=../shared/data/cn_csi300

dev_runs="python -m benchmarks.run --grid benchmarks/grids/final.yaml --provider-uri $provider --cpus 2 --threads 1; \
python -m benchmarks.run --grid benchmarks/grids/screen_dev.yaml --provider-uri $provider --cpus 2 --threads 1; \
for s in 0 1 2 3 4; do python -m benchmarks.seed_average --grid benchmarks/grids/final.yaml --row hist_pit+best \
--seeds \$(seq \$s \$((s+4))) --provider-uri $provider; python -m benchmarks.seed_average --grid benchmarks/grids/final.yaml \
--row qlib_hist_patched --seeds \$(seq \$s \$((s+4))) --provider-uri $provider; done"
dev_report=(--grid final --borrow screen-dev:hist_pit+best_aux=hist_pit+chosen --versus qlib_hist_patched
    --versus hist_pit+best --versus hist_pit+pretrained_as_is --versus qlib_hist_patched+avg5 --versus hist_pit)
python -m benchmarks.report "${dev_report[@]}" --command "$dev_runs; python -m benchmarks.report ${dev_report[*]}"

qseg_runs="python -m benchmarks.run --grid benchmarks/grids/qlib_segments.yaml --provider-uri $provider --cpus 2; \
python -m benchmarks.run --grid benchmarks/grids/screen_qlib_segments.yaml --provider-uri $provider --cpus 2 --threads 1"
qseg_report=(--grid qlib-segments-capped --borrow screen-qlib-segments:hist_pit+best_aux=hist_pit+chosen
    --versus qlib_hist_patched)
if compgen -G "$results/qlib-segments-full/runs/*.json" >/dev/null; then
    qseg_runs="$qseg_runs; python -m benchmarks.run --grid benchmarks/grids/qlib_segments_full.yaml \
--checkpoint-dir benchmarks/results/checkpoints \
--provider-uri $provider --cpus 2 --threads 1"
    qseg_report+=(--borrow-budget qlib-segments-full:qlib_hist_patched=qlib_hist_patched+full_budget
        --versus qlib_hist_patched+full_budget)
fi
python -m benchmarks.report "${qseg_report[@]}" --command "$qseg_runs; python -m benchmarks.report ${qseg_report[*]}"
# and the targets page (results/edge.md) from the same run files
python -m benchmarks.edge >/dev/null

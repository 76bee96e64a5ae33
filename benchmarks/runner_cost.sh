#!/usr/bin/env bash
# What a grid slice costs in wall time on the Ray runner against the claim-file runner it replaced (issue 14).
#
#   bash benchmarks/runner_cost.sh ray     [EPOCHS]  # python -m benchmarks.run, a local Ray of 2 CPUs, 1 thread a run
#   bash benchmarks/runner_cost.sh claims  [EPOCHS]  # the claim-file runner, two processes of 1 thread each
#   bash benchmarks/runner_cost.sh prepare [EPOCHS]  # only write both runners' inputs into $WORK (no run)
#
# The slice: the ablation's `default` variant (the hist_pit row, cpu-quick data), seeds 0 and 1, EPOCHS epochs each
# (default 2; early stop never ends them sooner), so both runners do the same two fits and the same records. Each
# call starts from nothing but the shared caches (handler frame, concept files in benchmarks/cache): its results
# folder under $WORK is emptied first, so every call runs both fits. Time each call as a whole process, e.g.
# `/usr/bin/time -v bash benchmarks/runner_cost.sh ray`, alternating the two a few times.
#
# The claim-file runner is benchmarks/run.py as of eabbb7d (the last commit before Ray), read from git, with three
# edits so that it runs on today's package and benchmarks.config: atomic_write_text comes from qlib_hist.atomic_files
# (it was qlib_hist._io), qlib_init_kwargs takes a tracking URI (sqlite_uri of its per-process store), and its
# profile's n_epochs and early_stop are set to EPOCHS. Run from the repository root of a
# git clone (with history), in the environment of `pip install -e ".[bench]"`.
set -euo pipefail
runner=${1:?usage: bash benchmarks/runner_cost.sh ray|claims|prepare [EPOCHS]}
epochs=${2:-2}
provider=${PROVIDER_URI:-../shared/data/cn_csi300}
work=${WORK:-/tmp/qlib_hist_runner_cost}
python=${PYTHON:-python}

prepare() {
    mkdir -p "$work"
    cat >"$work/grid.yaml" <<GRID
name: runner_cost
profile: cpu-quick
settings: {n_epochs: $epochs, early_stop: $epochs}
models: [hist_pit]
seeds: [0, 1]
variants:
  default: {}
GRID
    git show eabbb7d:benchmarks/run.py \
        | sed -e 's|^from qlib_hist._io import atomic_write_text$|from qlib_hist.atomic_files import atomic_write_text\nfrom benchmarks.config import sqlite_uri|' \
            -e 's|cache / f"mlruns_{os.getpid()}.db")|sqlite_uri(cache / f"mlruns_{os.getpid()}.db"))|' \
            -e "s|profile = PROFILES\[args.profile\]|profile = dict(PROFILES[args.profile], n_epochs=$epochs, early_stop=$epochs)|" \
            >"$work/run_claims.py"
    if ! grep -q '^from qlib_hist.atomic_files import' "$work/run_claims.py" || ! grep -q 'sqlite_uri(cache' "$work/run_claims.py" ||
        ! grep -q "n_epochs=$epochs," "$work/run_claims.py"; then
        echo "runner_cost.sh: the edits no longer apply to eabbb7d:benchmarks/run.py" >&2
        exit 1
    fi
}

case "$runner" in
prepare)
    prepare
    ;;
ray)
    prepare
    rm -rf "$work/results_ray"
    exec "$python" -m benchmarks.run --grid "$work/grid.yaml" --provider-uri "$provider" \
        --results-dir "$work/results_ray" --cpus 2 --threads 1
    ;;
claims)
    prepare
    rm -rf "$work/results_claims"
    for _ in 1 2; do
        PYTHONPATH="$PWD" "$python" "$work/run_claims.py" --profile cpu-quick --provider-uri "$provider" \
            --models hist_pit --seeds 0 1 --threads 1 --results-dir "$work/results_claims" &
    done
    wait -n && wait -n
    ;;
*)
    echo "runner_cost.sh: runner must be ray, claims or prepare, got '$runner'" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The CPU train pass of this checkout against commit BASE, alternated PAIRS times (default 6) so that both share the
# machine's load: prints one line per run, "base|head min_s median_s" (benchmarks/epoch_step_bench.py).
#   bash benchmarks/cpu_epoch_ab.sh ecb6d9e 6
set -euo pipefail
base=${1:?usage: cpu_epoch_ab.sh BASE_COMMIT [PAIRS]}
pairs=${2:-6}
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git -C "$here" worktree add -q --detach "$tree" "$base"
for _ in $(seq "$pairs"); do
    PYTHONPATH="$tree" python "$here/benchmarks/epoch_step_bench.py" base
    PYTHONPATH="$here" python "$here/benchmarks/epoch_step_bench.py" head
done

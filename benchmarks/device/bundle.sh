#!/usr/bin/env bash
# Pack what a grid needs on a GPU machine that has Python 3.12 and torch but no qlib, Ray or mlflow, and no network,
# under a size cap on what travels (64 MiB here):
#   .devbundle/site312.tar.xz  pyqlib, Ray, mlflow and their needs for CPython 3.12, trimmed (Ray's Java jars and
#                              its rllib/serve/data/tune/train/llm libraries, mlflow's web UI, debug symbols) ~31 MB;
#                              with SEARCH=1 also Ray Tune (and the train/data libraries it imports) and Optuna,
#                              for benchmarks.search
#   .devbundle/data.tar.xz     the provider from FIRST_DAY on (default 2013-06-03: the cpu-quick profile's first fit
#                              date less its 60-day window and more; the search and the qlib-bench profile start in
#                              2010 and need FIRST_DAY=2010-01-04), to LAST_DAY if set (qlib-bench's test ends in
#                              2020: LAST_DAY=2020-09-30 keeps the bundle under the cap), values unchanged, as
#                              .devwork/data/cn_csi300
#   .devdata/                  the SW table and qlib's pretrained LSTM
# Run from the repository root: bash benchmarks/device/bundle.sh ../shared/data [packages-on-device.txt]
# The second argument lists the device's installed distributions, one name per line; those are not packed.
set -euo pipefail
DATA=${1:?provider data folder (holding cn_csi300, sw_industry_history.csv, qlib_reference)}
HAVE=${2:-}
WORK=$(mktemp -d)
mkdir -p .devbundle .devdata .devwork
for p in /.devbundle/ /.devdata/ /.devwork/; do grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
PLAT="--python-version 3.12 --implementation cp --only-binary=:all:"
for m in 2_17 2_24 2_27 2_28 2_31 2_34; do PLAT="$PLAT --platform manylinux_${m}_x86_64"; done
PLAT="$PLAT --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
# qlib's own requirements minus those it imports lazily (gym is sdist-only and cvxpy's solvers are ~150 MB)
# one resolve for all (two would each pick their own versions of a shared dependency, e.g. pyarrow)
RAY="ray==2.60.0"
EXTRA=""
if [ "${SEARCH:-0}" = 1 ]; then RAY="ray[tune]==2.60.0"; EXTRA="optuna==5.0.0"; fi
python3 -m pip download -q $PLAT -d "$WORK/whl" "mlflow==3.17.2" "$RAY" $EXTRA loguru fire ruamel.yaml redis \
    python-redis-lock pymongo dill pydantic-settings
python3 -m pip download -q $PLAT --no-deps -d "$WORK/whl" pyqlib==0.9.7
python3 -m pip download -q --no-deps -d "$WORK/whl" gym==0.26.2 gym-notices==0.1.0
if [ -n "$HAVE" ]; then
    python3 - "$WORK/whl" "$HAVE" <<'PY'
import re, sys
from pathlib import Path
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(line.split("==")[0].strip()) for line in open(sys.argv[2]) if line.strip()}
for f in Path(sys.argv[1]).iterdir():
    if norm(f.name.split("-")[0]) in have:
        f.unlink()
PY
fi
python3 -m pip install -q --no-deps --no-compile --ignore-requires-python --target "$WORK/site312" $PLAT "$WORK"/whl/*.whl
for t in "$WORK"/whl/gym*.tar.gz; do if [ -f "$t" ]; then tar xzf "$t" -C "$WORK/whl"; fi; done
for d in "$WORK"/whl/gym-0.26.2/gym "$WORK"/whl/gym_notices-0.1.0/gym_notices; do
    if [ -d "$d" ]; then cp -r "$d" "$WORK/site312/"; fi
done
S="$WORK/site312"
if [ "${SEARCH:-0}" = 1 ]; then rm -rf "$S"/ray/{jars,rllib,serve,llm}; else rm -rf "$S"/ray/{jars,rllib,serve,data,tune,train,llm}; fi
rm -rf "$S/ray/dashboard/client/build" "$S/mlflow/server/js"
find "$S" -name "*.map" -delete
find "$S" -name __pycache__ -prune -exec rm -rf {} +
find "$S" \( -name "*.so" -o -name "*.so.*" \) -size +500k -exec strip --strip-unneeded {} + 2>/dev/null || true
strip --strip-unneeded "$S/ray/core/src/ray/gcs/gcs_server" "$S/ray/core/src/ray/raylet/raylet"
mkdir -p "$S/cvxpy"
cat > "$S/cvxpy/__init__.py" <<'PY'
"""Device-bundle stand-in for cvxpy: qlib imports it at module level for its enhanced-indexing optimizer, which the
HIST benchmarks never call. Any use fails loudly."""


def __getattr__(name):
    raise ImportError(f"cvxpy.{name}: cvxpy is not in this device bundle")
PY
XZ_OPT=-9e tar cJf .devbundle/site312.tar.xz -C "$WORK" site312
python3 benchmarks/device/cut_provider.py "$DATA/cn_csi300" .devwork/data/cn_csi300 "${FIRST_DAY:-2013-06-03}" ${LAST_DAY:-}
tar cJf .devbundle/data.tar.xz -C .devwork data
cp -r "$DATA/sw_industry_history.csv" "$DATA/qlib_reference" .devdata/
rm -rf "$WORK"
ls -la .devbundle

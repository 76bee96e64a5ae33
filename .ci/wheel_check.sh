#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel (the wheel built from the sdist, so the sdist must hold
# what a build needs), check what each holds, install the wheel into a fresh venv outside the checkout, and from a
# temporary folder run `qlib-hist demo --epochs 1` and then `qrun` on the YAML the demo wrote. Imports cannot come
# from the source tree: the build works on a copy of the checkout's files, and nothing runs from the checkout.
# Standalone: `bash .ci/wheel_check.sh` (needs python3 with venv, or WHEEL_CHECK_PYTHON, and the package registries);
# .ci/run calls it after the tests. Its temporary folder (mktemp -d) goes when it exits, passed or failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)
py=${WHEEL_CHECK_PYTHON:-python3}  # the interpreter the fresh venv is made from
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qlib-hist-wheel.XXXXXX")
cleanup() {
    local t=$SECONDS
    rm -rf "$tmp"
    echo "== wheel check: removed $tmp ($((SECONDS - t))s)"
}
trap cleanup EXIT
t_all=$SECONDS
t_stage=$SECONDS
stage() {
    echo "== wheel check: $* ($((SECONDS - t_all))s so far)"
    t_stage=$SECONDS
}
done_stage() { echo "   ok ($((SECONDS - t_stage))s)"; }
fail() {
    echo "wheel check FAILED: $*" >&2
    exit 1
}
# logged NAME CMD...: run CMD with its output in $tmp/NAME.log; on failure show the log's tail and stop
logged() {
    local name=$1
    shift
    if ! "$@" >"$tmp/$name.log" 2>&1; then
        tail -n 60 "$tmp/$name.log" >&2
        fail "$* (the last lines of its log above)"
    fi
}

stage "copy the checkout's files (tracked and untracked, not ignored) to $tmp/src"
mkdir -p "$tmp/src" "$tmp/dist" "$tmp/work"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # no egg-info, venv or build output of the checkout's comes along: the sdist is made as from a fresh clone
    (cd "$repo" && git ls-files -z -c -o --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) |
        tar -xf - -C "$tmp/src"
else
    tar --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' -C "$repo" -cf - . |
        tar -xf - -C "$tmp/src"
fi
done_stage

stage "fresh venv $tmp/venv: torch==2.13.0 (the local CPU build) and build"
"$py" -m venv "$tmp/venv"
vpy="$tmp/venv/bin/python"
logged pip-torch "$vpy" -m pip install torch==2.13.0
logged pip-build "$vpy" -m pip install "build>=1"
done_stage

stage "python -m build: the sdist, then the wheel from the sdist"
(cd "$tmp/work" && logged build "$vpy" -m build --outdir "$tmp/dist" "$tmp/src")
shopt -s nullglob
sdists=("$tmp"/dist/*.tar.gz)
wheels=("$tmp"/dist/*.whl)
shopt -u nullglob
[ "${#sdists[@]}" -eq 1 ] || fail "expected one sdist in dist/, got ${#sdists[@]}"
[ "${#wheels[@]}" -eq 1 ] || fail "expected one wheel in dist/, got ${#wheels[@]}"
sdist=${sdists[0]}
wheel=${wheels[0]}
echo "   $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB), $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"
done_stage

stage "what the sdist and the wheel hold"
tar -tzf "$sdist" | sed 's|^[^/]*/||' >"$tmp/sdist.txt"
"$vpy" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel" >"$tmp/wheel.txt"
configs=()
for f in "$tmp"/src/qlib_hist/configs/*.yaml; do configs+=("qlib_hist/configs/$(basename "$f")"); done
[ "${#configs[@]}" -gt 0 ] || fail "no qlib_hist/configs/*.yaml in the checkout"
missing=0
for f in README.md setup.cfg pyproject.toml "${configs[@]}"; do
    grep -qxF "$f" "$tmp/sdist.txt" || { echo "   the sdist lacks $f" >&2; missing=1; }
done
# every module and data file of the package, as the checkout has them
(cd "$tmp/src" && find qlib_hist -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | sort) >"$tmp/package.txt"
while IFS= read -r f; do
    grep -qxF "$f" "$tmp/sdist.txt" || { echo "   the sdist lacks $f" >&2; missing=1; }
    grep -qxF "$f" "$tmp/wheel.txt" || { echo "   the wheel lacks $f" >&2; missing=1; }
done <"$tmp/package.txt"
grep -q '^qlib_hist-[^/]*\.dist-info/entry_points\.txt$' "$tmp/wheel.txt" ||
    { echo "   the wheel lacks its entry_points.txt (the qlib-hist command)" >&2; missing=1; }
[ "$missing" -eq 0 ] || fail "files missing from the sdist or the wheel (listed above)"
grep -F "qlib_hist/configs/" "$tmp/wheel.txt" | sed 's/^/   in the wheel: /'
echo "   $(wc -l <"$tmp/package.txt") package files in both; README.md, setup.cfg, pyproject.toml in the sdist"
done_stage

stage "pip install the wheel into the fresh venv"
logged pip-wheel "$vpy" -m pip install "$wheel"
done_stage

cd "$tmp/work"
stage "import from $tmp/work: qlib_hist comes from the venv, not the checkout"
file=$("$vpy" -c 'import qlib_hist; print(qlib_hist.__file__)')
echo "   qlib_hist.__file__ = $file"
case "$file" in
"$tmp/venv/"*) ;;
*) fail "qlib_hist imported from $file, not from $tmp/venv" ;;
esac
[ -x "$tmp/venv/bin/qlib-hist" ] || fail "the wheel installed no qlib-hist command"
[ -x "$tmp/venv/bin/qrun" ] || fail "no qrun in the venv (pyqlib's console script)"
done_stage

stage "qlib-hist demo --epochs 1 --out $tmp/demo (the installed command, from $tmp/work)"
logged demo "$tmp/venv/bin/qlib-hist" demo --epochs 1 --out "$tmp/demo"
sed -n '/^qlib-hist demo (/,$p' "$tmp/demo.log" | sed 's/^/   /'
yaml=$tmp/demo/workflow_config_hist_demo.yaml
[ -f "$yaml" ] || fail "the demo wrote no $yaml"
grep -qE '^ +n_epochs: 1$' "$yaml" || fail "the demo's YAML does not carry n_epochs: 1"
done_stage

stage "cd $tmp/demo && qrun workflow_config_hist_demo.yaml (1 epoch, as the demo wrote it)"
(cd "$tmp/demo" && PATH="$tmp/venv/bin:$PATH" logged qrun qrun workflow_config_hist_demo.yaml)
# the demo's run and qrun's both finished in the demo's mlflow store (sqlite:///mlruns.db, as the YAML sets)
runs=$("$vpy" -c 'import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("select count(*) from runs where status = ?", ("FINISHED",)).fetchone()[0])' \
    "$tmp/demo/mlruns.db") || fail "cannot read the runs in $tmp/demo/mlruns.db"
echo "   finished runs in $tmp/demo/mlruns.db: $runs"
[ "$runs" -ge 2 ] || fail "expected the demo's run and qrun's in mlruns.db, found $runs finished"
done_stage

echo "== wheel check passed in $((SECONDS - t_all))s"

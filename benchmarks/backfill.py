"""Add a daily series that a committed run file lacks (``daily_rank_ic``: files made before it was recorded), from
a refit that must first give back that file's own figures.

A run file keeps each test day's IC but, before the Rank IC series was recorded, not each day's Rank IC, so a
paired test of Rank IC leads has nothing to pair. Refitting the run is the only way to get it, and is honest only
if the refit is the same fit. A CPU fit of a given seed is deterministic, and early stopping keeps the weights of
the best epoch, so training stops there (``n_epochs`` = the file's ``best_epoch`` + 1, the rest of the run's
settings unchanged): the same weights, hence the same predictions, with the epochs after the best not trained.

The refit runs the grid's own run (:func:`benchmarks.run.run_one`: its seeds, its records) and is then compared
with the file: the valid score of every epoch trained, the best epoch, every metric and every day of the daily IC
and excess return must be equal, bit for bit. Only then is the missing series written into the file (atomically),
with ``backfilled`` saying how; otherwise nothing is written and the differences are printed (exit status 1). A
machine whose kernels round differently does not reproduce the file and is refused this way.

Needs the file's ``best_epoch`` and ``valid_scores`` (files of qlib_hist's and of the ``qlib_hist_patched`` row
record them). Usage, with :mod:`benchmarks.run`'s data options::

    python -m benchmarks.backfill --grid benchmarks/grids/final.yaml --row qlib_hist_patched --seeds 1 2 \\
        --provider-uri <qlib provider> --threads 1
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

from benchmarks import script_parser
from benchmarks.grid import GridError, RunKey, load_grid
from benchmarks.run import ROWS, GridContext, add_data_arguments, grid_context, prepare_store, run_one, worker_dataset
from qlib_hist.atomic_files import atomic_write_text

#: the series this adds to a file that lacks it
SERIES = "daily_rank_ic"
#: what the refit must give exactly as the file has it (valid scores are compared over the epochs trained)
SAME = ("best_epoch", "metrics", "daily_ic", "daily_excess")


def differences(recorded: dict, refit: dict) -> list[str]:
    """What the refit gives otherwise than the run file: [] when it is the file's own fit."""
    out = []
    trained = len(refit.get("valid_scores", []))
    if refit.get("valid_scores") != recorded["valid_scores"][:trained]:
        pairs = zip(recorded["valid_scores"], refit.get("valid_scores", []))
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), trained)
        out.append(f"valid scores differ from epoch {first}")
    for key in SAME:
        mine, theirs = recorded.get(key), refit.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if changed:
                out.append(f"{key} differs on {len(changed)} of {len(mine)} ({', '.join(map(str, changed[:3]))} ...)")
        elif mine != theirs:
            out.append(f"{key}: file {mine!r}, refit {theirs!r}")
    return out


def backfilled(recorded: dict, refit: dict) -> dict:
    """The run file with the refit's :data:`SERIES` added, and a note of how it was made."""
    epochs = recorded["best_epoch"] + 1
    note = (
        f"refit for {epochs} epochs (to the file's best epoch) on {refit['host']}; valid scores, best epoch, metrics, "
        "daily IC and daily excess return equal to this file's"
    )
    return {**recorded, SERIES: refit[SERIES], "backfilled": {SERIES: note}}


def refit(key: RunKey, recorded: dict, ctx: GridContext) -> dict:
    """:func:`run_one` of ``key`` stopped after the file's best epoch, in its own recorder experiment and
    checkpoint folder (grid ``<grid>-backfill``: a killed refit resumes there; removed once it has finished)."""
    grid = ctx.grid
    variants = {**grid.variants, key.variant: {**grid.variants[key.variant], "n_epochs": recorded["best_epoch"] + 1}}
    short = dataclasses.replace(ctx, grid=dataclasses.replace(grid, name=f"{grid.name}-backfill", variants=variants))
    prepare_store(short.tracking_uri, short.experiment, Path(short.cache_dir) / "mlruns")
    result = run_one(key, worker_dataset(short), short)
    shutil.rmtree(short.checkpoint_dir(key), ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: backfill the row's seeds; 0 when each file has the series (added now or before)."""
    parser = script_parser("benchmarks.backfill", __doc__)
    parser.add_argument("--grid", required=True, help="the grid file whose run files to complete")
    parser.add_argument("--row", required=True, help="the row, as the run files name it (e.g. qlib_hist_patched)")
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid, list(ROWS))
    except GridError as err:
        parser.error(str(err))
    runs_dir = Path(args.results_dir).expanduser().resolve() / grid.name / "runs"
    keys = {key.seed: key for key in grid.runs() if key.row == args.row}
    todo: list[tuple[RunKey, Path, dict]] = []
    for seed in args.seeds:
        if seed not in keys:
            parser.error(f"--seeds: grid {grid.name} has no run of row {args.row!r} with seed {seed}")
        path = runs_dir / keys[seed].file_name
        if not path.exists():
            parser.error(f"{path}: no such run file (run the grid first)")
        recorded = json.loads(path.read_text())
        if SERIES in recorded:
            print(f"{path.name}: already has {SERIES}", flush=True)
            continue
        if "best_epoch" not in recorded or "valid_scores" not in recorded or "metrics" not in recorded:
            parser.error(f"{path}: records no best_epoch and valid_scores: which fit to reproduce is not known")
        todo.append((keys[seed], path, recorded))
    if not todo:
        return 0
    ctx = grid_context(args, grid, runs_dir, parser)
    logging.basicConfig(level=logging.INFO)
    import torch

    from qlib_hist.qlib_edge.recorders import artifact_copies_removed

    torch.set_num_threads(args.threads)
    failed = 0
    for key, path, recorded in todo:
        epochs = recorded["best_epoch"] + 1
        print(f"{path.name}: refit for {epochs} epochs; valid scores to match: {recorded['valid_scores'][:epochs]}")
        with artifact_copies_removed():
            result = refit(key, recorded, ctx)
        diff = differences(recorded, result) if "error" not in result else [f"refit failed: {result['error']}"]
        if diff:
            failed += 1
            print(f"{path.name}: NOT written, the refit is not this file's fit: {'; '.join(diff)}", flush=True)
            continue
        atomic_write_text(path, json.dumps(backfilled(recorded, result), indent=1, default=str))
        print(f"{path.name}: {SERIES} added (the refit gave the file's own figures)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

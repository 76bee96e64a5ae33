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
from benchmarks.config import portable_kwargs
from benchmarks.grid import GridError, RunKey, load_grid
from benchmarks.run import (
    ROWS,
    GridContext,
    add_data_arguments,
    grid_context,
    prepare_store,
    recorded_config,
    run_one,
    stale_runs,
    worker_dataset,
)
from qlib_hist.atomic_files import atomic_write_text
from qlib_hist.callbacks import CheckpointError

#: the series this adds to a file that lacks it
SERIES = "daily_rank_ic"
#: what the refit must give exactly as the file has it (valid scores are compared over the epochs trained)
SAME = ("best_epoch", "metrics", "daily_ic", "daily_excess")


def _same(mine: object, theirs: object) -> bool:
    """Equal, bit for bit, NaN equal to NaN (a day with no IC is NaN in a run file; ``NaN != NaN``): floats
    written the way the run files write them, which round-trips every float exactly."""
    return json.dumps(mine, sort_keys=True, default=str) == json.dumps(theirs, sort_keys=True, default=str)


def differences(recorded: dict, refit: dict) -> list[str]:
    """What the refit gives otherwise than the run file: [] when it is the file's own fit, trained to its best
    epoch."""
    out = []
    trained, epochs = refit.get("valid_scores") or [], recorded["best_epoch"] + 1
    if len(trained) != epochs:
        out.append(f"the refit trained {len(trained)} epochs, not the {epochs} up to the file's best")
    if not _same(trained, recorded["valid_scores"][: len(trained)]):
        pairs = zip(recorded["valid_scores"], trained)
        first = next(i for i, (a, b) in enumerate(pairs) if not _same(a, b))
        out.append(f"valid scores differ from epoch {first}")
    for key in SAME:
        mine, theirs = recorded.get(key), refit.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            changed = sorted(k for k in set(mine) | set(theirs) if not _same(mine.get(k), theirs.get(k)))
            if changed:
                out.append(f"{key} differs on {len(changed)} of {len(mine)} ({', '.join(map(str, changed[:3]))} ...)")
        elif not _same(mine, theirs):
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


def refusal(recorded: dict) -> str | None:
    """Why a run file cannot be backfilled (which fit to reproduce is not known), or None."""
    if "metrics" not in recorded:
        return f"records no metrics (the run failed: {recorded.get('error', 'no error recorded')}); rerun it instead"
    best, scores = recorded.get("best_epoch"), recorded.get("valid_scores")
    if best is None or scores is None:
        return "records no best_epoch and valid_scores: which fit to reproduce is not known"
    if not isinstance(best, int) or isinstance(best, bool):
        return f"best_epoch is {best!r}, not one epoch (an ensemble's members stop apart): refit it instead"
    if best < 0 or best >= len(scores):
        return f"best_epoch {best} is not an epoch of its {len(scores)} valid scores (no epoch trained to reproduce)"
    return None


def setup_differences(recorded: dict, ctx: GridContext, key: RunKey) -> list[str]:
    """Where the run these options build differs from the one the file records: model settings (files by name),
    the provider's folder, the thread count."""
    out = []
    now = recorded_config(ctx.config(key))
    mine, theirs = portable_kwargs(recorded["config"]["kwargs"]), portable_kwargs(now["kwargs"])
    for name in sorted(set(mine) | set(theirs)):
        if not _same(mine.get(name), theirs.get(name)):
            out.append(f"{name}: file {mine.get(name)!r}, now {theirs.get(name)!r}")
    for name in ("class", "module_path"):
        if recorded["config"].get(name) != now.get(name):
            out.append(f"{name}: file {recorded['config'].get(name)!r}, now {now.get(name)!r}")
    if Path(recorded["provider_uri"]).name != Path(ctx.provider_uri).name:
        out.append(f"provider: file {recorded['provider_uri']}, now {ctx.provider_uri}")
    threads = f"{ctx.threads} thread(s)"
    if not recorded.get("host", "").endswith(threads):
        out.append(f"threads: file {recorded.get('host')!r}, now {threads}")
    return out


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
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    runs_dir = Path(args.results_dir).expanduser().resolve() / grid.name / "runs"
    rows = [key for key in grid.runs() if key.row == args.row]
    if not rows:
        parser.error(f"--row: grid {grid.name} ({grid.source}) has no row {args.row!r}")
    todo: list[tuple[RunKey, Path, dict]] = []
    for seed in dict.fromkeys(args.seeds):  # a seed the grid file does not list (a slice run elsewhere) as well
        key = dataclasses.replace(rows[0], seed=seed)
        path = runs_dir / key.file_name
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            parser.error(f"{path}: cannot be read as a run file ({type(err).__name__}: {err}); run the grid first")
        if SERIES in recorded:
            print(f"{path.name}: already has {SERIES}", flush=True)
            continue
        reason = refusal(recorded)
        if reason:
            parser.error(f"{path}: {reason}")
        todo.append((key, path, recorded))
    stale = stale_runs(grid, runs_dir, [key for key, _, _ in todo])
    if stale:
        parser.error(f"{grid.source} now gives other settings than these run files record: {'; '.join(stale)}")
    if not todo:
        return 0
    ctx = grid_context(args, grid, runs_dir, parser)
    for key, path, recorded in todo:  # before any fit: the options must rebuild each run as the file records it
        mismatch = setup_differences(recorded, ctx, key)
        if mismatch:
            parser.error(f"{path}: these options give the run otherwise than the file records: {'; '.join(mismatch)}")
    logging.basicConfig(level=logging.INFO)
    import torch

    from qlib_hist.qlib_edge.recorders import artifact_copies_removed

    torch.set_num_threads(args.threads)
    failed = 0
    for key, path, recorded in todo:
        epochs = recorded["best_epoch"] + 1
        print(f"{path.name}: refit for {epochs} epochs; valid scores to match: {recorded['valid_scores'][:epochs]}")
        try:
            with artifact_copies_removed():
                result = refit(key, recorded, ctx)
        except CheckpointError as err:
            result = {"error": str(err)}
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

"""Add a daily series that a committed run file lacks (``daily_rank_ic``: files made before it was recorded), from
a refit that must first give back that file's own figures.

A run file keeps each test day's IC but, before the Rank IC series was recorded, not each day's Rank IC, so a
paired test of Rank IC leads has nothing to pair. Refitting the run is the only way to get it, and is honest only
if the refit is the same fit. A CPU fit of a given seed is deterministic, and early stopping keeps the weights of
the best epoch, so training stops there (``n_epochs`` = the file's ``best_epoch`` + 1, the rest of the run's
settings unchanged): the same weights, hence the same predictions, with the epochs after the best not trained.

The refit runs the grid's own run (:func:`benchmarks.run.run_one`: its seeds, its records) and is then compared
with the file: the valid score of every epoch trained, the best epoch, the signal's metrics (IC, ICIR, Rank IC,
Rank ICIR) and the IC of every test day must be equal, bit for bit: the same predictions. Only then is the missing
series written into the file (atomically), with ``backfilled`` saying how; otherwise nothing is written and the
differences are printed (exit status 1). A machine whose kernels round differently does not reproduce the file
and is refused this way. The backtest on those predictions is compared too, and its outcome noted, not required:
it also depends on the backtest's environment (qlib's exchange, the provider's prices), and the file keeps its own
figures. ``--from-recorder`` reads a finished refit back from its recorder instead of fitting again (a refit that
finished but was not written).

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
    qlib_init_kwargs,
    recorded_config,
    recorded_results,
    run_one,
    stale_runs,
    worker_dataset,
)
from qlib_hist.atomic_files import atomic_write_text
from qlib_hist.callbacks import CheckpointError

#: the series this adds to a file that lacks it
SERIES = "daily_rank_ic"
#: the metrics of the predictions themselves (qlib's SigAnaRecord): with the daily IC, what makes a refit the file's fit
SIGNAL_METRICS = ("IC", "ICIR", "Rank IC", "Rank ICIR")


def _same(mine: object, theirs: object) -> bool:
    """Equal, bit for bit, NaN equal to NaN (a day with no IC is NaN in a run file; ``NaN != NaN``): floats
    written the way the run files write them, which round-trips every float exactly."""
    return json.dumps(mine, sort_keys=True, default=str) == json.dumps(theirs, sort_keys=True, default=str)


def _changed(mine: dict, theirs: dict) -> list[str]:
    """The keys of two ``{name: value}`` dicts whose values differ (:func:`_same`), sorted."""
    return sorted(k for k in set(mine) | set(theirs) if not _same(mine.get(k), theirs.get(k)))


def _signal(metrics: dict) -> dict:
    """The :data:`SIGNAL_METRICS` of a run's ``metrics``."""
    return {k: v for k, v in metrics.items() if k in SIGNAL_METRICS}


def differences(recorded: dict, refit: dict) -> list[str]:
    """Where the refit is not the file's own fit, trained to its best epoch: [] when it is. Compared: the valid
    score of every epoch trained (when the refit has them), the best epoch, the signal's metrics
    (:data:`SIGNAL_METRICS`) and the IC of every test day: the predictions, not the backtest run on them
    (:func:`backtest_differences`)."""
    out = []
    if "valid_scores" in refit:
        trained, epochs = refit["valid_scores"] or [], recorded["best_epoch"] + 1
        if len(trained) != epochs:
            out.append(f"the refit trained {len(trained)} epochs, not the {epochs} up to the file's best")
        if not _same(trained, recorded["valid_scores"][: len(trained)]):
            pairs = zip(recorded["valid_scores"], trained)
            first = next(i for i, (a, b) in enumerate(pairs) if not _same(a, b))
            out.append(f"valid scores differ from epoch {first}")
        if not _same(recorded["best_epoch"], refit.get("best_epoch")):
            out.append(f"best_epoch: file {recorded['best_epoch']}, refit {refit.get('best_epoch')}")
    changed = _changed(_signal(recorded["metrics"]), _signal(refit.get("metrics", {})))
    if changed:
        out.append(f"signal metrics differ: {', '.join(changed)}")
    changed = _changed(recorded.get("daily_ic", {}), refit.get("daily_ic", {}))
    if changed:
        out.append(f"daily IC differs on {len(changed)} of {len(recorded.get('daily_ic', {}))} days from {changed[0]}")
    return out


#: the largest difference of the backtest's figures that is rounding in their last digits, not another backtest
ROUNDING = 1e-12


def backtest_differences(recorded: dict, refit: dict) -> str:
    """Whether the backtest on the same predictions gave the file's figures: it depends on the backtest's
    environment too (qlib's exchange, the provider's prices, the float rounding of the machine's sums), not only on
    the fit, so it is reported, not a refusal; the file keeps its own figures. A difference of at most
    :data:`ROUNDING` in every day's excess return and every metric is called rounding."""
    names = sorted(k for k in set(recorded["metrics"]) | set(refit.get("metrics", {})) if k not in SIGNAL_METRICS)
    mine = {**{f"metric {k}": recorded["metrics"].get(k) for k in names}, **recorded.get("daily_excess", {})}
    theirs = {**{f"metric {k}": refit.get("metrics", {}).get(k) for k in names}, **refit.get("daily_excess", {})}
    changed = _changed(mine, theirs)
    if not changed:
        return "the backtest on its predictions gave this file's figures"
    try:
        gap = max(abs(float(mine[k]) - float(theirs[k])) for k in changed)
    except (KeyError, TypeError, ValueError):  # a figure on one side only, or not a number
        gap = float("inf")
    days = [k for k in changed if not k.startswith("metric ")]
    where = f"{len(days)} of {len(recorded.get('daily_excess', {}))} days from {days[0]}" if days else "no day"
    if gap <= ROUNDING:
        return f"the backtest on its predictions gave this file's figures up to rounding (at most {gap:.1e}; {where})"
    return (
        f"the backtest on its predictions gave other figures than this file's (up to {gap:.1e}; {where}): "
        "the file keeps its own"
    )


def backfilled(recorded: dict, refit: dict, how: str) -> dict:
    """The run file with the refit's :data:`SERIES` added, and a note of how it was made (``how``)."""
    note = (
        f"{how}; valid scores, best epoch, signal metrics and daily IC equal to this file's; "
        f"{backtest_differences(recorded, refit)}"
    )
    return {**recorded, SERIES: refit[SERIES], "backfilled": {SERIES: note}}


def short_context(key: RunKey, recorded: dict, ctx: GridContext) -> GridContext:
    """``ctx`` as the refit runs: grid ``<grid>-backfill`` (its own recorder experiment and checkpoint folders),
    ``key``'s variant stopped after the file's best epoch."""
    grid = ctx.grid
    variants = {**grid.variants, key.variant: {**grid.variants[key.variant], "n_epochs": recorded["best_epoch"] + 1}}
    return dataclasses.replace(ctx, grid=dataclasses.replace(grid, name=f"{grid.name}-backfill", variants=variants))


def refit(key: RunKey, recorded: dict, ctx: GridContext) -> dict:
    """:func:`run_one` of ``key`` stopped after the file's best epoch (:func:`short_context`; a killed refit
    resumes from its checkpoint, removed once it has finished)."""
    short = short_context(key, recorded, ctx)
    prepare_store(short.tracking_uri, short.experiment, Path(short.cache_dir) / "mlruns")
    result = run_one(key, worker_dataset(short), short)
    shutil.rmtree(short.checkpoint_dir(key), ignore_errors=True)
    return result


def from_recorder(key: RunKey, recorded: dict, ctx: GridContext) -> dict:
    """The figures of ``key``'s last finished refit, read back from its recorder (:func:`short_context`'s
    experiment in the tracking store): for a refit that finished but was not written (its process died after its
    records, or a rule refused it). A recorder holds no valid scores, so those are not compared."""
    import qlib
    from qlib.workflow import R

    short = short_context(key, recorded, ctx)
    qlib.init(**qlib_init_kwargs(short.provider_uri, short.tracking_uri, kernels=1))
    try:
        experiment = R.get_exp(experiment_name=short.experiment, create=False)
    except ValueError:
        return {"error": f"no recorder experiment {short.experiment!r} in {short.tracking_uri}"}
    name = f"{key.row}_seed{key.seed}"
    finished = [r for r in experiment.list_recorders(rtype="list", status="FINISHED") if r.info["name"] == name]
    if not finished:
        return {"error": f"no finished recorder {name!r} in experiment {short.experiment!r}"}
    return recorded_results(max(finished, key=lambda r: r.info["end_time"]))


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
    out += [f"{name}: file {mine.get(name)!r}, now {theirs.get(name)!r}" for name in _changed(mine, theirs)]
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
    parser.add_argument(
        "--from-recorder",
        action="store_true",
        help="fit nothing: read the last finished refit of each seed back from its recorder (a refit that was not "
        "written); its valid scores are not compared",
    )
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
        if args.from_recorder:
            how = f"refit for {epochs} epochs (to the file's best epoch), read back from its recorder"
            result = from_recorder(key, recorded, ctx)
        else:
            print(f"{path.name}: refit for {epochs} epochs; valid scores to match: {recorded['valid_scores'][:epochs]}")
            try:
                with artifact_copies_removed():
                    result = refit(key, recorded, ctx)
            except CheckpointError as err:
                result = {"error": str(err)}
            how = f"refit for {epochs} epochs (to the file's best epoch) on {result.get('host')}"
        diff = differences(recorded, result) if "error" not in result else [f"refit failed: {result['error']}"]
        if diff:
            failed += 1
            print(f"{path.name}: NOT written, the refit is not this file's fit: {'; '.join(diff)}", flush=True)
            continue
        file = backfilled(recorded, result, how)
        atomic_write_text(path, json.dumps(file, indent=1, default=str))
        print(f"{path.name}: {SERIES} added; {file['backfilled'][SERIES]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

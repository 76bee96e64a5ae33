"""Rolling benchmark: HIST retrained on rolling windows (cold and warm) against the static fit and the baselines.

    python -m benchmarks.rolling --provider-uri ../shared/data/cn_csi300 --step 252 \
        --rows hist_warm hist_cold hist_legacy_cold qlib_hist_patched lightgbm --seeds 0 1 2 --cpus 2 --threads 1
    python -m benchmarks.rolling --report --step 252       # results/rolling_step<N>.md and the monthly-IC plot

The cpu-quick test years (2019-01-01..2022-12-29) are rolled: the first window trains on 2015-2017 and validates on
2018 (three years and one), every segment then slides ``--step`` trading days (63: a quarter; 252: a year). The
HIST settings, epochs, early stop, processors, label and backtest are cpu-quick's (:mod:`benchmarks.config`); the
concepts are the point-in-time SW table (``hist_warm``, ``hist_cold``) or its legacy snapshot at the first train end
(``qlib_hist_patched``, which has no ``finetune`` and so rolls cold; ``hist_legacy_cold``, ours on those same
concepts, tells a gap between the two apart into code and concepts), LightGBM takes qlib's settings and rolls cold.
``hist_best_warm`` is ``hist_warm`` with the recipe of ``workflow_config_hist_best.yaml`` (its model kwargs: loss,
lr, weight decay, modules, ...; the windows, epochs and early stop stay the table's).
Everything runs through :class:`qlib_hist.qlib_edge.rolling.HISTRolling` (qlib's ``RollingGen`` / ``TrainerR`` /
``Rolling``), one experiment per (row, seed, step) in one sqlite store in the cache. Each window's Alpha360
handler (processors fitted on its train segment) is built once, by the driver with one qlib process per CPU of
``--cpus`` before any task starts, and shared by every row and seed
(:class:`~qlib_hist.qlib_edge.handler_cache.CachedHandler`).

Each (row, seed) is one Ray task (:mod:`benchmarks.cluster`; ``--cpus``, ``--threads``, ``--address``,
``--gpus-per-run`` as in :mod:`benchmarks.run`): its windows run in order inside the task, since a warm window
starts from the previous one's weights. It writes ``benchmarks/results/rolling/runs/<row>_seed<k>_step<N>.json``
when it finishes (merged metrics, fit seconds per window, daily IC, the model config; its workflow YAML stays in the
cache); a rerun submits only the (row, seed) without a file, and a stopped or killed one resumes at its first
unfinished window. The ``static`` row of the report is the
committed cpu-quick ``hist_pit`` (same test days).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import script_parser
from benchmarks.cluster import Resources, check_local_gpus, driver_kernels, run_tasks
from benchmarks.config import (
    HANDLER,
    PROFILES,
    WORKFLOW,
    create_store_tables,
    qlib_init_kwargs,
    record_configs,
    sqlite_uri,
)
from benchmarks.grid import workflow_kwargs
from benchmarks.paths import HERE, SHARED, repo_relative
from benchmarks.run import REPORT_METRICS, build_concepts, model_config, recorded_config
from qlib_hist.atomic_files import atomic_write_text

#: the cpu-quick profile with the first window of the roll: train 3 years, valid 1 year, test = cpu-quick's test
ROLLING = {
    **PROFILES["cpu-quick"],
    "segments": {
        "train": ("2015-01-01", "2017-12-31"),
        "valid": ("2018-01-01", "2018-12-31"),
        "test": ("2019-01-01", "2022-12-29"),
    },
    "legacy_as_of": "2017-12-31",
}
#: row -> (the run.py model row it trains, warm start)
ROWS = {
    "hist_warm": ("hist_pit", True),
    "hist_cold": ("hist_pit", False),
    "hist_legacy_cold": ("hist_legacy", False),  # ours on qlib_hist_patched's concepts: code or concepts?
    "qlib_hist_patched": ("qlib_hist_patched", False),
    "lightgbm": ("lightgbm", False),
    "hist_best_warm": ("hist_pit", True),  # with the recipe of workflow_config_hist_best.yaml (ROW_WORKFLOWS)
}
#: row -> the qrun YAML whose model kwargs it takes (not its files, seed, epochs or early stop: every row of the
#: rolling table keeps the same windows, epochs and early stopping)
ROW_WORKFLOWS = {"hist_best_warm": "workflow_config_hist_best.yaml"}
BUDGET_KWARGS = ("n_epochs", "early_stop")
RESULTS = HERE / "results" / "rolling"
STORE = "rolling_mlruns.db"  # in the cache: every (row, seed) logs to this one store


def workflow(row: str, seed: int, concepts: dict, args: argparse.Namespace, store: Path) -> dict:
    """The qrun workflow of one (row, seed): its task is the first window, the handler a shared cached Alpha360."""
    model = model_config(ROWS[row][0], ROLLING, concepts, args, seed)
    if row in ROW_WORKFLOWS:
        recipe = workflow_kwargs(ROW_WORKFLOWS[row], f"rolling row {row}")
        model["kwargs"].update({key: value for key, value in recipe.items() if key not in BUDGET_KWARGS})
    start, end = ROLLING["segments"]["train"][0], ROLLING["segments"]["test"][1]
    handler = {
        "class": "CachedHandler",
        "module_path": "qlib_hist.qlib_edge.handler_cache",
        "kwargs": {
            "handler_class": HANDLER["class"],
            "handler_module": HANDLER["module_path"],
            "cache_dir": str(Path(args.cache_dir).resolve() / "rolling_handlers"),
            **HANDLER["kwargs"],
            "instruments": args.market,
            "start_time": start,
            "end_time": end,
            "fit_start_time": ROLLING["segments"]["train"][0],
            "fit_end_time": ROLLING["segments"]["train"][1],
        },
    }
    return {
        "qlib_init": qlib_init_kwargs(args.provider_uri, sqlite_uri(store)),
        "task": {
            "model": model,
            "dataset": {
                "class": "DatasetH",
                "module_path": "qlib.data.dataset",
                "kwargs": {"handler": handler, "segments": {k: list(v) for k, v in ROLLING["segments"].items()}},
            },
            "record": record_configs(ROLLING, args.benchmark),
        },
    }


def write_workflow(row: str, seed: int, concepts: dict, args: argparse.Namespace, store: Path) -> tuple[Path, dict]:
    """:func:`workflow` written to the cache's ``rolling_configs/`` (absolute paths: not committed); path, config."""
    import yaml

    config = workflow(row, seed, concepts, args, store)
    path = Path(args.cache_dir).resolve() / "rolling_configs" / f"{row}_seed{seed}_step{args.step}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path, config


def prepare_window_handlers(item: tuple, concepts: dict, args: argparse.Namespace, store: Path) -> None:
    """Build every window's handler here, in the driver, with its qlib processes (:func:`driver_kernels`), so that
    the tasks (one qlib process each) only load them and no two tasks build the same window at once. The windows
    and their handlers are the same for every (row, seed): ``item``'s workflow lists them."""
    from qlib_hist.qlib_edge.handler_cache import CachedHandler
    from qlib_hist.qlib_edge.rolling import HISTRolling

    row, seed = item
    path, _ = write_workflow(row, seed, concepts, args, store)
    for task in HISTRolling(path, step=args.step).get_task_list():
        handler = task["dataset"]["kwargs"]["handler"]
        CachedHandler.prepare(**handler["kwargs"])


def run_row(row: str, seed: int, concepts: dict, args: argparse.Namespace, store: Path) -> dict:
    """Roll one (row, seed) through ``HISTRolling``; the result file's dict."""
    from qlib_hist.qlib_edge.rolling import FIT_SECONDS_TAG, START_TAG, TEST_START_TAG, HISTRolling

    name = f"{row}_seed{seed}_step{args.step}"
    config_path, config = write_workflow(row, seed, concepts, args, store)
    tic = time.perf_counter()
    merged = HISTRolling(config_path, step=args.step, warm=ROWS[row][1], exp_name=f"rolling_{name}").run()
    windows = sorted(((w, w.list_tags()) for w in merged_windows(merged)), key=lambda wt: wt[1][TEST_START_TAG])
    metrics = merged.list_metrics()
    ic = merged.load_object("sig_analysis/ic.pkl")
    rank_ic = merged.load_object("sig_analysis/ric.pkl")
    return {
        "row": row,
        "seed": seed,
        "step": args.step,
        "provider_uri": repo_relative(args.provider_uri),
        "model": recorded_config(config["task"]["model"]),
        "wall_seconds": time.perf_counter() - tic,
        "fit_seconds": float(metrics["fit_seconds_total"]),
        "windows": [
            {
                "test_start": tags[TEST_START_TAG],
                "start": tags[START_TAG],
                "fit_seconds": float(tags[FIT_SECONDS_TAG]),
                "epochs": window_epochs(w, tags),
            }
            for w, tags in windows
        ],
        "metrics": {k: float(metrics[v]) for k, v in REPORT_METRICS.items() if v in metrics},
        "daily_ic": {str(k.date()): float(v) for k, v in ic.items()},
        "daily_rank_ic": {str(k.date()): float(v) for k, v in rank_ic.items()},
    }


def merged_windows(merged) -> list:
    """The window recorders a merged recorder was built from (its ``qlib_hist.window_recorders`` tag)."""
    from qlib.workflow import R

    from qlib_hist.qlib_edge.rolling import TAG

    experiment = merged.list_params()["rolling_exp"]
    ids = merged.list_tags()[TAG + "window_recorders"].split(",")
    return [R.get_recorder(recorder_id=i, experiment_name=experiment) for i in ids]


def window_epochs(window, tags: dict) -> int | None:
    """Epochs a window recorder's model trained (its ``qlib_hist.epochs`` tag, from ``tags``; for a recorder written
    before that tag, the length of its ``params.pkl``'s history); ``None`` for a model without epochs (LightGBM)."""
    from qlib_hist.qlib_edge.rolling import EPOCHS_TAG

    tag = tags.get(EPOCHS_TAG)
    if tag is not None:
        return int(tag) if tag else None
    history = getattr(window.load_object("params.pkl"), "history", None)
    return len(history) if isinstance(history, list) else None


# ---------------------------------------------------------------------------------------------- report
def report(step: int) -> Path:
    """``results/rolling_step<N>.md`` (mean ± std over seeds per row, the static row from cpu-quick) and the plot."""
    rows: dict[str, list[dict]] = {}
    static = sorted((HERE / "results" / "cpu-quick" / "runs").glob("hist_pit_seed*.json"))
    rows["static (cpu-quick hist_pit)"] = [json.loads(p.read_text()) for p in static]
    for row in ROWS:
        runs = [json.loads(p.read_text()) for p in sorted((RESULTS / "runs").glob(f"{row}_seed*_step{step}.json"))]
        if runs:
            rows[f"{row} (step {step})"] = runs
    header = ["row", "runs", *REPORT_METRICS, "fit s (sum of windows)", "epochs (sum of windows)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in rows.items():
        cells = [label, str(len(runs))]
        for metric in REPORT_METRICS:
            values = np.array([r["metrics"].get(metric, np.nan) for r in runs])
            cells.append(f"{np.nanmean(values):.4f} ± {np.nanstd(values):.4f}")
        fits = np.array([r.get("fit_seconds", np.nan) for r in runs])
        cells.append(f"{np.nanmean(fits):.0f}")
        cells.append(_epochs_cell(runs))
        lines.append("| " + " | ".join(cells) + " |")
    out = HERE / "results" / f"rolling_step{step}.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    _plot_monthly_ic(rows, HERE / "results" / f"rolling_step{step}_monthly_ic.png")
    return out


def _epochs_cell(runs: list[dict]) -> str:
    """Mean epochs over runs, each the sum over its windows' ``epochs`` (the static row: its ``epoch_seconds``); "n/a"
    for a model without epochs or a run recorded before windows counted them."""
    totals = []
    for run in runs:
        if "windows" in run:
            epochs = [w.get("epochs") for w in run["windows"]]
            totals.append(np.nan if None in epochs else sum(epochs))
        else:
            totals.append(len(run["epoch_seconds"]) if run.get("epoch_seconds") else np.nan)
    return "n/a" if np.isnan(totals).all() else f"{np.nanmean(totals):.1f}"


def _plot_monthly_ic(rows: dict, path: Path) -> None:
    from qlib_hist._plotting import new_figure, save_png

    fig = new_figure(figsize=(10, 4))
    ax = fig.add_subplot()
    for label, runs in rows.items():
        daily = pd.concat([pd.Series(r["daily_ic"]) for r in runs], axis=1).mean(axis=1)
        daily.index = pd.to_datetime(daily.index)
        daily = daily.loc[ROLLING["segments"]["test"][0] : ROLLING["segments"]["test"][1]]
        monthly = daily.groupby(daily.index.to_period("M")).mean()
        ax.plot(monthly.index.to_timestamp(), monthly.values, label=label, marker=".")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_ylabel("monthly mean of daily IC (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


# ---------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = script_parser("benchmarks.rolling", __doc__)
    parser.add_argument("--provider-uri", default=str(SHARED / "cn_csi300"))
    parser.add_argument("--market", default=WORKFLOW["market"])
    parser.add_argument("--benchmark", default=WORKFLOW["benchmark"])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--step", type=int, default=63, help="trading days of test per window (63 a quarter)")
    parser.add_argument("--sw-csv", default=str(SHARED / "sw_industry_history.csv"))
    parser.add_argument("--model-path", default=str(SHARED / "qlib_reference" / "model_lstm_csi300.pkl"))
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of a (row, seed) = its task's CPUs")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: every core)")
    parser.add_argument("--address", default=None, help="a Ray cluster: auto, or HOST:PORT of its head")
    parser.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each (row, seed) task asks for")
    parser.add_argument("--max-retries", type=int, default=3, help="reruns of a task whose worker process died")
    parser.add_argument("--report", action="store_true", help="only write the table and plot from the result files")
    args = parser.parse_args(argv)
    if args.report:
        print(f"wrote {report(args.step)}")
        return 0
    resources = Resources(args.address, args.cpus, args.threads, args.gpus_per_run, args.max_retries)
    try:
        check_local_gpus(resources)
        for row in set(args.rows) & set(ROW_WORKFLOWS):  # a missing or broken recipe YAML, before anything runs
            workflow_kwargs(ROW_WORKFLOWS[row], f"--rows {row}")
    except ValueError as err:
        parser.error(str(err))
    args.provider_uri = Path(args.provider_uri).expanduser().resolve()
    args.sw_csv = str(Path(args.sw_csv).expanduser().resolve())
    args.model_path = str(Path(args.model_path).expanduser().resolve()) if args.model_path else None
    args.cache_dir = str(Path(args.cache_dir).expanduser().resolve())
    missing = [
        (row, seed) for seed in args.seeds for row in args.rows if not result_path(row, seed, args.step).exists()
    ]
    print(f"rolling step {args.step}: {len(missing)} (row, seed) to run", flush=True)
    if not missing:
        return 0
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runs").mkdir(parents=True, exist_ok=True)
    os.chdir(cache)  # mlflow's artifacts beside the store (Ray's local workers start here too)

    import qlib

    logging.basicConfig(level=logging.INFO)
    tracking_uri = sqlite_uri(cache / STORE)
    create_store_tables(tracking_uri)  # before any task: tasks that migrate a fresh store race
    qlib.init(**qlib_init_kwargs(args.provider_uri, tracking_uri, kernels=driver_kernels(args.cpus)))
    models = [ROWS[row][0] for row in args.rows]
    concepts = build_concepts(ROLLING, args.provider_uri, args.market, cache, models, sw_csv=args.sw_csv)
    prepare_window_handlers(missing[0], concepts, args, cache / STORE)

    def done(item: tuple, summary: dict, seconds: float) -> None:
        print(f"=== rolling {item[0]} seed {item[1]} done after {seconds:.0f} s: {summary}", flush=True)

    task = importlib.import_module("benchmarks.rolling").run_rolling_task  # by name, also under python -m
    failures = run_tasks(task, missing, resources, args, concepts, on_done=done)
    for (row, seed), error in failures.items():
        print(f"=== rolling {row} seed {seed} FAILED: {error}", flush=True)
    return 1 if failures else 0


def result_path(row: str, seed: int, step: int) -> Path:
    """The result file of one (row, seed) at ``step``."""
    return RESULTS / "runs" / f"{row}_seed{seed}_step{step}.json"


def run_rolling_task(args: argparse.Namespace, concepts: dict, item: tuple) -> dict:
    """One Ray task: roll one (row, seed) and write its result file; the merged metrics and fit seconds.

    A (row, seed) is one task, not one per window: a warm window starts from the previous one's weights. A rerun
    of the task (its worker died) resumes at the first window without a finished recorder in the store.
    """
    import qlib
    import torch

    from qlib_hist.qlib_edge.recorders import artifact_copies_removed

    row, seed = item
    torch.set_num_threads(args.threads)
    store = Path(args.cache_dir) / STORE
    qlib.init(**qlib_init_kwargs(args.provider_uri, sqlite_uri(store), kernels=1))  # no fork in a Ray worker
    with artifact_copies_removed():  # the result's reads of the merged recorder's artifacts
        result = run_row(row, seed, concepts, args, store)
    atomic_write_text(result_path(row, seed, args.step), json.dumps(result, indent=1))
    return {"metrics": result["metrics"], "fit_seconds": round(result["fit_seconds"])}


if __name__ == "__main__":
    sys.exit(main())

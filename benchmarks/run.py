"""Benchmark runner: a grid of models x setting variants x seeds, each run a Ray task; one JSON per finished run.

    python -m benchmarks.run --profile cpu-quick --provider-uri ../shared/data/cn_csi300 \
        --models hist_pit hist_legacy lstm gru --seeds 0 1 2
    python -m benchmarks.run --grid benchmarks/grids/ablation.yaml --provider-uri ../shared/data/cn_csi300
    python -m benchmarks.report --profile cpu-quick          # table + plots from the JSON files

Run from the repository root. The handler, HIST's kwargs, the backtest and the records come from the repository's
qrun YAML files (:mod:`benchmarks.config`); a profile sets only the dates and the epochs; a grid file
(:mod:`benchmarks.grid`) names the rows, the seeds and the setting variants.

Each run writes ``benchmarks/results/<grid>/runs/<row>_seed<k>.json`` as soon as it finishes (paths in it relative
to the repository root): those files are what is done, so a stopped grid loses its running runs only and a rerun
submits only the runs without a file. Runs are Ray tasks (:mod:`benchmarks.cluster`): on a local Ray of ``--cpus``
CPUs by default, on a cluster with ``--address``; each asks for ``--threads`` CPUs (its torch threads) and
``--gpus-per-run`` GPUs, and is rerun when its worker process dies. Every run logs to one qlib/mlflow store
(``--tracking-uri``; a sqlite file in the cache by default), experiment ``bench_<grid>``, recorder
``<row>_seed<k>``. The Alpha360 handler is built once per (provider, market, dates, processors) and cached on
disk (:mod:`qlib_hist.qlib_edge.handler_cache`); the workers load it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import script_parser
from benchmarks.cluster import Resources, check_local_gpus, driver_kernels, run_tasks
from benchmarks.config import (
    FILE_KWARGS,
    PAPER_OPTIONS,
    PROFILES,
    WORKFLOW,
    handler_config,
    hist_kwargs,
    portable_kwargs,
    qlib_init_kwargs,
    record_configs,
    sqlite_uri,
)
from benchmarks.grid import Grid, GridError, RunKey, load_grid, make_grid
from benchmarks.paths import HERE, SHARED, relative_traceback, repo_relative
from qlib_hist.atomic_files import atomic_write_text
from qlib_hist.callbacks import CheckpointError
from qlib_hist.digests import json_digest
from qlib_hist.qlib_edge.model import CHECKPOINT_NAME

#: qlib's LightGBM benchmark settings (examples/benchmarks/LightGBM); qlib's fit boosts up to 1000 rounds, early stop 50
LIGHTGBM = {
    "loss": "mse",
    "colsample_bytree": 0.8879,
    "learning_rate": 0.0421,
    "subsample": 0.8789,
    "lambda_l1": 205.6999,
    "lambda_l2": 580.9768,
    "max_depth": 8,
    "num_leaves": 210,
}

#: qlib's LSTM and GRU Alpha360 benchmark settings (examples/benchmarks/{LSTM,GRU}/workflow_config_*_Alpha360.yaml,
#: the same for both); the profile sets n_epochs and early_stop
RNN_ALPHA360 = {
    "d_feat": 6,
    "hidden_size": 64,
    "num_layers": 2,
    "dropout": 0.0,
    "n_epochs": 200,
    "lr": 1e-3,
    "early_stop": 20,
    "batch_size": 800,
    "metric": "loss",
    "loss": "mse",
    "GPU": 0,
}

REPORT_METRICS = {
    "IC": "IC",
    "ICIR": "ICIR",
    "Rank IC": "Rank IC",
    "Rank ICIR": "Rank ICIR",
    "Annualized Return": "1day.excess_return_with_cost.annualized_return",
    "Information Ratio": "1day.excess_return_with_cost.information_ratio",
    "Max Drawdown": "1day.excess_return_with_cost.max_drawdown",
}


def rnn_kwargs(profile: dict) -> dict:
    """qlib's LSTM/GRU Alpha360 settings (:data:`RNN_ALPHA360`), epochs and early stop (in epochs) from the profile."""
    return dict(RNN_ALPHA360, n_epochs=profile["n_epochs"], early_stop=profile["early_stop"])


#: the rows of the table
ROWS = (
    "hist_pit",
    "hist_legacy",
    "hist_paper",
    "hist_returns",
    "hist_sw_returns",
    "hist_none",
    "qlib_hist",
    "qlib_hist_patched",
    "lstm",
    "gru",
    "lightgbm",
)
#: the HIST rows: row -> (class, module)
HIST_ROWS = {
    **{row: ("HIST", "qlib_hist") for row in ROWS if row.startswith("hist_")},
    "qlib_hist": ("HIST", "qlib.contrib.model.pytorch_hist"),
    "qlib_hist_patched": ("PatchedQlibHIST", "benchmarks.qlib_patched"),
}
#: the model modules that checkpoint every epoch in a ``checkpoint_dir`` kwarg -> their checkpoint file's name
#: (``benchmarks.qlib_patched`` is qlib's HIST with a checkpointed loop; qlib's own, unpatched, keeps none)
CHECKPOINTING = {"qlib_hist": CHECKPOINT_NAME, "benchmarks.qlib_patched": "qlib_hist_checkpoint.pt"}
#: the checkpointing modules whose checkpoint fingerprint holds their files' contents, not their paths
PORTABLE_CHECKPOINTS = ("benchmarks.qlib_patched",)
#: concept files a row reads (keys of :func:`build_concepts`' dict); the others read none
ROW_CONCEPTS = {
    "hist_pit": "membership",
    "hist_paper": "membership",
    "hist_legacy": "legacy",
    "qlib_hist": "legacy",
    "qlib_hist_patched": "legacy",
    "hist_returns": "returns",
    "hist_sw_returns": "sw_returns",
    "hist_none": "none",
}


def model_config(name: str, profile: dict, concepts: dict, args: Any, seed: int) -> dict:
    """qlib's ``{"class", "module_path", "kwargs"}`` of the table row ``name`` with this ``seed``.

    ``args`` gives ``model_path`` (HIST's pretrained base) and ``threads`` (LightGBM's); ``concepts`` the row's
    concept files (:func:`build_concepts`).
    """
    source = ROW_CONCEPTS.get(name)
    if source == "legacy":
        files = {
            "stock2concept": str(concepts["legacy"].stock2concept),
            "stock_index": str(concepts["legacy"].stock_index_npy),
        }
    elif source is not None:
        files = {"stock2concept": str(concepts[source])}
    if name in HIST_ROWS:
        cls, module = HIST_ROWS[name]
        options = PAPER_OPTIONS if name == "hist_paper" else {}
        kwargs = hist_kwargs(profile, args.model_path, **files, **options)
    elif name in ("lstm", "gru"):
        cls, module, kwargs = name.upper(), f"qlib.contrib.model.pytorch_{name}", rnn_kwargs(profile)
    elif name == "lightgbm":
        threads = args.threads or os.cpu_count()
        return {
            "class": "LGBModel",
            "module_path": "qlib.contrib.model.gbdt",
            "kwargs": {**LIGHTGBM, "num_threads": threads, "seed": seed},
        }
    else:
        raise KeyError(f"{name!r} is not a benchmark row (one of {', '.join(ROWS)})")
    return {"class": cls, "module_path": module, "kwargs": {**kwargs, "seed": seed}}


def recorded_config(config: dict) -> dict:
    """``config`` as a result file records it: the file kwargs relative to the repository."""
    kwargs = {key: repo_relative(value) if key in FILE_KWARGS else value for key, value in config["kwargs"].items()}
    return {**config, "kwargs": kwargs}


def build_concepts(
    profile: dict,
    provider_uri: Path,
    market: str,
    cache: Path,
    models: list[str],
    sw_csv: str | None = None,
    membership: str | None = None,
) -> dict:
    """The concept inputs the rows in ``models`` read (:data:`ROW_CONCEPTS`), built into ``cache`` once.

    ``membership`` is the point-in-time table of the ``hist_*`` rows (any table in qlib_hist's membership format);
    without it, the SW table (levels 1-3) is built from ``sw_csv``. ``legacy`` is its static snapshot as of
    ``profile["legacy_as_of"]``; ``returns`` concepts from returns (default settings, monthly, from the first day a
    window fits to the profile's end); ``sw_returns`` the two merged; ``none`` one membership of a stock outside
    every market (every concept row zero).
    """
    from qlib_hist.concepts.legacy_export import market_instruments, to_legacy
    from qlib_hist.concepts.membership import load_membership, write_membership
    from qlib_hist.concepts.report import read_calendar
    from qlib_hist.concepts.returns import ReturnConceptSpec, concepts_from_returns, merge_memberships
    from qlib_hist.concepts.shenwan import from_sw

    needed = {ROW_CONCEPTS[m] for m in models if m in ROW_CONCEPTS}
    if needed & {"legacy", "sw_returns"}:
        needed.add("membership")
    if "sw_returns" in needed:
        needed.add("returns")
    concepts: dict = {}
    if "membership" in needed:
        if membership is not None:
            concepts["membership"] = Path(membership)
        else:
            concepts["membership"] = cache / "sw_membership.csv"
            if sw_csv is None:
                raise GridError("the hist_* rows need a concept table: --sw-csv or --membership")
            if not concepts["membership"].exists():
                write_membership(from_sw(sw_csv), concepts["membership"])
    if "legacy" in needed:
        universe = market_instruments(provider_uri, market)
        as_of = profile["legacy_as_of"]
        stem = f"sw_legacy_{as_of}" if membership is None else f"{Path(membership).stem}_legacy_{as_of}"
        concepts["legacy"] = to_legacy(concepts["membership"], as_of, universe, cache / stem)
    if "returns" in needed:
        concepts["returns"] = cache / f"returns_membership_{market}_{profile['end']}.csv"
        if not concepts["returns"].exists():
            spec = ReturnConceptSpec()
            start = str(read_calendar(provider_uri)[spec.window + 1].date())
            table = concepts_from_returns(provider_uri, market, start, profile["end"], spec)[0]
            write_membership(table, concepts["returns"])
    if "sw_returns" in needed:
        concepts["sw_returns"] = cache / f"sw_returns_membership_{market}_{profile['end']}.csv"
        if not concepts["sw_returns"].exists():
            tables = [load_membership(concepts["membership"]), load_membership(concepts["returns"])]
            names = [concepts["membership"].name, concepts["returns"].name]
            write_membership(merge_memberships(tables, names), concepts["sw_returns"])
    if "none" in needed:
        concepts["none"] = cache / "no_concepts.csv"
        if not concepts["none"].exists():
            frame = {"instrument": ["SH999999"], "concept": ["none"], "start_date": ["2000-01-04"], "end_date": [None]}
            write_membership(pd.DataFrame(frame), concepts["none"])
    return concepts


@dataclass(frozen=True)
class GridContext:
    """What every run of a grid shares; sent once to the Ray workers (so: paths as absolute strings)."""

    grid: Grid
    provider_uri: str
    market: str
    benchmark: str
    cache_dir: str
    checkpoint_root: str
    runs_dir: str
    tracking_uri: str
    concepts: dict
    model_path: str | None
    threads: int

    @property
    def experiment(self) -> str:
        """The recorder experiment that holds every run of the grid."""
        return f"bench_{self.grid.name}"

    def handler(self) -> dict:
        """The Alpha360 handler config of the grid's profile (its cache key names the cached frame)."""
        profile = self.grid.profile
        return handler_config(self.market, profile["start"], profile["end"], profile["fit"])

    def config(self, key: RunKey) -> dict:
        """qlib's model config of one run: the row's, with the variant's kwargs set."""
        config = model_config(key.model, self.grid.profile, self.concepts, self, key.seed)
        config["kwargs"].update(self.grid.variants[key.variant])
        return config

    def checkpoint_dir(self, key: RunKey) -> Path:
        """Where a run of a checkpointing row (qlib_hist's, or qlib's patched HIST: :data:`CHECKPOINTING`)
        checkpoints every epoch, so that Ray's rerun of a killed task (or a rerun of the grid after a stopped
        session) resumes at its last epoch: ``<checkpoint_root>/<grid>/<row>_seed<seed>_<digest>``.

        The digest covers what the checkpoint's own fingerprint covers, so that a changed grid file starts afresh
        in a new folder instead of meeting a checkpoint it must refuse. For qlib's patched HIST
        (:data:`PORTABLE_CHECKPOINTS`), whose fingerprint holds its files' contents, that is no place on this
        machine: files by their names (:func:`portable_kwargs`), the provider by its folder's name, so that its
        folder carried to another checkout (kept in the repository between sessions, ``--checkpoint-dir``) is
        found again; one written from other data or file contents is refused by that fingerprint
        (:class:`~qlib_hist.callbacks.CheckpointError`, naming it). qlib_hist's own checkpoints fingerprint their
        files' paths, so their folders are named by the paths too."""
        config = self.config(key)
        provider = self.provider_uri
        if config["module_path"] in PORTABLE_CHECKPOINTS:
            config["kwargs"] = portable_kwargs(config["kwargs"])
            provider = Path(provider).name
        digest = json_digest([config, provider, self.handler(), self.grid.profile["segments"]], 12)
        return Path(self.checkpoint_root) / self.grid.name / f"{key.row}_seed{key.seed}_{digest}"


#: the dataset this worker process loaded last, by (provider, store, handler, segments): the next task reuses it
_WORKER_DATASETS: dict = {}


def worker_dataset(ctx: GridContext) -> Any:
    """The grid's ``DatasetH`` in this process, qlib initialised on the grid's provider and tracking store."""
    import qlib
    from qlib.data.dataset import DatasetH

    from qlib_hist.qlib_edge.handler_cache import cached_handler

    key = json.dumps([ctx.provider_uri, ctx.tracking_uri, ctx.handler(), ctx.grid.profile["segments"]], sort_keys=True)
    if key not in _WORKER_DATASETS:
        _WORKER_DATASETS.clear()
        qlib.init(**qlib_init_kwargs(ctx.provider_uri, ctx.tracking_uri, kernels=1))  # no fork in a Ray worker
        handler = cached_handler(ctx.handler(), ctx.provider_uri, ctx.cache_dir)
        _WORKER_DATASETS[key] = DatasetH(handler, segments=ctx.grid.profile["segments"])
    return _WORKER_DATASETS[key]


def fit_model(config: dict, dataset: Any) -> tuple[Any, dict]:
    """The model of qlib's ``config`` fitted on ``dataset``, and ``{}``; or ``None`` and the result fields of a model
    that crashed (``error``: its first line, ``traceback``): a crashing baseline is a table row, not the end of the
    grid. A :class:`~qlib_hist.callbacks.CheckpointError` is raised instead: a stale checkpoint is this machine's
    state, not the row's result, and a result file would mark the run done."""
    from qlib.utils import init_instance_by_config

    try:
        model = init_instance_by_config(config)
        model.fit(dataset)
    except CheckpointError:
        raise
    except Exception as err:
        message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return None, {"error": message, "traceback": relative_traceback(traceback.format_exc()[-2000:])}
    return model, {}


def run_one(key: RunKey, dataset: Any, ctx: GridContext) -> dict:
    """Fit one run, then the YAML's records (signal, IC analysis, backtest); the result file's dict."""
    import torch
    from qlib.utils import fill_placeholder, init_instance_by_config
    from qlib.workflow import R

    torch.manual_seed(key.seed)
    np.random.seed(key.seed)
    result = {
        "model": key.model,
        "variant": key.variant,
        "settings": ctx.grid.variants[key.variant],
        "profile_settings": ctx.grid.profile,
        "seed": key.seed,
        "grid": ctx.grid.name,
        "profile": ctx.grid.profile_name,
        "provider_uri": repo_relative(ctx.provider_uri),
        "host": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {ctx.threads} thread(s)",
    }
    config = ctx.config(key)
    result["config"] = recorded_config(config)
    checkpoint_name = CHECKPOINTING.get(config["module_path"])
    if checkpoint_name:  # not recorded: where to write changes no result (resume is exact)
        config["kwargs"].setdefault("checkpoint_dir", str(ctx.checkpoint_dir(key)))
        result["resumed"] = (Path(config["kwargs"]["checkpoint_dir"]) / checkpoint_name).exists()
    end_killed_attempts(ctx, f"{key.row}_seed{key.seed}")
    with R.start(experiment_name=ctx.experiment, recorder_name=f"{key.row}_seed{key.seed}"):
        tic = time.perf_counter()
        model, error = fit_model(config, dataset)
        if error:
            return {**result, **error}
        result["fit_seconds"] = time.perf_counter() - tic
        history = getattr(model, "history", None)
        if history:
            result["epoch_seconds"] = [h["seconds"] for h in history]
            result["valid_scores"] = [h["valid_score"] for h in history]
            result["best_epoch"] = getattr(model, "best_epoch", None)
            result["valid_score"] = getattr(model, "best_score", None)  # the early-stopping metric at best_epoch
        recorder = R.get_recorder()
        for record in record_configs(ctx.grid.profile, ctx.benchmark):  # as qrun runs them
            fill_placeholder(record, {"<MODEL>": model, "<DATASET>": dataset})
            init_instance_by_config(record, recorder=recorder).generate()
    # read back once the recorder has ended: qlib logs metrics from a background thread that end_run waits for
    return {**result, **recorded_results(recorder)}


def recorded_results(recorder: Any) -> dict:
    """A finished recorder's figures for a result file: ``metrics`` (:data:`REPORT_METRICS`), ``daily_ic`` and
    ``daily_rank_ic`` and ``daily_excess`` (the backtest's excess return with cost), each ``{date: value}``."""
    metrics = recorder.list_metrics()
    ic = recorder.load_object("sig_analysis/ic.pkl")
    rank_ic = recorder.load_object("sig_analysis/ric.pkl")
    report = recorder.load_object("portfolio_analysis/report_normal_1day.pkl")
    excess = report["return"] - report["bench"] - report["cost"]
    return {
        "metrics": {k: float(metrics[v]) for k, v in REPORT_METRICS.items() if v in metrics},
        "daily_ic": {str(k.date()): float(v) for k, v in ic.items()},
        "daily_rank_ic": {str(k.date()): float(v) for k, v in rank_ic.items()},
        "daily_excess": {str(k.date()): float(v) for k, v in excess.items()},
    }


def end_killed_attempts(ctx: GridContext, recorder_name: str) -> None:
    """Mark KILLED the recorders of ``recorder_name`` still RUNNING in the grid's experiment: attempts whose worker
    died (Ray reruns a task only once its worker is gone, so none of them is still running)."""
    import mlflow

    client = mlflow.MlflowClient(ctx.tracking_uri)
    experiment = client.get_experiment_by_name(ctx.experiment)
    if experiment is None:
        return
    query = f"attributes.run_name = '{recorder_name}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment.experiment_id], filter_string=query):
        client.set_terminated(run.info.run_id, status="KILLED")


def run_grid_task(ctx: GridContext, key: RunKey) -> dict:
    """One Ray task: run ``key`` and write its result file; the metrics (or the error) for the driver's log."""
    import ray
    import torch

    from qlib_hist.qlib_edge.recorders import artifact_copies_removed

    torch.set_num_threads(ctx.threads)
    with artifact_copies_removed():  # the records' and the result's reads of pred.pkl, label.pkl, ...
        result = run_one(key, worker_dataset(ctx), ctx)
    result["ray_node"] = ray.get_runtime_context().get_node_id()  # where it ran, on a cluster of several
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"  # Ray's GPU, if any
    atomic_write_text(Path(ctx.runs_dir) / key.file_name, json.dumps(result, indent=1, default=str))
    shutil.rmtree(ctx.checkpoint_dir(key), ignore_errors=True)  # the result file now says the run is done
    return {"metrics": result.get("metrics"), "error": result.get("error"), "fit_seconds": result.get("fit_seconds")}


def prepare_store(tracking_uri: str, experiment: str, artifacts: Path) -> None:
    """Create the grid's experiment before any worker writes to the store (so none races to create the tables or
    the experiment); a local store keeps its artifacts in ``artifacts``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
        client.create_experiment(experiment, artifact_location=artifacts.as_uri() if local else None)


def check_configs(ctx: GridContext, keys: list[RunKey]) -> None:
    """Build every (row, variant) model once, untrained, so a bad kwarg stops the grid before the first run.

    qlib_hist's HIST (like qlib's models) only warns about an argument it does not know; in a grid that would make
    a variant the default under another name, so a variant's unknown HIST argument is an error here.
    """
    from qlib.utils import init_instance_by_config

    from qlib_hist.settings import HISTSettings

    for key in sorted({RunKey(k.model, k.variant, ctx.grid.seeds[0]) for k in keys}):
        config = ctx.config(key)
        if config["module_path"] == "qlib_hist":
            unknown = sorted(set(HISTSettings.from_kwargs(**config["kwargs"])[1]) & set(ctx.grid.variants[key.variant]))
            if unknown:
                raise GridError(f"{ctx.grid.source}: variants.{key.variant}: {unknown} are not HIST arguments")
        try:
            init_instance_by_config(config)
        except Exception as err:
            raise GridError(
                f"{ctx.grid.source}: row {key.row!r} cannot be built: {type(err).__name__}: {err}"
            ) from None


def check_resources(args: argparse.Namespace) -> None:
    """The command line's numbers and input paths, checked before anything is built (a :class:`GridError` each)."""
    for name, least in (("threads", 1), ("cpus", 1), ("gpus_per_run", 0), ("max_retries", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise GridError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if not (Path(args.provider_uri).expanduser() / "calendars").is_dir():
        raise GridError(f"--provider-uri {args.provider_uri}: not a qlib provider (no calendars/ folder)")
    if args.membership and not Path(args.membership).expanduser().is_file():
        raise GridError(f"--membership {args.membership}: no such file")
    try:
        check_local_gpus(Resources(args.address, args.cpus, args.threads, args.gpus_per_run))
    except ValueError as err:
        raise GridError(str(err)) from None


DEFAULT_MODEL_PATH = SHARED / "qlib_reference" / "model_lstm_csi300.pkl"


def pretrained_file(model_path: str | None, parser: argparse.ArgumentParser) -> Path | None:
    """``--model-path``: the file, or None for random weights (``''``, or the default file missing, which is said
    loudly: the rows' results depend on it). A file named and missing is an error before anything runs."""
    if model_path == "":
        return None
    if model_path is None:
        if DEFAULT_MODEL_PATH.is_file():
            return DEFAULT_MODEL_PATH
        print(
            f"WARNING: no pretrained LSTM at {repo_relative(DEFAULT_MODEL_PATH)}: the HIST rows start from random "
            "weights (results differ from runs that had it); pass --model-path FILE, or --model-path '' to mean this",
            file=sys.stderr,
            flush=True,
        )
        return None
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        parser.error(f"--model-path {model_path}: no such file")
    return path


def stale_runs(grid: Grid, runs_dir: Path, keys: list[RunKey]) -> list[str]:
    """The run files of ``keys`` made with other settings than ``grid`` now gives their row, each as ``file: the
    keys that changed``: the variant's settings, and the profile's (dates, epochs) where the file records them
    (files from before 0.8.2 do not). A result file is never rerun, so without this check an edited row (a
    regenerated ``from_workflow`` YAML, a new date) would silently keep the results of the old one."""
    stale = []
    for key in keys:
        path = runs_dir / key.file_name
        if not path.exists():
            continue
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            stale.append(f"{path.name}: unreadable ({type(err).__name__})")
            continue
        now = json.loads(json.dumps({"settings": grid.variants[key.variant], "profile_settings": grid.profile}))
        changed = []
        for part, values in now.items():
            if part not in stored:
                continue
            then = stored[part] or {}
            changed += [
                f"{name} {then.get(name)!r} -> {values.get(name)!r}"
                for name in sorted(set(then) | set(values))
                if then.get(name) != values.get(name)
            ]
        if changed:
            stale.append(f"{path.name}: {', '.join(changed)}")
    return stale


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say where a grid's inputs, caches and results are, and how many threads a run has."""
    parser.add_argument("--provider-uri", default=WORKFLOW["qlib_init"]["provider_uri"])
    parser.add_argument("--market", default=WORKFLOW["market"])
    parser.add_argument("--benchmark", default=WORKFLOW["benchmark"])
    parser.add_argument("--sw-csv", default=str(SHARED / "sw_industry_history.csv"))
    parser.add_argument(
        "--membership", default=None, help="point-in-time concept table of the hist_* rows (default: SW from --sw-csv)"
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help=f"pretrained LSTM for HIST's base (qlib's benchmark file; default {repo_relative(DEFAULT_MODEL_PATH)}, "
        "with a warning where it is missing); '' = none: HIST rows start from random weights",
    )
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="where runs that checkpoint every epoch keep their checkpoints until their result file is written "
        "(default <cache-dir>/checkpoints); a folder kept between sessions (e.g. committed) resumes a run there",
    )
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument(
        "--tracking-uri", default=None, help="mlflow store of every run (default: sqlite <cache-dir>/mlruns.db)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of a run = the CPUs its task asks for")


def grid_context(args: argparse.Namespace, grid: Grid, runs_dir: Path, parser: argparse.ArgumentParser) -> GridContext:
    """The :class:`GridContext` of :func:`add_data_arguments`' options: the cache made, the concept files built."""
    cache = Path(args.cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    provider = Path(args.provider_uri).expanduser().resolve()
    model_path = pretrained_file(args.model_path, parser)
    return GridContext(
        grid=grid,
        provider_uri=str(provider),
        market=args.market,
        benchmark=args.benchmark,
        cache_dir=str(cache),
        checkpoint_root=str(
            Path(args.checkpoint_dir).expanduser().resolve() if args.checkpoint_dir else cache / "checkpoints"
        ),
        runs_dir=str(runs_dir),
        tracking_uri=args.tracking_uri or sqlite_uri(cache / "mlruns.db"),
        concepts=build_concepts(
            grid.profile,
            provider,
            args.market,
            cache,
            grid.models,
            sw_csv=str(Path(args.sw_csv).expanduser().resolve()),
            membership=str(Path(args.membership).expanduser().resolve()) if args.membership else None,
        ),
        model_path=str(model_path) if model_path else None,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: submit the grid's missing runs; 0 when every run of the grid has its result file."""
    parser = script_parser("benchmarks.run", __doc__)
    parser.add_argument("--grid", default=None, help="a grid file (benchmarks/grids/*.yaml); replaces the next three")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu-quick")
    parser.add_argument(
        "--models", nargs="+", default=["hist_pit", "hist_legacy", "qlib_hist", "qlib_hist_patched", "lstm", "gru"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_data_arguments(parser)
    parser.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each run's task asks for")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: every core)")
    parser.add_argument("--address", default=None, help="a Ray cluster: auto, or HOST:PORT of its head")
    parser.add_argument("--max-retries", type=int, default=3, help="reruns of a task whose worker process died")
    args = parser.parse_args(argv)
    try:
        if args.grid:
            grid = load_grid(args.grid, list(ROWS))
        else:
            grid = make_grid(args.profile, args.profile, args.models, args.seeds, list(ROWS))
        check_resources(args)
    except GridError as err:
        parser.error(str(err))
    runs_dir = Path(args.results_dir).expanduser().resolve() / grid.name / "runs"
    keys = grid.runs()
    stale = stale_runs(grid, runs_dir, keys)
    if stale:
        parser.error(
            f"grid {grid.name}: {len(stale)} run file(s) in {runs_dir} were made with other settings than "
            f"{grid.source} now gives their row, and would be taken as its results: {'; '.join(stale[:3])}"
            f"{' ...' if len(stale) > 3 else ''}. Give a changed row a new variant name, or delete its files to "
            "rerun it"
        )
    missing = [key for key in keys if not (runs_dir / key.file_name).exists()]
    print(f"grid {grid.name}: {len(keys)} runs, {len(keys) - len(missing)} done, submitting {len(missing)}", flush=True)
    if not missing:
        return 0
    ctx = grid_context(args, grid, runs_dir, parser)
    logging.basicConfig(level=logging.INFO)
    import qlib

    from qlib_hist.qlib_edge.handler_cache import ensure_cached

    qlib.init(**qlib_init_kwargs(ctx.provider_uri, ctx.tracking_uri, kernels=driver_kernels(args.cpus)))
    try:
        check_configs(ctx, missing)
    except GridError as err:
        parser.error(str(err))
    ensure_cached(ctx.handler(), ctx.provider_uri, ctx.cache_dir)  # built once, here; the workers load it
    runs_dir.mkdir(parents=True, exist_ok=True)
    prepare_store(ctx.tracking_uri, ctx.experiment, Path(ctx.cache_dir) / "mlruns")

    def done(key: RunKey, summary: dict, seconds: float) -> None:
        outcome = summary["metrics"] or summary["error"]
        print(f"=== {key.row} seed {key.seed} done after {seconds:.0f} s: {outcome}", flush=True)

    resources = Resources(args.address, args.cpus, args.threads, args.gpus_per_run, args.max_retries)
    # the task by its module's name, also under ``python -m`` (a ``__main__`` function would be pickled by value)
    task = importlib.import_module("benchmarks.run").run_grid_task
    failures = run_tasks(task, missing, resources, ctx, on_done=done)
    for key, error in failures.items():
        print(f"=== {key.row} seed {key.seed} FAILED: {error.splitlines()[0]}", flush=True)
    if failures:
        print(f"first failure in full:\n{next(iter(failures.values()))}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark runner: models x seeds on a qlib provider, through qlib's own records; one JSON per finished run.

    python -m benchmarks.run --profile cpu-quick --provider-uri ../shared/data/cn_csi300 \
        --models hist_pit hist_legacy lstm gru --seeds 0 1 2
    python -m benchmarks.report --profile cpu-quick          # table + plots from the JSON files

Run from the repository root. The handler, HIST's kwargs, the backtest and the records come from the repository's
qrun YAML files (:mod:`benchmarks.config`); a profile sets only the dates and the epochs.

Each (model, seed) writes ``benchmarks/results/<profile>/runs/<model>_seed<k>.json`` as soon as it finishes,
so a stopped session loses one run, not the table; a rerun skips runs that already have a file. Paths in it are
relative to the repository root.
Several runners can share one list: each claims a run with ``<model>_seed<k>.claim`` (holding its pid) before
starting it, skips runs another live runner holds, and takes over claims whose runner has died. On a small machine,
one runner per core with ``--threads 1`` fills the table sooner than one runner on all cores (timings in
``benchmarks/README.md``).
The Alpha360 handler is built once per (provider, market, dates, processors) and cached on disk
(:mod:`qlib_hist.qlib_edge.handler_cache`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.config import (
    FILE_KWARGS,
    PAPER_OPTIONS,
    PROFILES,
    WORKFLOW,
    handler_config,
    hist_kwargs,
    qlib_init_kwargs,
    record_configs,
)
from benchmarks.paths import HERE, SHARED, relative_traceback, repo_relative
from qlib_hist._io import atomic_write_text

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


def model_config(name: str, profile: dict, concepts: dict, args: argparse.Namespace, seed: int) -> dict:
    """qlib's ``{"class", "module_path", "kwargs"}`` of one table row with this ``seed``."""
    legacy = {
        "stock2concept": str(concepts["legacy"].stock2concept),
        "stock_index": str(concepts["legacy"].stock_index_npy),
    }
    pit = {"stock2concept": str(concepts["membership"])}
    table = {
        "hist_pit": ("HIST", "qlib_hist", hist_kwargs(profile, args.model_path, **pit)),
        "hist_legacy": ("HIST", "qlib_hist", hist_kwargs(profile, args.model_path, **legacy)),
        "hist_paper": ("HIST", "qlib_hist", hist_kwargs(profile, args.model_path, **pit, **PAPER_OPTIONS)),
        "qlib_hist": ("HIST", "qlib.contrib.model.pytorch_hist", hist_kwargs(profile, args.model_path, **legacy)),
        "qlib_hist_patched": (
            "PatchedQlibHIST",
            "benchmarks.qlib_patched",
            hist_kwargs(profile, args.model_path, **legacy),
        ),
        "lstm": ("LSTM", "qlib.contrib.model.pytorch_lstm", rnn_kwargs(profile)),
        "gru": ("GRU", "qlib.contrib.model.pytorch_gru", rnn_kwargs(profile)),
        "lightgbm": (
            "LGBModel",
            "qlib.contrib.model.gbdt",
            {**LIGHTGBM, "num_threads": args.threads or os.cpu_count(), "seed": seed},
        ),
    }
    # concept sources compared on the same model (the rows of "concepts for any market from prices alone")
    for row, source in (("hist_none", "none"), ("hist_returns", "returns"), ("hist_sw_returns", "sw_returns")):
        if source in concepts:
            table[row] = (
                "HIST",
                "qlib_hist",
                hist_kwargs(profile, args.model_path, stock2concept=str(concepts[source])),
            )
    cls, module, kwargs = table[name]
    if name != "lightgbm":
        kwargs["seed"] = seed
    return {"class": cls, "module_path": module, "kwargs": kwargs}


def recorded_config(config: dict) -> dict:
    """``config`` as a result file records it: the file kwargs relative to the repository."""
    kwargs = {key: repo_relative(value) if key in FILE_KWARGS else value for key, value in config["kwargs"].items()}
    return {**config, "kwargs": kwargs}


def build_concepts(profile: dict, args: argparse.Namespace, cache: Path) -> dict:
    """The concept inputs of the rows: point-in-time SW membership (levels 1-3), its static legacy snapshot as of the
    end of train, concepts from returns (default settings, monthly, from the first day a window fits to the end of
    the data), SW and returns merged, and "none" (one membership of a stock outside every market: every row zero)."""
    from qlib_hist.concepts.legacy_export import market_instruments, to_legacy
    from qlib_hist.concepts.membership import load_membership, write_membership
    from qlib_hist.concepts.report import read_calendar
    from qlib_hist.concepts.returns import ReturnConceptSpec, concepts_from_returns, merge_memberships
    from qlib_hist.concepts.shenwan import from_sw

    membership = cache / "sw_membership.csv"
    if not membership.exists():
        write_membership(from_sw(args.sw_csv), membership)
    universe = market_instruments(args.provider_uri, args.market)
    legacy = to_legacy(membership, profile["legacy_as_of"], universe, cache / f"sw_legacy_{profile['legacy_as_of']}")
    spec = ReturnConceptSpec()
    returns = cache / f"returns_membership_{args.market}_{profile['end']}.csv"
    if not returns.exists():
        calendar = read_calendar(args.provider_uri)
        start = str(calendar[spec.window + 1].date())
        write_membership(concepts_from_returns(args.provider_uri, args.market, start, profile["end"], spec)[0], returns)
    sw_returns = cache / f"sw_returns_membership_{args.market}_{profile['end']}.csv"
    if not sw_returns.exists():
        tables = [load_membership(membership), load_membership(returns)]
        write_membership(merge_memberships(tables, [membership.name, returns.name]), sw_returns)
    none = cache / "no_concepts.csv"
    if not none.exists():
        write_membership(
            pd.DataFrame(
                {"instrument": ["SH999999"], "concept": ["none"], "start_date": ["2000-01-04"], "end_date": [None]}
            ),
            none,
        )
    return {"membership": membership, "legacy": legacy, "returns": returns, "sw_returns": sw_returns, "none": none}


def run_one(name: str, seed: int, profile: dict, dataset, concepts: dict, args: argparse.Namespace) -> dict:
    """Fit one row with one seed, then the YAML's records (signal, IC analysis, backtest); the result file's dict."""
    import torch
    from qlib.utils import fill_placeholder, init_instance_by_config
    from qlib.workflow import R

    torch.manual_seed(seed)
    np.random.seed(seed)
    result = {
        "model": name,
        "seed": seed,
        "profile": args.profile,
        "provider_uri": repo_relative(args.provider_uri),
        "host": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
    }
    config = model_config(name, profile, concepts, args, seed)
    result["config"] = recorded_config(config)
    with R.start(experiment_name=f"bench_{args.profile}", recorder_name=f"{name}_seed{seed}"):
        tic = time.perf_counter()
        try:
            model = init_instance_by_config(config)
            model.fit(dataset)
        except Exception as err:  # a crashing baseline is a table row, not the end of the run
            result["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            result["traceback"] = relative_traceback(traceback.format_exc()[-2000:])
            return result
        result["fit_seconds"] = time.perf_counter() - tic
        history = getattr(model, "history", None)
        if history:
            result["epoch_seconds"] = [h["seconds"] for h in history]
            result["best_epoch"] = getattr(model, "best_epoch", None)
        recorder = R.get_recorder()
        for record in record_configs(profile, args.benchmark):  # as qrun runs them
            fill_placeholder(record, {"<MODEL>": model, "<DATASET>": dataset})
            init_instance_by_config(record, recorder=recorder).generate()
        metrics = recorder.list_metrics()
        result["metrics"] = {k: float(metrics[v]) for k, v in REPORT_METRICS.items() if v in metrics}
        ic = recorder.load_object("sig_analysis/ic.pkl")
        report = recorder.load_object("portfolio_analysis/report_normal_1day.pkl")
        excess = report["return"] - report["bench"] - report["cost"]
        result["daily_ic"] = {str(k.date()): float(v) for k, v in ic.items()}
        result["daily_excess"] = {str(k.date()): float(v) for k, v in excess.items()}
    return result


def claim(path: Path) -> bool:
    """Claim a run for this process: True when ``path`` (the run's .claim file) is now ours.

    A claim whose pid is no longer alive (a killed runner) is taken over.
    """
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
                os.kill(pid, 0)
                return False  # another live runner has it
            except (ValueError, ProcessLookupError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale: its runner is gone
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Command line: run the missing (model, seed) runs of a profile; 0 when done."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu-quick")
    parser.add_argument("--provider-uri", default=WORKFLOW["qlib_init"]["provider_uri"])
    parser.add_argument("--market", default=WORKFLOW["market"])
    parser.add_argument("--benchmark", default=WORKFLOW["benchmark"])
    parser.add_argument(
        "--models", nargs="+", default=["hist_pit", "hist_legacy", "qlib_hist", "qlib_hist_patched", "lstm", "gru"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sw-csv", default=str(SHARED / "sw_industry_history.csv"))
    parser.add_argument(
        "--model-path",
        default=str(SHARED / "qlib_reference" / "model_lstm_csi300.pkl"),
        help="pretrained LSTM for HIST's base (qlib's benchmark file); ignored when missing",
    )
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for this runner (default: torch's, = cores); 1 when running two runners",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.provider_uri = Path(args.provider_uri).expanduser().resolve()
    # absolute before the chdir below
    args.sw_csv = str(Path(args.sw_csv).expanduser().resolve())
    args.model_path = str(Path(args.model_path).expanduser().resolve()) if args.model_path else None
    profile = PROFILES[args.profile]
    cache = Path(args.cache_dir).resolve()
    runs_dir = Path(args.results_dir).resolve() / args.profile / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(cache)  # mlflow's sqlite store and its artifacts live in the cache

    import qlib
    from qlib.data.dataset import DatasetH

    from qlib_hist.qlib_edge.handler_cache import cached_handler

    logging.basicConfig(level=logging.INFO)
    qlib.init(**qlib_init_kwargs(args.provider_uri, cache / f"mlruns_{os.getpid()}.db"))  # one store per runner
    handler = handler_config(args.market, profile["start"], profile["end"], profile["fit"])
    dataset = DatasetH(cached_handler(handler, args.provider_uri, cache), segments=profile["segments"])
    concepts = build_concepts(profile, args, cache)
    for seed in args.seeds:
        for name in args.models:
            path = runs_dir / f"{name}_seed{seed}.json"
            claim_path = path.with_suffix(".claim")
            if path.exists():
                print(f"skip {path.name} (done)")
                continue
            if not claim(claim_path):
                print(f"skip {path.name} (another runner has it)")
                continue
            print(f"=== {name} seed {seed}", flush=True)
            try:
                result = run_one(name, seed, profile, dataset, concepts, args)
                atomic_write_text(path, json.dumps(result, indent=1, default=str))
            finally:
                claim_path.unlink(missing_ok=True)
            print(f"=== {name} seed {seed}: {result.get('metrics') or result.get('error')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

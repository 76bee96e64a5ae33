"""The recipe search (issue 28): Ray Tune with Optuna's TPE and ASHA early stopping, on the valid segment only.

    python -m benchmarks.search --provider-uri ../shared/data/cn_csi300 --trials 40 --cpus 2     # runs or resumes
    python -m benchmarks.search --report      # results/search.md: the trial table, Optuna's importances, the choice
    python -m benchmarks.search --trials 40 --confirm 3       # then refit the 3 best with seeds 1 and 2, on valid
    python -m benchmarks.search --report --confirm 3          # the choice: the best mean valid IC over 3 seeds

Each trial fits ``hist_pit`` (cpu-quick, point-in-time SW concepts, qlib's pretrained LSTM as ``model_path``) with
the settings of :func:`space` on a dataset of **train and valid only** — the test segment is not in it, so no trial
can read it — and reports after every epoch (:class:`ReportValidIC`, a trainer callback) the valid IC of the
weights it would keep: its best epoch's, or its starting weights' under ``keep_start``. ASHA stops the trials that
trail at epochs 2, 4, 8 and 16; Optuna's TPE proposes the next settings from the finished ones. The trials run as
Ray tasks (``--cpus``, ``--threads``, ``--address`` as in :mod:`benchmarks.run`).

A stopped search resumes two ways:

- on the same machine, from the Ray experiment in ``benchmarks/cache/search_ray`` (``Tuner.restore``: finished
  trials stay, unfinished ones start again, each from its HIST checkpoint); once that experiment ends it is
  removed, and the trials a raised ``--trials`` still asks for run as below;
- anywhere else, from the trial records committed under ``benchmarks/results/search/trials``
  (:mod:`benchmarks.search_records`): TPE and ASHA are told the finished trials' scores, and only the trials still
  missing from ``--trials`` run. So a CPU search can be spread over sessions, a few trials each.

``--report`` writes the table and the choice — the finished trial of the highest valid IC — to
``benchmarks/results/search.md`` and ``search_choice.json`` **before** any test score exists, from the records
alone; the chosen settings are then scored once, on test, by the final grid.

One seed's valid IC is a noisy ranking: in the module ablation rows whose test IC differs by 0.004 sit within
0.0017 of each other on valid, and seeds of one row spread by up to 0.0012. The best of 40 noisy scores is partly
the luckiest. ``--confirm K`` therefore refits the K best trials with ``--confirm-seeds`` (1 and 2), on train and
valid only, and ``--report --confirm K`` chooses the best *mean* valid IC over the three seeds; the confirmation's
records go to ``benchmarks/results/search/confirm`` (``<trial>_seed<k>.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks import script_parser
from benchmarks.cluster import Resources, check_local_gpus
from benchmarks.config import (
    PROFILES,
    create_store_tables,
    handler_config,
    hist_kwargs,
    qlib_init_kwargs,
    sqlite_uri,
)
from benchmarks.paths import HERE, SHARED, repo_relative
from benchmarks.search_records import (
    SCORE,
    RecordError,
    add_epoch,
    finished,
    load_records,
    read_record,
    records_dir,
    trial_row,
    write_record,
)
from qlib_hist.atomic_files import atomic_write_text
from qlib_hist.callbacks import Callback

try:  # Ray Tune is the search's machinery (the `bench` extra); `main` says how to get it when it is missing
    from ray.tune import Callback as TuneCallback
except ImportError:  # pragma: no cover - the module still imports, for --help
    TuneCallback = object  # type: ignore[assignment,misc]

NAME = "search"
CONFIRM = "confirm"  # the refits of the best trials with other seeds (``--confirm``)
METRIC = SCORE  # the valid IC of the weights a trial keeps so far (what its model would predict with)
MAX_EPOCHS = 20  # the modules grid's budget; ASHA cuts the trailing trials at its rungs
ASHA = {"grace_period": 2, "reduction_factor": 2}  # rungs at epochs 2, 4, 8, 16
TRAIN_STARTS = ("2010-01-01", "2012-01-01", "2014-01-01")  # the data begins in 2010
CONCEPT_WEIGHT = "$close * $volume"
PRETRAINED_HIDDEN = 64  # qlib's pretrained LSTM file is 64 wide: other widths train from scratch


def space() -> dict:
    """The search space, as Optuna distributions (OptunaSearch takes them, and the importances need them)."""
    from optuna.distributions import CategoricalDistribution as Choice
    from optuna.distributions import FloatDistribution

    return {
        "lr": FloatDistribution(2e-5, 2e-3, log=True),
        "loss": Choice(["mse", "ic", "mse+ic"]),
        "weight_decay": Choice([0.0, 1e-4, 1e-3, 1e-2]),
        "dropout": Choice([0.0, 0.1, 0.2, 0.3]),
        "hidden_size": Choice([64, 128]),
        "concept_weight": Choice([False, True]),
        "hidden_topk": Choice([1, 3]),
        "predefined_concepts": Choice([True, False]),
        "hidden_concepts": Choice([True, False]),
        "individual": Choice([True, False]),
        "train_start": Choice(list(TRAIN_STARTS)),
        "early_stop": Choice([3, 5, 8]),
        "keep_start": Choice([False, True]),
    }


def param_problems(params: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with ``params`` against :func:`space`: a setting missing, unknown (but for the keys in
    ``ignore``), of another type (``1`` is not ``True`` here) or outside its range. Empty when they are a point of
    the space."""
    from optuna.distributions import CategoricalDistribution

    problems = [f"{name!r} is missing" for name in space() if name not in params]
    problems += [f"{name!r} is not a searched setting" for name in params if name not in space() and name not in ignore]
    for name, dist in space().items():
        if name not in params:
            continue
        value = params[name]
        if isinstance(dist, CategoricalDistribution):
            if not any(type(value) is type(choice) and value == choice for choice in dist.choices):
                problems.append(f"{name} = {value!r} is not one of the searched {list(dist.choices)}")
        elif type(value) not in (int, float) or not dist.low <= value <= dist.high:
            problems.append(f"{name} = {value!r} is not a number in the searched [{dist.low:g}, {dist.high:g}]")
    return problems


def checked_records(directory: Path, setup: dict) -> list[dict]:
    """The records in ``directory`` (trials or confirmation runs), each checked against this search's ``setup``
    and space (:func:`param_problems`); a record that fails is a :class:`RecordError` naming its file."""
    return load_records(directory, setup, param_problems)


def trial_profile(params: dict) -> dict:
    """cpu-quick with the trial's train start: the handler starts (and its processors are fitted) there, and the
    segments are train and valid only."""
    profile = dict(PROFILES["cpu-quick"])
    train_end = profile["segments"]["train"][1]
    profile.update(
        start=params["train_start"],
        fit=(params["train_start"], train_end),
        segments={"train": (params["train_start"], train_end), "valid": profile["segments"]["valid"]},
        end=profile["segments"]["valid"][1],
        n_epochs=MAX_EPOCHS,
        early_stop=params["early_stop"],
    )
    return profile


def trial_kwargs(params: dict, membership: str, model_path: str | None, seed: int = 0) -> dict:
    """HIST's kwargs for a trial's ``params`` (the hist_pit row's, with the searched settings); search trials use
    seed 0, the confirmation runs other seeds."""
    kwargs = hist_kwargs(
        trial_profile(params),
        model_path if params["hidden_size"] == PRETRAINED_HIDDEN else None,
        stock2concept=membership,
    )
    kwargs.update(
        {key: params[key] for key in ("lr", "loss", "weight_decay", "dropout", "hidden_size", "hidden_topk")},
        predefined_concepts=params["predefined_concepts"],
        hidden_concepts=params["hidden_concepts"],
        individual=params["individual"],
        keep_start=params["keep_start"],
        concept_weight=CONCEPT_WEIGHT if params["concept_weight"] else None,
        metric="ic",
        seed=seed,
    )
    return kwargs


class ReportValidIC(Callback):
    """Reports each epoch to Ray Tune: the epoch's valid IC and Rank IC, and :data:`METRIC`, the valid IC of the
    weights early stopping holds (``best_epoch`` 0: the starting weights, scored first under ``keep_start``). ASHA
    and TPE read :data:`METRIC`; a trial ASHA stops never returns from ``report``."""

    def __init__(self, report: Any) -> None:
        self.report = report

    def on_epoch_end(self, trainer: Any, record: dict) -> None:
        self.report(
            {
                "epoch": record["epoch"] + 1,
                "valid_ic": record["valid_ic"],
                "valid_rank_ic": record["valid_rank_ic"],
                METRIC: float(trainer.stopper.best_score),
                "best_epoch": trainer.stopper.best_epoch + 1,
            }
        )


def trial_params(config: dict) -> dict:
    """The searched settings in a trial's config (Tune nests OptunaSearch's ``params/<name>`` keys as ``params``;
    a confirmation run holds them in ``run``)."""
    if "run" in config:
        return dict(config["run"]["params"])
    flat = {k.split("/", 1)[1]: v for k, v in config.items() if k.startswith("params/")}
    return flat or dict(config.get("params", {}))


def run_name(config: dict, trial_id: str) -> str:
    """A trial's record name: its Ray id for a search trial, ``<search trial>_seed<k>`` for a confirmation run (so
    a rerun of it continues its record and its HIST checkpoint)."""
    run = config.get("run")
    return confirm_name(run["source"], run["seed"]) if run else trial_id


def confirm_name(trial: str, seed: int) -> str:
    """The record name of search trial ``trial`` refitted with ``seed``: ``<trial>_seed<k>``."""
    return f"{trial}_seed{seed}"


class TrialRecords(TuneCallback):
    """Writes each trial's record (:mod:`benchmarks.search_records`) as it reports, and its end status.

    The records on disk are the state: a restored experiment's callback (unpickled as it was when the search began)
    continues the record already written for a trial it has not seen, so a restore keeps every epoch reported
    before the stop. A stored record is continued only when it is this search's (its setup and params); another
    is a :class:`RecordError` naming its file."""

    def __init__(self, directory: str | Path, setup: dict) -> None:
        self.directory, self.shared = Path(directory), setup
        self.records: dict[str, dict] = {}

    def _record(self, trial: Any) -> dict:
        name = run_name(trial.config, trial.trial_id)
        if name not in self.records:
            params = trial_params(trial.config)
            path = self.directory / f"{name}.json"
            stored = read_record(path)
            if stored is not None and (stored.get("setup") != self.shared or stored.get("params") != params):
                raise RecordError(f"{path}: a record of another search or trial; move it away to run this one")
            run = trial.config.get("run", {})
            self.records[name] = stored or {
                "trial": name,
                "setup": self.shared,
                "params": params,
                "history": [],
                **{key: run[key] for key in ("source", "seed") if key in run},
            }
        return self.records[name]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = {**add_epoch(self._record(trial), result), "status": "running"}
        self.records[record["trial"]] = record
        write_record(self.directory, record)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "error")

    def _end(self, trial: Any, status: str) -> None:
        record = {**self._record(trial), "status": status}
        self.records[record["trial"]] = record
        write_record(self.directory, record)


def provider_identity(provider_uri: str | Path) -> str:
    """The data a search ran on, in words that do not depend on the machine: the provider folder's name and its
    calendar's span (``cn_csi300 2010-01-04..2022-12-30``), or the name alone where it has no day calendar."""
    path = Path(provider_uri).expanduser()
    calendar = path / "calendars" / "day.txt"
    days = calendar.read_text(encoding="utf-8").split() if calendar.is_file() else []
    return f"{path.name} {days[0]}..{days[-1]}" if days else path.name


def model_identity(model_path: str | Path) -> str:
    """The pretrained file the trials start from, as its name and the start of its SHA-256, or ``none`` where
    there is no such file (the trials then train from scratch)."""
    path = Path(model_path).expanduser()
    if not path.is_file():
        return "none"
    return f"{path.name} sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def search_setup(args: argparse.Namespace) -> dict:
    """What every trial of one search shares (data, starting weights, budget, space), with no machine path in it:
    records made under another setup are refused."""
    from optuna.distributions import distribution_to_json

    return {
        "provider": provider_identity(args.provider_uri),
        "market": args.market,
        "model": model_identity(args.model_path),
        "profile": "cpu-quick",
        "max_epochs": MAX_EPOCHS,
        "asha": dict(ASHA),
        "metric": METRIC,
        "space": {name: json.loads(distribution_to_json(dist)) for name, dist in space().items()},
    }


def run_trial(config: dict) -> None:
    """One trial, inside a Ray worker: fit on train, early-stop on valid, report every epoch; test is never built."""
    import qlib
    import torch
    from qlib.data.dataset import DatasetH
    from ray import tune

    from qlib_hist import HIST
    from qlib_hist.qlib_edge.handler_cache import cached_handler

    params, ctx, seed = trial_params(config), config["ctx"], config.get("run", {}).get("seed", 0)
    torch.set_num_threads(ctx["threads"])
    qlib.init(**qlib_init_kwargs(ctx["provider_uri"], ctx["tracking_uri"], kernels=1))
    profile = trial_profile(params)
    handler = handler_config(ctx["market"], profile["start"], profile["end"], profile["fit"])
    dataset = DatasetH(cached_handler(handler, ctx["provider_uri"], ctx["cache_dir"]), segments=profile["segments"])
    kwargs = trial_kwargs(params, ctx["membership"], ctx["model_path"], seed=seed)
    name = run_name(config, tune.get_context().get_trial_id())
    kwargs["checkpoint_dir"] = str(Path(ctx["cache_dir"]) / "checkpoints" / NAME / name)
    HIST(**kwargs).fit(dataset, callbacks=[ReportValidIC(tune.report)])


def trial_resources(args: argparse.Namespace) -> dict:
    """What one trial asks Ray for: ``--threads`` CPUs and ``--gpus-per-trial`` GPUs (a fraction: trials that share
    one GPU; Ray sets each trial's ``CUDA_VISIBLE_DEVICES``, and HIST runs on the GPU it sees)."""
    gpus = getattr(args, "gpus_per_trial", 0) or 0
    return {"cpu": args.threads, "gpu": gpus} if gpus else {"cpu": args.threads}


def asha() -> Any:
    """The search's early stopping: ASHA on :data:`METRIC` by epoch, rungs from :data:`ASHA` to :data:`MAX_EPOCHS`."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        max_t=MAX_EPOCHS,
        metric=METRIC,
        mode="max",
        grace_period=ASHA["grace_period"],
        reduction_factor=ASHA["reduction_factor"],
    )


def seed_rungs(scheduler: Any, past: list[dict]) -> None:
    """Enter the past trials' epoch scores into ASHA's rungs, as if they had run under ``scheduler``.

    ASHA records a trial's :data:`METRIC` at the first epoch that reaches each rung and stops a newer trial that
    falls below the rung's top ``1 / reduction_factor``. Only finished trials are entered (an errored trial's
    scores would let a rung judge against a run that broke), each at the first epoch with a score that reaches the
    rung. Ray keeps the rungs in ``_brackets[i]._rungs`` as
    ``(milestone, {trial_id: score})``; ``tests/benchmarks/test_search.py`` checks that this still holds."""
    for bracket in scheduler._brackets:
        for milestone, recorded in bracket._rungs:
            for record in past:
                reached = [r for r in record["history"] if r["epoch"] >= milestone and r[METRIC] is not None]
                if reached:
                    recorded[record["trial"]] = scheduler._metric_op * reached[0][METRIC]


def experiment_path(args: argparse.Namespace) -> Path:
    """The Ray experiment of a search in progress (``<cache>/search_ray/search``)."""
    return Path(args.cache_dir).resolve() / "search_ray" / NAME


def experiment_owner(args: argparse.Namespace) -> Path:
    """Beside the experiment: the setup and records folder it writes to (a restore must write to the same)."""
    return experiment_path(args).parent / f"{NAME}.owner.json"


def _owner(args: argparse.Namespace, setup: dict) -> dict:
    return {"setup": setup, "records": str(records_dir(args.results_dir).resolve())}


def check_experiment(args: argparse.Namespace, setup: dict) -> None:
    """Refuse to restore an experiment begun under another setup or writing its records to another folder: its
    callback would go on writing records this search refuses, or where this one does not look."""
    owner = experiment_owner(args)
    try:
        stored = json.loads(owner.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if stored != _owner(args, setup):
        raise RecordError(
            f"{experiment_path(args)}: a cut search of another setup or --results-dir ({owner} says "
            f"{'nothing' if stored is None else stored.get('records')}); rerun it with its own, or remove that folder"
        )


def remove_experiment(args: argparse.Namespace) -> None:
    """An ended experiment and its trials' HIST checkpoints: every trial of it is in the records by then."""
    shutil.rmtree(experiment_path(args), ignore_errors=True)
    experiment_owner(args).unlink(missing_ok=True)
    shutil.rmtree(Path(args.cache_dir).resolve() / "checkpoints" / NAME, ignore_errors=True)


def _ended(args: argparse.Namespace) -> bool:
    """Whether every trial of the experiment ended (finished, stopped by ASHA, or errored), as its saved state
    says. After Ctrl+C or SIGUSR1 ``fit`` returns with the trials it cut saved as pending (in memory Ray marks them
    terminated), and the experiment must stay to be restored."""
    from ray.tune import ExperimentAnalysis

    return all(
        trial.status in ("TERMINATED", "ERROR") for trial in ExperimentAnalysis(str(experiment_path(args))).trials
    )


def new_tuner(args: argparse.Namespace, ctx: dict, setup: dict) -> Any:
    """A Tuner for the ``--trials`` not yet finished, which takes the finished trial records under
    ``--results-dir`` as its past (TPE's told points, ASHA's rungs). Records of trials cut by a stop are dropped:
    those trials run again as new ones. Returns None when no trial is missing."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    directory = records_dir(args.results_dir)
    records = checked_records(directory, setup)
    for stale in (r for r in records if r["status"] == "running"):  # cut by a stop: run again as a new trial
        (directory / f"{stale['trial']}.json").unlink()
    past = finished(records)
    missing = args.trials - len(past)
    print(f"{len(past)} finished trial(s) in {repo_relative(directory)}; {max(missing, 0)} to run", flush=True)
    if missing <= 0:
        return None
    searcher = OptunaSearch(
        space={f"params/{k}": v for k, v in space().items()}, metric=METRIC, mode="max", seed=args.seed
    )
    scheduler = asha()
    for record in past:  # Ray numbers the intermediate values from 0; only a pruner (none here) would read them
        searcher.add_evaluated_point(
            {f"params/{k}": v for k, v in record["params"].items()},
            record["history"][-1][METRIC],
            intermediate_values=[row[METRIC] for row in record["history"] if row[METRIC] is not None],
        )
    seed_rungs(scheduler, past)
    return tune.Tuner(
        tune.with_resources(run_trial, trial_resources(args)),
        param_space={"ctx": ctx},
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=missing, max_concurrent_trials=args.concurrent
        ),
        run_config=tune.RunConfig(
            name=NAME, storage_path=str(experiment_path(args).parent), callbacks=[TrialRecords(directory, setup)]
        ),
    )


def run_search(args: argparse.Namespace, ctx: dict, setup: dict) -> bool:
    """Run the search until ``--trials`` trials have finished; False when it was stopped before (Ctrl+C).

    A search cut by a stop on this machine is restored first (``Tuner.restore``: its finished trials stay, its
    unfinished and errored ones resume from their HIST checkpoints, and their records continue) and run to its
    end. An experiment whose trials have all ended is removed, with its trials' checkpoints: every trial of it is
    in the records by then. Then a new Tuner (:func:`new_tuner`) runs the trials the records still miss, so a raised
    ``--trials`` is honoured after a restore too. A stopped experiment stays, to be restored by the next run."""
    from ray import tune

    path = experiment_path(args)
    if tune.Tuner.can_restore(str(path)):
        check_experiment(args, setup)
        print(f"restoring {path}", flush=True)
        trainable = tune.with_resources(run_trial, trial_resources(args))
        tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True).fit()
        if not _ended(args):
            return False
        remove_experiment(args)
    search = new_tuner(args, ctx, setup)
    if search is None:
        return True
    experiment_owner(args).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(experiment_owner(args), json.dumps(_owner(args, setup)))
    search.fit()
    if not _ended(args):
        return False
    remove_experiment(args)
    return True


def confirm_dir(results_dir: str | Path) -> Path:
    """Where the confirmation runs' records live: ``<results>/search/confirm``."""
    return records_dir(results_dir).parent / CONFIRM


def confirm_runs(rows: list[dict], top: int, seeds: list[int], done: set[str]) -> list[dict]:
    """The confirmation runs still to do: each of the ``top`` trials of ``rows`` (the search's table, best first)
    refitted with each of ``seeds``, but those whose record (``<trial>_seed<k>``) is in ``done``."""
    return [
        {"source": row["trial"], "seed": seed, "params": {name: row[name] for name in space()}}
        for row in rows[:top]
        for seed in seeds
        if confirm_name(row["trial"], seed) not in done
    ]


def run_confirm(args: argparse.Namespace, ctx: dict, setup: dict) -> None:
    """Refit the search's ``--confirm`` best trials with the ``--confirm-seeds`` (full epoch budget, each its own
    early stop, no ASHA), on train and valid only, writing a record per run to :func:`confirm_dir`. A run cut by a
    stop continues its record and its HIST checkpoint when the command is run again."""
    from ray import tune

    directory = confirm_dir(args.results_dir)
    rows = trial_table(checked_records(records_dir(args.results_dir), setup))
    done = {record["trial"] for record in finished(checked_records(directory, setup))}
    runs = confirm_runs(rows, args.confirm, args.confirm_seeds, done)
    print(f"confirmation: {len(runs)} run(s) to do for the best {args.confirm} trial(s)", flush=True)
    if not runs:
        return
    storage = experiment_path(args).parent
    tune.Tuner(
        tune.with_resources(run_trial, trial_resources(args)),
        param_space={"ctx": ctx, "run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=args.concurrent),
        run_config=tune.RunConfig(name=CONFIRM, storage_path=str(storage), callbacks=[TrialRecords(directory, setup)]),
    ).fit()
    shutil.rmtree(storage / CONFIRM, ignore_errors=True)


def confirmed(rows: list[dict], confirm: list[dict], top: int, seeds: list[int]) -> list[dict]:
    """The ``top`` trials of ``rows`` with their valid IC over seed 0 (the search's run) and ``seeds`` (the
    confirmation's): each row gains ``confirmed`` = ``{"seeds", "valid_ic", "mean", "std"}``, best mean first.
    Raises :class:`RecordError` naming the runs still missing."""
    import numpy as np

    scores = {record["trial"]: record["history"][-1][METRIC] for record in finished(confirm)}
    missing = [
        confirm_name(row["trial"], seed)
        for row in rows[:top]
        for seed in seeds
        if confirm_name(row["trial"], seed) not in scores
    ]
    if missing:
        raise RecordError(f"the confirmation lacks {', '.join(missing)}: run the search with --confirm {top} first")
    out = []
    for row in rows[:top]:
        values = [row[METRIC], *(scores[confirm_name(row["trial"], seed)] for seed in seeds)]
        summary = {
            "seeds": [0, *seeds],
            "valid_ic": values,
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)),
        }
        out.append({**row, "confirmed": summary})
    return sorted(out, key=lambda row: -row["confirmed"]["mean"])


def trial_table(records: list[dict]) -> list[dict]:
    """One row per finished trial (:func:`benchmarks.search_records.trial_row`), the highest valid IC first."""
    return sorted((trial_row(record, METRIC) for record in finished(records)), key=lambda row: -row[METRIC])


def importances(rows: list[dict]) -> dict:
    """Optuna's importances (fANOVA, seeded) of the settings for the trials' valid IC; empty while the trials do
    not vary enough for fANOVA (one trial, or all alike)."""
    import optuna

    dists = space()
    study = optuna.create_study(direction="maximize")
    for row in rows:
        params = {k: row[k] for k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=row[METRIC]))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except RuntimeError:  # fANOVA finds no variance: too few trials, or all alike
        return {}


def warm_rows(rows: list[dict]) -> list[dict]:
    """The trials that start from qlib's pretrained file (:data:`PRETRAINED_HIDDEN` wide): their importances say
    what matters once the width, and with it the cold or warm start, is set."""
    return [row for row in rows if row["hidden_size"] == PRETRAINED_HIDDEN]


def write_report(
    rows: list[dict],
    weights: dict,
    out: Path,
    confirmed_rows: list[dict] | None = None,
    warm_weights: dict | None = None,
) -> dict:
    """``search.md`` (the choice first, then the confirmation, the importances and the trial table) and
    ``search_choice.json``. The choice is the best mean valid IC of ``confirmed_rows`` (:func:`confirmed`) where
    given, else the trial of the highest valid IC. ``warm_weights`` (the importances among :func:`warm_rows`), where
    given, are a second column of the importances."""
    choice = confirmed_rows[0] if confirmed_rows else rows[0]
    keys = list(space())
    rule = (
        f"the best mean valid IC over seeds {', '.join(map(str, choice['confirmed']['seeds']))} among the "
        f"{len(confirmed_rows)} best trials"
        if confirmed_rows
        else "the highest valid IC, one seed"
    )
    lines = [
        "# Recipe search (valid segment only)",
        "",
        f"{len(rows)} finished trials; Optuna TPE with ASHA (rungs at epochs {ASHA['grace_period']}, ..., max "
        f"{MAX_EPOCHS}), cpu-quick train (from the trial's start) and valid 2017-2018. The test segment was not in "
        "any trial's dataset. Each trial's score is the valid IC of the weights it keeps (`best_epoch` 0: its "
        "starting weights). Made by `python -m benchmarks.search --report` from the trial records in "
        "`search/trials/` (and `search/confirm/`).",
        "",
        f"## The choice ({rule}), fixed before any test score",
        "",
        "```json",
        json.dumps(
            {k: choice[k] for k in [*keys, METRIC, "best_epoch", *(["confirmed"] if confirmed_rows else [])]}, indent=1
        ),
        "```",
        "",
    ]
    if confirmed_rows:
        seeds = confirmed_rows[0]["confirmed"]["seeds"]
        lines += [
            "## Confirmation on valid (the best trials refitted with other seeds)",
            "",
            "| trial | " + " | ".join(f"valid IC, seed {seed}" for seed in seeds) + " | mean ± std |",
            "|---|" + "---|" * (len(seeds) + 1),
            *[
                f"| {row['trial']} | "
                + " | ".join(f"{value:.4f}" for value in row["confirmed"]["valid_ic"])
                + f" | {row['confirmed']['mean']:.4f} ± {row['confirmed']['std']:.4f} |"
                for row in confirmed_rows
            ],
            "",
        ]
    columns = [(f"all {len(rows)} trials", weights)]
    if warm_weights is not None:
        columns.append((f"{PRETRAINED_HIDDEN}-wide trials (warm, {len(warm_rows(rows))})", warm_weights))
    lines += [
        "## Importances (Optuna's fANOVA, for valid IC)",
        "",
        "| setting | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
        *(
            [f"| {k} | " + " | ".join(f"{w[k]:.3f}" if k in w else "" for _, w in columns) + " |" for k in weights]
            or ["| (none yet: the trials' scores do not vary) | |"]
        ),
        "",
        "## Trials",
        "",
        "| " + " | ".join(keys + [METRIC, "best_epoch", "epochs"]) + " |",
        "|" + "---|" * (len(keys) + 3),
        *["| " + " | ".join(_cell(row[k]) for k in keys + [METRIC, "best_epoch", "epochs"]) + " |" for row in rows],
        "",
    ]
    atomic_write_text(out / "search.md", "\n".join(lines))
    atomic_write_text(out / "search_choice.json", json.dumps(choice, indent=1))
    return choice


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("benchmarks.search", __doc__)
    parser.add_argument("--provider-uri", default=str(SHARED / "cn_csi300"))
    parser.add_argument("--market", default="csi300")
    parser.add_argument("--sw-csv", default=str(SHARED / "sw_industry_history.csv"))
    parser.add_argument("--model-path", default=str(SHARED / "qlib_reference" / "model_lstm_csi300.pkl"))
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (TPE learns from finished ones)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=None)
    parser.add_argument("--address", default=None, help="a Ray cluster: auto, or HOST:PORT of its head")
    parser.add_argument(
        "--gpus-per-trial", type=float, default=0, help="GPUs each trial asks for: 0.125 runs 8 trials on one GPU"
    )
    parser.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed")
    parser.add_argument("--report", action="store_true", help="write the table and the choice, run nothing")
    parser.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="K",
        help="refit the K best trials with --confirm-seeds once the search has ended; --report then chooses by "
        "their mean valid IC",
    )
    parser.add_argument("--confirm-seeds", type=int, nargs="+", default=[1, 2], metavar="SEED")
    args = parser.parse_args(argv)
    if args.confirm < 0 or (
        args.confirm and (0 in args.confirm_seeds or len(set(args.confirm_seeds)) < len(args.confirm_seeds))
    ):
        parser.error(
            f"--confirm must be at least 0 (got {args.confirm}) and --confirm-seeds distinct seeds other than 0, "
            f"the search's own (got {args.confirm_seeds})"
        )
    if args.gpus_per_trial < 0:
        parser.error(f"--gpus-per-trial must be at least 0, got {args.gpus_per_trial:g}")
    if not args.report:
        try:  # a local Ray would hold trials that ask for more GPUs than it has as pending, for ever
            check_local_gpus(Resources(args.address, args.cpus, args.threads, args.gpus_per_trial))
        except ValueError as err:
            parser.error(str(err).replace("--gpus-per-run", "--gpus-per-trial"))
    if TuneCallback is object:
        parser.error("benchmarks.search needs Ray Tune and Optuna: pip install -e '.[bench]'")
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    setup = search_setup(args)
    directory = records_dir(args.results_dir)
    try:  # records of another setup are refused before anything is built
        records = checked_records(directory, setup)
    except RecordError as err:
        parser.error(str(err))
    if args.report:
        rows = trial_table(records)
        if not rows:
            parser.error(f"no finished trial in {directory}: run the search first")
        try:
            confirm = checked_records(confirm_dir(args.results_dir), setup)
            ranked = confirmed(rows, confirm, args.confirm, args.confirm_seeds) if args.confirm else None
        except RecordError as err:
            parser.error(str(err))
        choice = write_report(rows, importances(rows), Path(args.results_dir), ranked, importances(warm_rows(rows)))
        print(f"{len(rows)} trials; chosen (valid IC {choice[METRIC]:.4f} on seed 0): {choice['trial']}")
        return 0
    import ray

    from benchmarks.run import build_concepts

    cache = Path(args.cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    concepts = build_concepts(
        PROFILES["cpu-quick"], Path(args.provider_uri).resolve(), args.market, cache, ["hist_pit"], sw_csv=args.sw_csv
    )
    model_path = Path(args.model_path).resolve()
    ctx = {
        "provider_uri": str(Path(args.provider_uri).resolve()),
        "market": args.market,
        "cache_dir": str(cache),
        "tracking_uri": sqlite_uri(cache / "mlruns.db"),
        "membership": str(concepts["membership"]),
        "model_path": str(model_path) if model_path.exists() else None,
        "threads": args.threads,
    }
    import qlib

    from qlib_hist.qlib_edge.handler_cache import ensure_cached

    create_store_tables(ctx["tracking_uri"])  # before any trial: trials that migrate a fresh store race
    qlib.init(**qlib_init_kwargs(ctx["provider_uri"], ctx["tracking_uri"], kernels=args.cpus or 2))
    for start in TRAIN_STARTS:  # each train start's handler built once, here, before any trial loads it
        profile = trial_profile({"train_start": start, "early_stop": 5})
        ensure_cached(
            handler_config(args.market, profile["start"], profile["end"], profile["fit"]),
            ctx["provider_uri"],
            str(cache),
        )
    ray.init(address=args.address, num_cpus=None if args.address else args.cpus, include_dashboard=False)
    try:
        complete = run_search(args, ctx, setup)
    except RecordError as err:
        parser.error(str(err))
    if not complete:
        print(f"search stopped with trials unfinished: the same command resumes it from {experiment_path(args)}")
    elif args.confirm:
        try:
            run_confirm(args, ctx, setup)
        except RecordError as err:
            parser.error(str(err))
    rows = trial_table(checked_records(directory, setup))
    print(f"search: {len(rows)} finished trials; best valid IC {rows[0][METRIC]:.4f}" if rows else "search: none")
    print(f"provider {repo_relative(ctx['provider_uri'])}; write the choice with --report")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's qlib settings, read from the repository's qrun YAML files rather than re-typed.

``workflow_config_hist_Alpha360.yaml`` (qlib's HIST benchmark, pointing at qlib_hist) gives the Alpha360 handler
(processors, label), the dataset segments, HIST's ``task.model.kwargs``, the ``port_analysis_config`` (strategy,
account, costs) and the records; ``workflow_config_hist_paper.yaml`` gives the paper options of the ``hist_paper``
row. A profile overrides only what differs from the YAML: dates, epochs, the as-of date of the legacy matrix.

The files are read as qrun reads them (ruamel.yaml, ``typ="safe"``, YAML 1.2), not with PyYAML's ``safe_load``
(YAML 1.1), which reads ``lr: 1e-4`` as the *string* ``"1e-4"``. Dates are turned into ``YYYY-MM-DD`` strings.
``<PRED>``, ``<MODEL>`` and ``<DATASET>`` stay placeholders, filled where qlib fills them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from benchmarks.paths import ROOT
from qlib_hist.config_dates import as_timestamp, config_dates

WORKFLOW_YAML = ROOT / "workflow_config_hist_Alpha360.yaml"
PAPER_YAML = ROOT / "workflow_config_hist_paper.yaml"

#: HIST kwargs that name files. The YAML's are in qlib's layout (``benchmarks/LSTM/...``, ``benchmarks/HIST/...``):
#: every run passes its own (``model_path`` only when that file exists; the concept files of its row)
FILE_KWARGS = ("model_path", "stock2concept", "stock_index")


def portable_kwargs(kwargs: dict) -> dict:
    """``kwargs`` with each file kwarg (:data:`FILE_KWARGS`) as its file name: where a run found the file depends on
    the folder it ran from (a pretrained file, the runner's concept tables in its cache), not on what it trained."""
    return {k: Path(v).name if k in FILE_KWARGS and isinstance(v, str) else v for k, v in kwargs.items()}


#: kwargs of the paper YAML's model that are not paper options: the seed is set per run; the committed
#: ``hist_paper`` runs wrote no checkpoints, and one ``checkpoint_dir`` shared by every run would offer one run's
#: checkpoint to the next (refused: another fingerprint)
NOT_PAPER_OPTIONS = ("seed", "checkpoint_dir")


def _iso(value: Any, key: str) -> str | None:
    """A date of the YAML (checked by :func:`qlib_hist.config_dates.as_timestamp`: one line naming its key when it is
    not a date pandas can hold) as its ``YYYY-MM-DD`` string (with the time when it has one)."""
    stamp = as_timestamp(value, key)
    if stamp is None:
        return None
    return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()


def _iso_dates(node: Any, source: str = "") -> Any:
    """``node`` with every ``datetime.date`` (anywhere) and every date string of a handler's, a backtest's or a
    segment's (:func:`qlib_hist.config_dates.config_dates`) as its ``YYYY-MM-DD`` string; dicts and lists rebuilt."""
    return config_dates(node, source=source, convert=_iso)


def load_workflow(path: str | Path) -> dict:
    """A qrun workflow YAML as qrun reads it (anchors resolved), dates as ``YYYY-MM-DD`` strings."""
    from ruamel.yaml import YAML

    return _iso_dates(YAML(typ="safe", pure=True).load(Path(path).read_text()), source=str(path))


WORKFLOW = load_workflow(WORKFLOW_YAML)
PAPER_WORKFLOW = load_workflow(PAPER_YAML)
HANDLER = WORKFLOW["task"]["dataset"]["kwargs"]["handler"]  # class, module_path, kwargs (= data_handler_config)
MODEL_KWARGS: dict[str, Any] = WORKFLOW["task"]["model"]["kwargs"]

#: the handler's processors and label, as qlib's HIST benchmark sets them
PROCESSORS = {key: HANDLER["kwargs"][key] for key in ("infer_processors", "learn_processors", "label")}

#: the paper options (``hidden_topk``, ``concept_weight``, ...): the paper YAML's model kwargs that qlib's does not set
PAPER_OPTIONS = {
    key: value
    for key, value in PAPER_WORKFLOW["task"]["model"]["kwargs"].items()
    if key not in MODEL_KWARGS and key not in NOT_PAPER_OPTIONS
}


def _yaml_profile() -> dict:
    """The YAML's own dates and epochs; the legacy matrix is taken as of the end of train."""
    handler = HANDLER["kwargs"]
    segments = {name: tuple(span) for name, span in WORKFLOW["task"]["dataset"]["kwargs"]["segments"].items()}
    return {
        "start": handler["start_time"],
        "end": handler["end_time"],
        "fit": (handler["fit_start_time"], handler["fit_end_time"]),
        "segments": segments,
        "n_epochs": MODEL_KWARGS["n_epochs"],
        "early_stop": MODEL_KWARGS["early_stop"],
        "legacy_as_of": segments["train"][1],
    }


def _dated_profile(train: tuple, valid: tuple, test: tuple, end: str, **settings: Any) -> dict:
    """The YAML's profile on other dates: the handler from the start of ``train`` to ``end``, processors fitted on
    ``train``, the legacy matrix as of its end; ``settings`` (epochs) override the YAML's."""
    return {
        **_yaml_profile(),
        "start": train[0],
        "end": end,
        "fit": train,
        "segments": {"train": train, "valid": valid, "test": test},
        "legacy_as_of": train[1],
        **settings,
    }


PROFILES: dict[str, dict] = {
    # qlib's HIST benchmark as the YAML sets it, for GPU machines with qlib's cn_data
    "paper": _yaml_profile(),
    # the CPU table on ../shared/data/cn_csi300 (2010-2022, not the YAML's 2008-2020): train 2014-2016, valid
    # 2017-2018, test 2019-2022; the same settings for every row, epochs capped to fit a CPU
    "cpu-quick": _dated_profile(
        ("2014-01-01", "2016-12-31"),
        ("2017-01-01", "2018-12-31"),
        ("2019-01-01", "2022-12-29"),
        end="2022-12-30",
        n_epochs=8,
        early_stop=4,
    ),
    # qlib's benchmark segments on ../shared/data (it begins in 2010, qlib's YAML in 2008): train 2010-2014, valid
    # 2015-2016, test 2017-01-01..2020-08-01, processors fitted on train; HIST's YAML epochs (200, early stop 20),
    # which a CPU grid caps in its settings (and labels the table as capped)
    "qlib-bench": _dated_profile(
        ("2010-01-01", "2014-12-31"), ("2015-01-01", "2016-12-31"), ("2017-01-01", "2020-08-01"), end="2020-08-01"
    ),
}


def handler_config(market: str, start: str, end: str, fit: tuple) -> dict:
    """The YAML's Alpha360 handler over ``market`` from ``start`` to ``end`` (dates), processors fitted on ``fit``."""
    kwargs = dict(
        HANDLER["kwargs"],
        instruments=market,
        start_time=start,
        end_time=end,
        fit_start_time=fit[0],
        fit_end_time=fit[1],
    )
    return {"class": HANDLER["class"], "module_path": HANDLER["module_path"], "kwargs": copy.deepcopy(kwargs)}


def hist_kwargs(profile: dict, model_path: str | Path | None = None, **extra: Any) -> dict:
    """HIST's kwargs from the YAML's ``task.model.kwargs`` (lr, metric, base model, ...), epochs from ``profile``.

    The YAML's file kwargs are dropped: ``model_path`` (qlib's pretrained LSTM for the base) is set only when the
    file exists, the concept files come in ``extra`` with any other setting.
    """
    kwargs = {key: value for key, value in MODEL_KWARGS.items() if key not in FILE_KWARGS}
    kwargs.update(n_epochs=profile["n_epochs"], early_stop=profile["early_stop"])
    if model_path and Path(model_path).exists():
        kwargs["model_path"] = str(model_path)
    kwargs.update(extra)
    return kwargs


def port_config(profile: dict, benchmark: str) -> dict:
    """The YAML's ``port_analysis_config`` (TopkDropoutStrategy, account, costs), backtest over the test segment."""
    config = copy.deepcopy(WORKFLOW["port_analysis_config"])
    start, end = profile["segments"]["test"]
    config["backtest"].update(start_time=start, end_time=end, benchmark=benchmark)
    return config


def record_configs(profile: dict, benchmark: str) -> list[dict]:
    """The YAML's ``task.record`` (SignalRecord, SigAnaRecord, PortAnaRecord), the backtest from :func:`port_config`.

    ``<MODEL>`` / ``<DATASET>`` are left for ``qlib.utils.fill_placeholder``; each call returns fresh copies.
    """
    records = copy.deepcopy(WORKFLOW["task"]["record"])
    for record in records:
        if record["class"] == "PortAnaRecord":
            record["kwargs"]["config"] = port_config(profile, benchmark)
    return records


def qlib_init_kwargs(provider_uri: str | Path, tracking_uri: str, kernels: int = 2) -> dict:
    """``qlib.init`` keyword arguments: the provider, the YAML's region, the mlflow store at ``tracking_uri`` (a
    ``sqlite:///`` file or a tracking server; mlflow 3.x refuses qlib's default ``./mlruns`` file store).

    ``kernels`` is qlib's number of processes for reading expressions (handler builds, the backtest's prices); above
    1, qlib forks them (joblib's multiprocessing backend). Inside a Ray worker, a process full of Ray's threads,
    such a fork can hang for ever on a lock one of those threads held: Ray tasks pass ``kernels=1``."""
    return {
        "provider_uri": str(provider_uri),
        "region": WORKFLOW["qlib_init"]["region"],
        "kernels": kernels,
        "exp_manager": {
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": tracking_uri, "default_exp_name": "Experiment"},
        },
    }


def sqlite_uri(path: Path) -> str:
    """The mlflow tracking URI of the sqlite file ``path``; writers wait up to 60 s for each other's lock."""
    return f"sqlite:///{path}?timeout=60"


def create_store_tables(tracking_uri: str) -> None:
    """Create (and migrate) the mlflow store's tables at ``tracking_uri`` now, in this one process.

    mlflow builds a new sqlite store's tables on first use with alembic migrations that copy tables through
    ``_alembic_tmp_*``; two workers opening the same fresh store at once race those copies and one fails with
    "table _alembic_tmp_metrics already exists", leaving a half-migrated file. A driver calls this before it
    starts its workers."""
    import mlflow

    mlflow.MlflowClient(tracking_uri).search_experiments(max_results=1)

"""The benchmark package: settings read from the YAML equal the ones the committed runs used; relative result paths.

No training and no real data: these pass without ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.config import (
    FILE_KWARGS,
    PAPER_WORKFLOW,
    PROFILES,
    WORKFLOW,
    handler_config,
    port_config,
    record_configs,
)
from benchmarks.paths import ROOT, SHARED, relative_traceback, repo_relative
from benchmarks.run import model_config, recorded_config

from conftest import shared_file

CACHE = ROOT / "benchmarks" / "cache"

#: what benchmarks/run.py typed before it read the YAML (the committed cpu-quick runs were made with these)
PROCESSORS = {
    "infer_processors": [
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
        {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
    ],
    "learn_processors": [{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
    "label": ["Ref($close, -2) / Ref($close, -1) - 1"],
}


def _profile(train: tuple, valid: tuple, test: tuple, end: str, epochs: tuple, legacy_as_of: str) -> dict:
    """A profile as the old run.py typed it: the handler spans train..end, fits on train."""
    segments = {"train": train, "valid": valid, "test": test}
    return {
        "start": train[0],
        "end": end,
        "fit": train,
        "segments": segments,
        "n_epochs": epochs[0],
        "early_stop": epochs[1],
        "legacy_as_of": legacy_as_of,
    }


CPU_QUICK = _profile(
    ("2014-01-01", "2016-12-31"),
    ("2017-01-01", "2018-12-31"),
    ("2019-01-01", "2022-12-29"),
    "2022-12-30",
    (8, 4),
    "2016-12-31",
)
PAPER = _profile(
    ("2008-01-01", "2014-12-31"),
    ("2015-01-01", "2016-12-31"),
    ("2017-01-01", "2020-08-01"),
    "2020-08-01",
    (200, 20),
    "2014-12-31",
)
HIST_CPU_QUICK = {
    "d_feat": 6,
    "hidden_size": 64,
    "num_layers": 2,
    "dropout": 0.0,
    "n_epochs": 8,
    "lr": 1e-4,
    "early_stop": 4,
    "metric": "ic",
    "loss": "mse",
    "base_model": "LSTM",
    "GPU": 0,
}
RNN_CPU_QUICK = {
    "d_feat": 6,
    "hidden_size": 64,
    "num_layers": 2,
    "dropout": 0.0,
    "n_epochs": 8,
    "lr": 1e-3,
    "early_stop": 4,
    "batch_size": 800,
    "metric": "loss",
    "loss": "mse",
    "GPU": 0,
}
PAPER_OPTIONS = {
    "hidden_topk": 3,
    "concept_weight": "$close * $volume",
    "concept_refine": True,
    "temporal_attention": True,
    "smooth_steps": 5,
}
PORT_CPU_QUICK = {
    "strategy": {
        "class": "TopkDropoutStrategy",
        "module_path": "qlib.contrib.strategy",
        "kwargs": {"signal": "<PRED>", "topk": 50, "n_drop": 5},
    },
    "backtest": {
        "start_time": "2019-01-01",
        "end_time": "2022-12-29",
        "account": 100000000,
        "benchmark": "SH000300",
        "exchange_kwargs": {
            "limit_threshold": 0.095,
            "deal_price": "close",
            "open_cost": 0.0005,
            "close_cost": 0.0015,
            "min_cost": 5,
        },
    },
}


class _Legacy:
    stock2concept = CACHE / "sw_legacy_2016-12-31_stock2concept.npy"
    stock_index_npy = CACHE / "sw_legacy_2016-12-31_stock_index.npy"


CONCEPTS = {"membership": CACHE / "sw_membership.csv", "legacy": _Legacy}


def _config(name: str, model_path: Path | None, seed: int = 1) -> dict:
    return model_config(
        name, PROFILES["cpu-quick"], CONCEPTS, argparse.Namespace(model_path=model_path, threads=1), seed
    )


def test_profiles_cpu_quick_as_committed_and_paper_as_the_yaml():
    assert PROFILES["cpu-quick"] == CPU_QUICK
    assert PROFILES["paper"] == PAPER


def test_handler_from_yaml_equals_the_typed_one():
    from qlib_hist.qlib_edge.handler_cache import cache_key

    typed = {
        "class": "Alpha360",
        "module_path": "qlib.contrib.data.handler",
        "kwargs": {
            "instruments": "csi300",
            "start_time": "2014-01-01",
            "end_time": "2022-12-30",
            "fit_start_time": "2014-01-01",
            "fit_end_time": "2016-12-31",
            **PROCESSORS,
        },
    }
    got = handler_config("csi300", CPU_QUICK["start"], CPU_QUICK["end"], CPU_QUICK["fit"])
    assert got == typed
    provider = ROOT / "no-such-provider"  # the key hashes the provider's files when they exist; none here
    assert cache_key(got, provider) == cache_key(typed, provider)  # so the cached handlers still hit


@pytest.mark.parametrize(
    "name, extra",
    [
        ("hist_pit", {"stock2concept": str(CACHE / "sw_membership.csv")}),
        ("hist_legacy", {"stock2concept": str(_Legacy.stock2concept), "stock_index": str(_Legacy.stock_index_npy)}),
        ("hist_paper", {"stock2concept": str(CACHE / "sw_membership.csv"), **PAPER_OPTIONS}),
    ],
)
def test_hist_rows_equal_the_committed_configs(tmp_path, name, extra):
    model_path = tmp_path / "model_lstm_csi300.pkl"
    model_path.write_bytes(b"")
    got = _config(name, model_path)
    expected = {**HIST_CPU_QUICK, "model_path": str(model_path), **extra, "seed": 1}
    assert got == {"class": "HIST", "module_path": "qlib_hist", "kwargs": expected}
    assert list(got["kwargs"]) == list(expected)  # the result files keep their key order
    assert isinstance(got["kwargs"]["lr"], float)  # read as qrun reads it: PyYAML would give the string "1e-4"
    assert "model_path" not in _config(name, tmp_path / "missing.pkl")["kwargs"]  # no pretrained file: random init


def test_qlib_rows_keep_their_settings():
    legacy = {"stock2concept": str(_Legacy.stock2concept), "stock_index": str(_Legacy.stock_index_npy)}
    assert _config("qlib_hist", None)["kwargs"] == {**HIST_CPU_QUICK, **legacy, "seed": 1}
    assert _config("qlib_hist_patched", None)["module_path"] == "benchmarks.qlib_patched"
    for name in ("lstm", "gru"):
        assert _config(name, None)["kwargs"] == {**RNN_CPU_QUICK, "seed": 1}


def test_patched_qlib_hist_takes_qlibs_trainer_keywords(monkeypatch):
    """qlib's trainers call ``auto_filter_kwargs(model.fit)(dataset, reweighter=...)``: qlib's HIST has no
    ``reweighter``, so the patched wrapper must not accept (and forward) it."""
    from qlib.contrib.model.pytorch_hist import HIST as QlibHIST
    from qlib.utils import auto_filter_kwargs

    from benchmarks.qlib_patched import PatchedQlibHIST

    calls = []
    monkeypatch.setattr(QlibHIST, "fit", lambda self, dataset, **kwargs: calls.append(kwargs))
    model = object.__new__(PatchedQlibHIST)  # the wrapper alone: no network is built
    auto_filter_kwargs(model.fit, warning=False)("dataset", reweighter=None)
    assert calls == [{"evals_result": {}, "save_path": None}]


def test_patched_qlib_hist_keeps_each_epochs_valid_score_and_time_and_qlibs_best_epoch(monkeypatch):
    """The table's epochs and best epoch for qlib's row come from qlib's own loop: its ``evals_result`` and
    ``train_epoch`` calls, the first of the tied best scores kept (qlib's strict ``>``)."""
    from qlib.contrib.model.pytorch_hist import HIST as QlibHIST

    from benchmarks.qlib_patched import PatchedQlibHIST

    def qlib_fit(self, dataset, evals_result, save_path):  # qlib's loop, shape only: train, then score
        evals_result["train"], evals_result["valid"] = [], []
        for score in (0.01, 0.03, 0.03, 0.02):
            self.train_epoch("x", "y", "index")
            evals_result["valid"].append(score)

    monkeypatch.setattr(QlibHIST, "fit", qlib_fit)
    monkeypatch.setattr(QlibHIST, "train_epoch", lambda self, *args: None)
    model = object.__new__(PatchedQlibHIST)
    model.fit("dataset")
    assert [h["valid_score"] for h in model.history] == [0.01, 0.03, 0.03, 0.02]
    assert [h["epoch"] for h in model.history] == [0, 1, 2, 3] and all(h["seconds"] >= 0 for h in model.history)
    assert (model.best_epoch, model.best_score) == (1, 0.03)


def test_paper_yaml_differs_from_qlibs_only_by_the_paper_options():
    ours, paper = WORKFLOW["task"]["model"]["kwargs"], PAPER_WORKFLOW["task"]["model"]["kwargs"]
    assert {k: v for k, v in paper.items() if k in ours and k not in FILE_KWARGS} == {
        k: v for k, v in ours.items() if k in paper and k not in FILE_KWARGS
    }
    assert PAPER_WORKFLOW["data_handler_config"] == WORKFLOW["data_handler_config"]
    assert PAPER_WORKFLOW["port_analysis_config"] == WORKFLOW["port_analysis_config"]


def test_port_config_and_records_from_the_yaml():
    from qlib.utils import fill_placeholder, init_instance_by_config
    from qlib.workflow.record_temp import PortAnaRecord, SigAnaRecord, SignalRecord

    port = port_config(PROFILES["cpu-quick"], "SH000300")
    assert json.dumps(port) == json.dumps(PORT_CPU_QUICK)
    model, dataset = object(), object()
    records = [
        init_instance_by_config(fill_placeholder(r, {"<MODEL>": model, "<DATASET>": dataset}), recorder=None)
        for r in record_configs(PROFILES["cpu-quick"], "SH000300")
    ]
    typed = [
        SignalRecord(model=model, dataset=dataset, recorder=None),
        SigAnaRecord(recorder=None, ana_long_short=False, ann_scaler=252),
        PortAnaRecord(recorder=None, config=PORT_CPU_QUICK, risk_analysis_freq="day"),
    ]
    assert [type(r) for r in records] == [type(r) for r in typed]
    for got, expected in zip(records, typed):
        assert vars(got) == vars(expected)  # PortAnaRecord's default risk_analysis_freq is the "day" run.py passed


def test_repo_relative():
    assert repo_relative(SHARED / "cn_csi300") == "../shared/data/cn_csi300"
    assert repo_relative(ROOT / "benchmarks" / "cache" / "x.npy") == "benchmarks/cache/x.npy"
    assert repo_relative("../shared/data/cn_csi300") == "../shared/data/cn_csi300"  # already relative
    assert repo_relative(ROOT) == "."
    text = f'Traceback:\n  File "{ROOT / "benchmarks" / "run.py"}", line 1, in run_one\n'
    assert relative_traceback(text) == 'Traceback:\n  File "benchmarks/run.py", line 1, in run_one\n'


def test_recorded_config_names_files_relative_to_the_repository():
    kwargs = recorded_config(_config("hist_legacy", SHARED / "qlib_reference" / "absent.pkl"))["kwargs"]
    assert kwargs["stock2concept"] == "benchmarks/cache/sw_legacy_2016-12-31_stock2concept.npy"
    assert kwargs["stock_index"] == "benchmarks/cache/sw_legacy_2016-12-31_stock_index.npy"


def test_committed_results_name_no_absolute_path():
    results = ROOT / "benchmarks" / "results"
    grids = [p for p in results.glob("**/runs/*.json") if p.parent.parent.name != "rolling"]  # gpu/<grid>/ too
    for path in sorted(grids):
        run = json.loads(path.read_text())
        paths = [run["provider_uri"], *(v for k, v in run["config"]["kwargs"].items() if k in FILE_KWARGS)]
        assert not any(Path(p).is_absolute() for p in paths), path.name
        assert 'File "/' not in run.get("traceback", ""), path.name
    assert "Provider: `../shared/data/cn_csi300`" in (results / "cpu-quick.md").read_text()
    for path in sorted((results / "rolling" / "runs").glob("*.json")):  # benchmarks.rolling's files
        run = json.loads(path.read_text())
        paths = [run["provider_uri"], *(v for k, v in run["model"]["kwargs"].items() if k in FILE_KWARGS)]
        assert not any(Path(p).is_absolute() for p in paths), path.name
        assert not any(isinstance(v, str) and v.startswith("/") for v in run.values()), path.name


@pytest.mark.parametrize("module", ["benchmarks.run", "benchmarks.report", "benchmarks.rolling", "benchmarks.backfill"])
def test_help_as_a_module(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert f"python -m {module}" in proc.stdout


def test_rolling_benchmark_refuses_gpu_runs_without_gpus(monkeypatch, capsys, tmp_path):
    import torch

    from benchmarks.rolling import main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SystemExit) as exit_:
        main(["--gpus-per-run", "0.5", "--cache-dir", str(tmp_path), "--provider-uri", str(tmp_path)])
    assert exit_.value.code == 2 and "--gpus-per-run 0.5: this machine has 0 GPU(s)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before the cache or a result folder


def test_the_best_rolling_row_without_its_yaml_is_refused_before_anything_runs(monkeypatch, capsys, tmp_path):
    import benchmarks.rolling as rolling

    monkeypatch.setitem(rolling.ROW_WORKFLOWS, "hist_best_warm", str(tmp_path / "gone.yaml"))
    with pytest.raises(SystemExit) as exit_:
        rolling.main(["--rows", "hist_best_warm", "--cache-dir", str(tmp_path), "--provider-uri", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--rows hist_best_warm" in err and "gone.yaml does not exist" in err
    assert not any(tmp_path.iterdir())


def _store_state(path) -> tuple[str | None, set]:
    """The alembic revision of the mlflow sqlite store at ``path`` and its table names."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as con:
        tables = {name for (name,) in con.execute("select name from sqlite_master where type='table'")}
        revision = (
            con.execute("select version_num from alembic_version").fetchone() if "alembic_version" in tables else None
        )
    return (revision[0] if revision else None), tables


def test_create_store_tables_leaves_a_fresh_store_at_mlflows_head_revision(tmp_path):
    from mlflow.store.db.utils import _get_latest_schema_revision

    from benchmarks.config import create_store_tables, sqlite_uri

    store = tmp_path / "new" / "mlruns.db"
    store.parent.mkdir()
    create_store_tables(sqlite_uri(store))
    revision, tables = _store_state(store)
    assert revision == _get_latest_schema_revision()
    assert {"experiments", "runs", "metrics"} <= tables and not any(t.startswith("_alembic_tmp") for t in tables)


def test_the_rolling_driver_migrates_its_store_before_any_task_opens_it(monkeypatch, tmp_path):
    """Tasks that each open a fresh store race alembic's table copies ("table _alembic_tmp_metrics already
    exists"): the driver must leave the store migrated before it starts them."""
    import qlib
    from mlflow.store.db.utils import _get_latest_schema_revision

    import benchmarks.rolling as rolling

    seen = {}

    def run_tasks(task, items, resources, args, concepts, on_done):
        seen["items"] = items
        seen["store"] = _store_state(tmp_path / rolling.STORE)
        return {}

    monkeypatch.chdir(tmp_path)  # main moves into its cache; put back afterwards
    monkeypatch.setattr(qlib, "init", lambda **kwargs: None)
    monkeypatch.setattr(rolling, "build_concepts", lambda *args, **kwargs: {})
    monkeypatch.setattr(rolling, "prepare_window_handlers", lambda *args: None)
    monkeypatch.setattr(rolling, "run_tasks", run_tasks)
    argv = ["--rows", "hist_cold", "--seeds", "987", "--cache-dir", str(tmp_path), "--provider-uri", str(tmp_path)]
    assert rolling.main(argv) == 0
    assert seen["items"] == [("hist_cold", 987)]
    assert seen["store"][0] == _get_latest_schema_revision()


def test_rolling_report_counts_the_epochs_of_every_window():
    from benchmarks.rolling import _epochs_cell

    warm = lambda *epochs: {"windows": [{"epochs": e} for e in epochs]}  # noqa: E731
    assert _epochs_cell([warm(8, 5, 4, 4), warm(8, 5, 4, 2)]) == "20.0"  # mean over runs of the sum over windows
    assert _epochs_cell([{"epoch_seconds": [70.0] * 8}]) == "8.0"  # the static row: its one fit's epochs
    assert _epochs_cell([warm(None, None)]) == "n/a"  # LightGBM: no epochs
    assert _epochs_cell([warm(8, 8), {"windows": [{"fit_seconds": 1.0}]}]) == "16.0"  # a file without counts


def test_the_best_rolling_row_takes_the_recipe_but_not_the_budget_of_its_yaml(tmp_path, monkeypatch):
    import benchmarks.rolling as rolling

    recipe = tmp_path / "best.yaml"
    recipe.write_text(
        "task:\n  model:\n    class: HIST\n    module_path: qlib_hist\n    kwargs:\n      loss: ic\n"
        "      lr: 2.0e-4\n      n_epochs: 20\n      early_stop: 8\n      seed: 7\n      model_path: x.pkl\n"
    )
    monkeypatch.setitem(rolling.ROW_WORKFLOWS, "hist_best_warm", str(recipe))
    args = argparse.Namespace(
        provider_uri=tmp_path, market="csi300", benchmark="SH000300", model_path=None, cache_dir=tmp_path
    )
    concepts = {"membership": "m.csv"}
    best = rolling.workflow("hist_best_warm", 3, concepts, args, tmp_path / "s.db")["task"]["model"]["kwargs"]
    warm = rolling.workflow("hist_warm", 3, concepts, args, tmp_path / "s.db")["task"]["model"]["kwargs"]
    assert (best["loss"], best["lr"], best["seed"]) == ("ic", 2.0e-4, 3)  # the recipe; the run's own seed
    assert {k: best[k] for k in ("n_epochs", "early_stop")} == {k: warm[k] for k in ("n_epochs", "early_stop")}
    assert "model_path" not in best or best["model_path"] != "x.pkl"
    assert rolling.ROWS["hist_best_warm"] == rolling.ROWS["hist_warm"]  # warm, on the same point-in-time concepts


@pytest.mark.realdata
def test_rolling_benchmark_windows(tmp_path, monkeypatch, keep_qlib_state):
    """The rolling profile's windows on the real calendar: quarters of test from 2019-01-02 to 2022-12-29, each after
    three years of train and one of valid, contiguous and disjoint, processors fitted per window (no training); the
    driver prepares exactly the handlers the windows' tasks load."""
    import types

    import pandas as pd
    import yaml

    from benchmarks.rolling import workflow
    from qlib_hist.qlib_edge.rolling import HISTRolling

    shared_file("cn_csi300/calendars/day.txt")  # what qlib and the rolling windows read
    provider = shared_file("cn_csi300")
    args = argparse.Namespace(
        provider_uri=provider,
        market="csi300",
        benchmark="SH000300",
        model_path=None,
        threads=1,
        cache_dir=tmp_path,
        step=63,
    )
    concepts = {"membership": "m.csv", "legacy": types.SimpleNamespace(stock2concept="s.npy", stock_index_npy="i.npy")}
    path = tmp_path / "rolling.yaml"
    path.write_text(yaml.safe_dump(workflow("hist_warm", 0, concepts, args, tmp_path / "mlruns.db")))
    import qlib

    qlib.init(provider_uri=str(provider), region="cn")
    tasks = HISTRolling(path, step=63).get_task_list()
    segments = [t["dataset"]["kwargs"]["segments"] for t in tasks]
    assert segments[0]["test"][0] == pd.Timestamp("2019-01-02")
    last_start, last_end = segments[-1]["test"]  # the last window runs past the calendar: open-ended (None)
    assert last_start <= pd.Timestamp("2022-12-29") and (last_end is None or last_end >= pd.Timestamp("2022-12-29"))
    assert len(tasks) == 16
    for before, after in zip(segments, segments[1:]):
        assert before["test"][1] < after["test"][0]
    for task, seg in zip(tasks, segments):
        years = (seg["train"][1] - seg["train"][0]).days / 365.25, (seg["valid"][1] - seg["valid"][0]).days / 365.25
        assert 2.9 < years[0] < 3.1 and 0.9 < years[1] < 1.05
        handler = task["dataset"]["kwargs"]["handler"]
        assert handler["class"] == "CachedHandler"
        assert (handler["kwargs"]["fit_start_time"], handler["kwargs"]["fit_end_time"]) == seg["train"]
    from benchmarks.rolling import prepare_window_handlers
    from qlib_hist.qlib_edge.handler_cache import CachedHandler

    prepared = []
    monkeypatch.setattr(CachedHandler, "prepare", lambda **kwargs: prepared.append(kwargs))
    prepare_window_handlers(("hist_cold", 1), concepts, args, tmp_path / "mlruns.db")
    assert prepared == [t["dataset"]["kwargs"]["handler"]["kwargs"] for t in tasks]  # the same cache keys


def test_the_benchmarks_config_reader_takes_qlib_style_dates(tmp_path):
    """The config reader takes a YAML in qlib's date style (unquoted dates) and names a bad date's key."""
    from test_dates import BACKTEST, DATE_STYLE_YAML, SEGMENT_TEST, _at

    from benchmarks.config import WORKFLOW, load_workflow
    from qlib_hist.config_dates import DateOutOfRange

    assert WORKFLOW["task"]["dataset"]["kwargs"]["segments"]["test"] == ["2017-01-01", "2020-08-01"]
    assert WORKFLOW["data_handler_config"]["fit_end_time"] == "2014-12-31"
    path = tmp_path / "workflow.yaml"
    path.write_text(DATE_STYLE_YAML)
    config = load_workflow(path)
    assert _at(config, *SEGMENT_TEST) == ["2017-01-01", "2020-08-01"]
    assert _at(config, *BACKTEST)["start_time"] == "2017-01-01"
    assert _at(config, "task", "model", "kwargs")["lr"] == 1e-4  # YAML 1.2, as qrun reads it
    path.write_text(DATE_STYLE_YAML.replace("test: [2017-01-01, 2020-08-01]", "test: [2017-01-01, 0001-01-01]"))
    with pytest.raises(DateOutOfRange, match=r"workflow.yaml: task.dataset.kwargs.segments.test\[1\]: 0001-01-01"):
        load_workflow(path)


def test_speed_rows_per_device_and_precision(monkeypatch, capsys):
    from benchmarks import speed

    assert speed.rows_for("cpu", ["fp32"]) == ["qlib", "ours"]
    assert speed.rows_for("cpu", ["fp32", "bf16"]) == ["qlib", "ours", "ours_bf16_cpu"]
    assert speed.ROWS["ours_bf16_cpu"] == {"precision": "bf16"}  # eager: cuda_graphs is refused on a CPU
    assert "ours_bf16" in speed.rows_for("cuda", ["fp32", "bf16"])
    assert "ours_bf16_cpu" not in speed.rows_for("cuda", ["fp32", "bf16"])
    monkeypatch.setattr("qlib_hist.training.cpu_flags", lambda: {"avx2"})
    with pytest.raises(SystemExit):
        speed.main(["--precision", "fp32", "bf16"])
    assert "avx512_bf16 or amx_bf16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speed.main(["--shared", "2"])
    assert "--shared is a CUDA row" in capsys.readouterr().err


def test_the_pretrained_file_is_named_or_its_absence_said(tmp_path, monkeypatch, capsys):
    from benchmarks import run

    parser = argparse.ArgumentParser()
    present = tmp_path / "lstm.pkl"
    present.write_bytes(b"x")
    assert run.pretrained_file(str(present), parser) == present.resolve()
    assert run.pretrained_file("", parser) is None and capsys.readouterr().err == ""  # none, on purpose
    monkeypatch.setattr(run, "DEFAULT_MODEL_PATH", present)
    assert run.pretrained_file(None, parser) == present
    monkeypatch.setattr(run, "DEFAULT_MODEL_PATH", tmp_path / "absent.pkl")
    assert run.pretrained_file(None, parser) is None
    assert "WARNING: no pretrained LSTM at" in capsys.readouterr().err  # random weights, said aloud
    with pytest.raises(SystemExit):
        run.pretrained_file(str(tmp_path / "typo.pkl"), parser)
    assert "--model-path" in (err := capsys.readouterr().err) and "typo.pkl: no such file" in err

"""``benchmarks.backfill``: a run file that lacks ``daily_rank_ic`` gets it from a refit stopped at the file's best
epoch, only when the refit gives back the file's own figures; a file it does not reproduce is left as it was.

A tiny HIST (GRU base, hidden size 8) is run once as the grid runner runs it (:func:`benchmarks.run.run_one`) on
the demo market; its file, with the series removed, is what a file made before the series was recorded looks like.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.backfill import SERIES, backtest_differences, differences
from benchmarks.backfill import main as backfill_main
from benchmarks.grid import load_grid
from benchmarks.run import (
    _WORKER_DATASETS,
    ROWS,
    add_data_arguments,
    grid_context,
    prepare_store,
    run_one,
    worker_dataset,
)

from conftest import qlib_state_kept, tiny_grid

pytestmark = pytest.mark.slow

GRID_ROWS = """
models: [hist_pit]
seeds: [0]
variants:
  small: {hidden_size: 8, num_layers: 1, base_model: GRU, GPU: -1, lr: 0.02}
"""


@pytest.fixture(scope="module")
def recorded(demo, tmp_path_factory):
    """The grid file, the data options, the run file's path and the file as the runner wrote it."""
    import argparse

    root = tmp_path_factory.mktemp("backfill")
    grid_file = root / "tiny.yaml"
    # early stop: the run ends 2 epochs after its best, so the refit to the best epoch stops before it did, on any
    # CPU (how long the valid score rises depends on the CPU's kernels: all 6 epochs of a 6-epoch run on an AVX-512
    # EPYC, fewer on an AVX2 Xeon)
    grid_file.write_text(tiny_grid(demo.start, 16, GRID_ROWS, early_stop=2))
    options = [
        *("--provider-uri", str(demo.provider_uri), "--market", demo.market, "--benchmark", demo.benchmark),
        *("--membership", str(demo.membership), "--model-path", "", "--cache-dir", str(root / "cache")),
        *("--results-dir", str(root / "results")),
    ]
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    grid = load_grid(grid_file, list(ROWS))
    runs_dir = root / "results" / "tiny" / "runs"
    runs_dir.mkdir(parents=True)
    (key,) = grid.runs()
    with qlib_state_kept():
        ctx = grid_context(parser.parse_args(options), grid, runs_dir, parser)
        dataset = worker_dataset(ctx)
        prepare_store(ctx.tracking_uri, ctx.experiment, root / "cache" / "mlruns")
        run = json.loads(json.dumps(run_one(key, dataset, ctx), default=str))
    assert "metrics" in run, run.get("error")
    return {"grid": str(grid_file), "options": options, "path": runs_dir / key.file_name, "run": run}


def _backfill(recorded: dict, file: dict, *extra: str) -> int:
    recorded["path"].write_text(json.dumps(file, indent=1))
    _WORKER_DATASETS.clear()  # loaded under a qlib state that qlib_state_kept has since undone
    with qlib_state_kept():
        return backfill_main(["--grid", recorded["grid"], "--row", "hist_pit+small", *recorded["options"], *extra])


def test_the_refit_to_the_best_epoch_adds_the_series_of_the_files_own_fit(recorded):
    run = recorded["run"]
    assert run["best_epoch"] < len(run["valid_scores"]) - 1, "the refit must stop before the run did"
    older = {k: v for k, v in run.items() if k != SERIES}  # a file made before the series was recorded
    assert _backfill(recorded, older, "--seeds", "0") == 0
    now = json.loads(recorded["path"].read_text())
    assert now[SERIES] == run[SERIES]  # what the full run recorded, every day, exactly
    assert {k: v for k, v in now.items() if k not in (SERIES, "backfilled")} == older
    assert f"refit for {run['best_epoch'] + 1} epochs" in now["backfilled"][SERIES]
    assert _backfill(recorded, now, "--seeds", "0") == 0  # has it already: nothing to do
    assert json.loads(recorded["path"].read_text()) == now


def test_a_file_the_refit_does_not_reproduce_is_left_as_it_was(recorded, capsys):
    run = recorded["run"]
    older = {k: v for k, v in run.items() if k != SERIES}
    other = {**older, "metrics": {**older["metrics"], "IC": older["metrics"]["IC"] + 1e-12}}
    assert _backfill(recorded, other, "--seeds", "0") == 1
    assert json.loads(recorded["path"].read_text()) == other
    assert "NOT written, the refit is not this file's fit: signal metrics differ: IC" in capsys.readouterr().out


def test_a_backtest_that_differs_is_noted_not_refused_and_a_finished_refit_is_read_back_from_its_recorder(recorded):
    """The backtest also depends on its environment: the series is added, and the note says the backtest gave
    other figures, the file keeping its own. ``--from-recorder`` then reads the last refit back without fitting."""
    run = recorded["run"]
    older = {k: v for k, v in run.items() if k != SERIES}
    day = next(iter(older["daily_excess"]))
    other = {**older, "daily_excess": {**older["daily_excess"], day: 1.0}}
    other["metrics"] = {**other["metrics"], "Max Drawdown": -0.5}
    assert _backfill(recorded, other, "--seeds", "0") == 0
    now = json.loads(recorded["path"].read_text())
    assert now[SERIES] == run[SERIES] and now["daily_excess"][day] == 1.0  # the file keeps its own backtest
    note, days = now["backfilled"][SERIES], len(run["daily_excess"])
    assert "other figures than this file's (up to " in note and f"; 1 of {days} days from {day}): the file" in note
    rounding = {**other["daily_excess"], day: 1.0 + 1e-15}  # the last digits of a sum: rounding, not a backtest
    assert backtest_differences(other, {**other, "daily_excess": rounding}) == (
        f"the backtest on its predictions gave this file's figures up to rounding (at most 1.1e-15; 1 of {days} "
        f"days from {day})"
    )
    assert _backfill(recorded, older, "--seeds", "0", "--from-recorder") == 0
    read_back = json.loads(recorded["path"].read_text())
    assert read_back[SERIES] == run[SERIES] and "read back from its recorder" in read_back["backfilled"][SERIES]
    assert "gave this file's figures" in read_back["backfilled"][SERIES]


def test_what_cannot_be_backfilled_is_refused_before_any_fit(recorded, capsys):
    older = {k: v for k, v in recorded["run"].items() if k not in (SERIES, "best_epoch")}
    with pytest.raises(SystemExit) as stop:
        _backfill(recorded, older, "--seeds", "0")
    assert stop.value.code == 2 and "records no best_epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _backfill(recorded, older, "--seeds", "3")
    assert "hist_pit+small_seed3.json: cannot be read as a run file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _backfill(recorded, {**older, "best_epoch": [2, 3]}, "--seeds", "0")
    assert "an ensemble's members stop apart" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the options must rebuild the run the file records, before any fit
        complete = {k: v for k, v in recorded["run"].items() if k != SERIES}
        _backfill(recorded, complete, "--seeds", "0", "--model-path", __file__)
    assert "model_path: file None, now 'test_backfill.py'" in capsys.readouterr().err


def test_differences_name_the_first_epoch_and_the_fields_that_differ():
    nan = float("nan")  # a day with no IC: NaN in the file and in the refit is the same day
    file = {"valid_scores": [0.1, 0.2, 0.3], "best_epoch": 1, "metrics": {"IC": 0.1}, "daily_ic": {"d": 0.1, "e": nan}}
    same = json.loads(json.dumps({**file, "valid_scores": [0.1, 0.2]}))
    assert differences(file, same) == []  # the epochs trained agree; NaN == NaN here
    refit = {**file, "valid_scores": [0.1, 0.25], "daily_ic": {"d": 0.2, "e": nan}}
    assert differences(file, refit) == ["valid scores differ from epoch 1", "daily IC differs on 1 of 2 days from d"]
    assert differences(file, {k: v for k, v in same.items() if k != "valid_scores"}) == []  # read back: no scores
    full = {**file, "valid_scores": [0.1, 0.2, 0.3]}  # n_epochs not cut to the best epoch: not what was asked
    assert differences(file, full) == ["the refit trained 3 epochs, not the 2 up to the file's best"]

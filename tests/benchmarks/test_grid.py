"""Benchmark grid files (``benchmarks.grid``) and the report's rows per variant; no Ray, no training."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.config import PAPER_OPTIONS, PROFILES
from benchmarks.grid import DEFAULT, GridError, RunKey, load_grid, make_grid
from benchmarks.paths import ROOT
from benchmarks.report import fit_seconds, hosts_line, label, row_of, rows_in_order, summary_table
from benchmarks.run import ROWS

ABLATION = ROOT / "benchmarks" / "grids" / "ablation.yaml"


def write(tmp_path, text: str):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_run_keys_name_rows_and_files():
    assert RunKey("hist_pit", DEFAULT, 0).file_name == "hist_pit_seed0.json"  # the files of the plain command line
    assert RunKey("hist_pit", "hidden_topk", 2).row == "hist_pit+hidden_topk"
    assert RunKey("hist_pit", "hidden_topk", 2).file_name == "hist_pit+hidden_topk_seed2.json"


def test_command_line_grid_is_models_by_seeds_seed_major():
    grid = make_grid("cpu-quick", "cpu-quick", ["hist_pit", "lstm"], [0, 1], list(ROWS))
    assert grid.profile == PROFILES["cpu-quick"] and grid.profile is not PROFILES["cpu-quick"]
    assert [(k.model, k.seed) for k in grid.runs()] == [("hist_pit", 0), ("lstm", 0), ("hist_pit", 1), ("lstm", 1)]
    assert {k.variant for k in grid.runs()} == {DEFAULT}


def test_ablation_grid_is_the_issues_design():
    grid = load_grid(ABLATION, list(ROWS))
    assert grid.name == "ablation" and grid.models == ["hist_pit"] and grid.seeds == [0, 1, 2]
    assert (grid.profile["n_epochs"], grid.profile["early_stop"]) == (20, 5)
    assert {k: v for k, v in grid.profile.items() if k not in ("n_epochs", "early_stop")} == {
        k: v for k, v in PROFILES["cpu-quick"].items() if k not in ("n_epochs", "early_stop")
    }
    assert grid.variants[DEFAULT] == {} and grid.variants["all_five"] == PAPER_OPTIONS
    singles = {name: kwargs for name, kwargs in grid.variants.items() if name not in (DEFAULT, "all_five")}
    assert singles == {name: {name: value} for name, value in PAPER_OPTIONS.items()}  # each option alone
    assert len(grid.runs()) == 21


def test_device_slice_is_a_subset_of_the_ablation_grid():
    """The GPU slice writes its results and checkpoints where the full grid's runs would: same name, profile and
    settings, its runs a subset of the grid's."""
    full = load_grid(ABLATION, list(ROWS))
    part = load_grid(ROOT / "benchmarks" / "device" / "ablation_seeds12.yaml", list(ROWS))
    assert (part.name, part.profile, part.models) == (full.name, full.profile, full.models)
    assert all(full.variants[name] == kwargs for name, kwargs in part.variants.items())
    assert set(part.runs()) < set(full.runs()) and len(part.runs()) == 8


def test_device_qlib_segments_slice_is_the_capped_grids_best_row():
    """The GPU slice of qlib's segments (ours best, seeds 1-4) writes where the capped grid's runs would: same name,
    profile and settings, the same recipe for its one row, and only seeds the full grid does not already run."""
    full = load_grid(ROOT / "benchmarks" / "grids" / "qlib_segments.yaml", list(ROWS))
    part = load_grid(ROOT / "benchmarks" / "device" / "qlib_segments_best_seeds1to4.yaml", list(ROWS))
    assert (part.name, part.profile) == (full.name, full.profile)
    assert part.variants == {"best": full.variants["best"]}
    assert {key.row for key in part.runs()} == {"hist_pit+best"} and part.seeds == [1, 2, 3, 4]
    assert not {key.seed for key in part.runs()} & {key.seed for key in full.runs()}


def _has_commit(rev: str) -> bool:
    probe = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_commit("eabbb7d"), reason="a checkout without the history of the claim-file runner")
def test_runner_cost_slice_runs_the_ablation_default_on_both_runners(tmp_path):
    """benchmarks/runner_cost.sh: its grid is the ablation's default variant with fewer epochs, and the old runner it
    rebuilds from git gets both edits and starts (``--help``) on today's benchmarks package."""
    script = ROOT / "benchmarks" / "runner_cost.sh"
    env = {**os.environ, "WORK": str(tmp_path)}
    subprocess.run(["bash", str(script), "prepare", "3"], cwd=ROOT, env=env, check=True)
    full, part = load_grid(ABLATION, list(ROWS)), load_grid(tmp_path / "grid.yaml", list(ROWS))
    assert part.profile == {**full.profile, "n_epochs": 3, "early_stop": 3}
    assert part.models == full.models and part.variants == {DEFAULT: full.variants[DEFAULT]} == {DEFAULT: {}}
    assert [key.seed for key in part.runs()] == [0, 1]
    claims = (tmp_path / "run_claims.py").read_text()
    assert "n_epochs=3, early_stop=3" in claims and 'sqlite_uri(cache / f"mlruns_' in claims
    assert "def claim(path: Path)" in claims  # it is the claim-file runner
    shown = subprocess.run(
        [sys.executable, str(tmp_path / "run_claims.py"), "--help"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and "--models" in shown.stdout, shown.stderr[-2000:]
    wrong = subprocess.run(["bash", str(script), "slurm"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "must be ray, claims or prepare, got 'slurm'" in wrong.stderr


def test_settings_change_the_profile(tmp_path):
    path = write(
        tmp_path,
        "name: small\nmodels: [lightgbm]\nseeds: [3]\nsettings:\n  n_epochs: 2\n  fit: [2016-01-04, 2016-06-30]\n"
        "  segments: {train: [2016-01-04, 2016-06-30], valid: [2016-07-01, 2016-08-31],\n"
        "             test: [2016-09-01, 2016-09-30]}\n",
    )
    grid = load_grid(path, list(ROWS))
    assert grid.profile["n_epochs"] == 2 and grid.profile["fit"] == ("2016-01-04", "2016-06-30")
    assert grid.profile["segments"]["test"] == ("2016-09-01", "2016-09-30")  # YAML dates as strings
    assert grid.profile_name == "cpu-quick" and PROFILES["cpu-quick"]["n_epochs"] == 8  # the profile is untouched


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: a\nmodels: [hist_pit]\nseeds: [0]\nepochs: 3\n", "unknown key(s) ['epochs']"),
        ("models: [hist_pit]\nseeds: [0]\n", "missing ['name']"),
        ("name: a b\nmodels: [hist_pit]\nseeds: [0]\n", "name 'a b' is not a name"),
        ("name: a\nmodels: [hist_pi]\nseeds: [0]\n", "models: 'hist_pi' is not a benchmark row"),
        ("name: a\nmodels: []\nseeds: [0]\n", "models must be a non-empty list"),
        ("name: a\nmodels: [hist_pit]\nseeds: [0, '1']\n", "seeds must be a non-empty list of integers"),
        ("name: a\nmodels: [hist_pit]\nseeds: [0, 0]\n", "seeds lists a seed twice"),
        ("name: a\nprofile: gpu\nmodels: [hist_pit]\nseeds: [0]\n", "profile 'gpu' is not one of"),
        ("name: a\nmodels: [hist_pit]\nseeds: [0]\nsettings: {epochs: 3}\n", "settings.epochs is not a profile"),
        ("name: a\nmodels: [hist_pit]\nseeds: [0]\nsettings: {n_epochs: 0}\n", "settings.n_epochs must be a positive"),
        (
            "name: a\nmodels: [hist_pit]\nseeds: [0]\nsettings: {segments: {train: [a, b]}}\n",
            "train[0]: expected a date",
        ),
        (
            "name: a\nmodels: [hist_pit]\nseeds: [0]\nsettings: {segments: {train: [2016-01-04, 2016-06-30]}}\n",
            "train, valid and test",
        ),
        ("name: a\nmodels: [hist_pit]\nseeds: [0]\nsettings: {fit: [2016-01-04]}\n", "settings.fit must be [start"),
        ("name: a\nmodels: [hist_pit]\nseeds: [0]\nvariants: {a+b: {}}\n", "variants entry 'a+b' is not a name"),
        ("name: a\nmodels: [hist_pit]\nseeds: [0]\nvariants: {x: 3}\n", "variants.x must be a mapping"),
        ("name: a\nmodels: [hist_pit]\nseeds: [0]\nvariants: {x: {seed: 1}}\n", "variants.x sets seed"),
        ("- name\n", "must be a mapping"),
        ("name: [a\n", "is not YAML"),
    ],
)
def test_bad_grid_files_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(path, list(ROWS))
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_grid_file(tmp_path):
    with pytest.raises(GridError, match="does not exist"):
        load_grid(tmp_path / "nope.yaml", list(ROWS))


def test_bad_grid_on_the_command_line_is_a_usage_error(tmp_path, capsys):
    from benchmarks.run import main

    with pytest.raises(SystemExit) as exit_:
        main(
            ["--grid", str(write(tmp_path, "name: a\nmodels: [hist_pi]\nseeds: [0]\n")), "--results-dir", str(tmp_path)]
        )
    assert exit_.value.code == 2 and "'hist_pi' is not a benchmark row" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written


def _run(model: str, variant: str, seed: int, ic: float, valid: float) -> dict:
    return {
        "model": model,
        "variant": variant,
        "seed": seed,
        "metrics": {"IC": ic},
        "valid_score": valid,
        "best_epoch": seed,
        "fit_seconds": 10.0 * (seed + 1),  # this attempt's: less than the epochs' sum when resumed
        "epoch_seconds": [1.0, 3.0 + 2 * seed],
    }


def test_report_rows_per_variant():
    runs = [
        _run("hist_pit", "hidden_topk", 0, 0.02, 0.05),
        _run("lstm", DEFAULT, 0, 0.01, 0.03),
        _run("hist_pit", DEFAULT, 0, 0.03, 0.04),
        _run("hist_pit", DEFAULT, 1, 0.05, 0.06),
    ]
    assert [row_of(r) for r in runs] == ["hist_pit+hidden_topk", "lstm", "hist_pit", "hist_pit"]
    assert rows_in_order(runs) == ["hist_pit+hidden_topk", "hist_pit", "lstm"]  # LABELS order, then first seen
    assert label("hist_pit+hidden_topk") == "HIST (qlib_hist, point-in-time SW concepts), hidden_topk"
    assert row_of({"model": "gru", "seed": 0}) == "gru"  # result files from before grids have no variant
    table = summary_table(runs).splitlines()
    assert table[0].startswith("| Model | Seeds | Valid (best epoch) | Best epoch | Fit s | IC |")
    default = next(
        line for line in table if line.startswith("| HIST (qlib_hist, point-in-time SW concepts), default |")
    )
    assert "| 0, 1 | 0.0500 ± 0.0100 | 0.5 ± 0.5 | 5 | 0.0400 ± 0.0100 |" in default  # fit: mean of 4 and 6
    lightgbm = {"model": "lightgbm", "seed": 0, "metrics": {"IC": 0.01}, "fit_seconds": 7.0}
    assert fit_seconds(lightgbm) == 7.0 and fit_seconds(runs[3]) == 6.0


def test_report_shows_the_fits_of_ensemble_and_seed_average_rows():
    single = _run("hist_pit", DEFAULT, 0, 0.03, 0.04)
    assert "Fits" not in summary_table([single]).splitlines()[0]  # a table of single fits has no such column
    ensemble = {**_run("hist_pit", "best_x5", 0, 0.04, 0.05), "config": {"kwargs": {"ensemble": 5}}}
    ensemble["best_epoch"] = [1, 2, 3, 4, 5]  # one per member: the table shows their mean
    average = {**_run("qlib_hist_patched", "avg5", 0, 0.02, 0.03), "fits": 5}
    table = summary_table([single, ensemble, average]).splitlines()
    assert table[0].startswith("| Model | Seeds | Fits | Valid (best epoch) | Best epoch |")
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[2:5] for line in table[2:]}
    assert cells["HIST (qlib_hist, point-in-time SW concepts), default"] == ["1", "0.0400 ± 0.0000", "0.0 ± 0.0"]
    assert cells["HIST (qlib_hist, point-in-time SW concepts), best_x5"] == ["5", "0.0500 ± 0.0000", "3.0 ± 1.4"]
    assert next(v for k, v in cells.items() if "avg5" in k)[0] == "5"


def test_report_names_every_host_of_a_mixed_grid():
    cpu, gpu = {"host": "x86_64 2 cores", "device": "cpu"}, {"host": "x86_64 16 cores", "device": "NVIDIA H200"}
    assert hosts_line([cpu, cpu]) == "host: x86_64 2 cores"
    assert hosts_line([gpu, cpu, gpu]) == "hosts: x86_64 16 cores, NVIDIA H200 (2 runs); x86_64 2 cores (1 run)"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--cpus", "0"], "--cpus must be at least 1, got 0"),
        (["--gpus-per-run", "-1"], "--gpus-per-run must be at least 0, got -1.0"),
        (["--max-retries", "-1"], "--max-retries must be at least 0, got -1"),
        (["--provider-uri", "no-such-provider"], "--provider-uri no-such-provider: not a qlib provider"),
        (["--membership", "no-such.csv"], "--membership no-such.csv: no such file"),
    ],
)
def test_bad_command_line_numbers_and_paths(tmp_path, capsys, extra, message):
    from benchmarks.run import main

    provider = tmp_path / "provider"
    (provider / "calendars").mkdir(parents=True)
    args = ["--models", "lightgbm", "--seeds", "0", "--provider-uri", str(provider), "--results-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main(args + extra)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cpu-quick").exists()


def test_gpu_runs_on_a_local_ray_need_the_gpus_here(tmp_path, capsys, monkeypatch):
    """A local Ray holds a task that asks for more GPUs than the machine has as infeasible, for ever: the command
    line says so before anything runs; a fraction of one GPU fits where there is one, and a cluster is not checked."""
    import torch

    from benchmarks.cluster import Resources, check_local_gpus
    from benchmarks.run import main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    provider = tmp_path / "provider"
    (provider / "calendars").mkdir(parents=True)
    args = ["--models", "hist_pit", "--seeds", "0", "--provider-uri", str(provider), "--results-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main(args + ["--gpus-per-run", "1"])
    assert exit_.value.code == 2
    assert "--gpus-per-run 1: this machine has 0 GPU(s) that torch can use" in capsys.readouterr().err
    check_local_gpus(Resources(address="auto", gpus_per_task=1))  # the cluster's nodes may hold them
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_local_gpus(Resources(gpus_per_task=0.25))  # four runs share the one GPU
    with pytest.raises(ValueError, match="--gpus-per-run 2: this machine has 1 GPU"):
        check_local_gpus(Resources(gpus_per_task=2))


def test_concepts_of_hist_rows_need_a_table(tmp_path):
    from benchmarks.config import PROFILES
    from benchmarks.run import build_concepts

    with pytest.raises(GridError, match="--sw-csv or --membership"):
        build_concepts(PROFILES["cpu-quick"], tmp_path, "csi300", tmp_path, ["hist_pit"], sw_csv=None)
    assert not any(tmp_path.iterdir())


def test_ray_workers_start_qlib_without_forking(monkeypatch, tmp_path):
    """qlib forks its expression readers when ``kernels`` > 1; in a Ray worker (a process full of Ray's threads)
    such a fork can hang for ever, and did in a backtest here: workers ask for one kernel."""
    import qlib

    from benchmarks.run import GridContext, worker_dataset

    class Stop(Exception):
        pass

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(qlib, "init", fake_init)
    grid = make_grid("g", "cpu-quick", ["lightgbm"], [0], list(ROWS))
    ctx = GridContext(grid, str(tmp_path), "csi300", "SH000300", *[str(tmp_path)] * 3, "sqlite://", {}, None, 1)
    with pytest.raises(Stop):
        worker_dataset(ctx)
    assert seen["kernels"] == 1 and seen["provider_uri"] == str(tmp_path)


def test_a_run_file_made_with_other_settings_stops_the_grid_before_it_runs(tmp_path, capsys):
    """A result file is never rerun, so a row edited after its runs (a new variant setting, other dates) would keep
    the old results under the new row: ``benchmarks.run`` names each such file and what changed, and runs nothing."""
    import json

    from benchmarks.run import main, stale_runs

    text = "name: g\nprofile: cpu-quick\nmodels: [hist_pit]\nseeds: [0, 1]\nvariants:\n  topk: {hidden_topk: 3}\n"
    grid_file = write(tmp_path, text)
    results = tmp_path / "results"
    runs = results / "g" / "runs"
    runs.mkdir(parents=True)
    grid = load_grid(grid_file, list(ROWS))
    for key in grid.runs():  # as run_one writes them (0.8.2 on); seed 1's file from before profile_settings
        stored = {"settings": grid.variants[key.variant], "seed": key.seed}
        if key.seed == 0:
            stored["profile_settings"] = grid.profile
        (runs / key.file_name).write_text(json.dumps(stored))
    (tmp_path / "provider" / "calendars").mkdir(parents=True)  # enough for the argument checks
    command = ["--grid", str(grid_file), "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache")]
    command += ["--provider-uri", str(tmp_path / "provider")]
    assert stale_runs(grid, runs, grid.runs()) == []
    assert main(command) == 0  # every run done: nothing submitted

    write(tmp_path, text.replace("hidden_topk: 3", "hidden_topk: 5"))
    with pytest.raises(SystemExit) as exit_:
        main(command)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "2 run file(s)" in err
    assert "hist_pit+topk_seed0.json: hidden_topk 3 -> 5" in err and "new variant name" in err

    write(tmp_path, text + "settings:\n  n_epochs: 3\n")  # the profile's epochs: only seed 0's file records them
    grid = load_grid(grid_file, list(ROWS))
    assert stale_runs(grid, runs, grid.runs()) == [
        f"hist_pit+topk_seed0.json: n_epochs {PROFILES['cpu-quick']['n_epochs']} -> 3"
    ]
    assert not (tmp_path / "cache").exists()  # refused before anything was made

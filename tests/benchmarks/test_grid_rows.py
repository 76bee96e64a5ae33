"""Grids whose variants run on some models only, variants read from a qrun YAML, rows borrowed from another grid,
the qlib-bench profile, and a stale checkpoint that must not become a result; no Ray, no training."""

from __future__ import annotations

import json

import pytest

from benchmarks.config import FILE_KWARGS, MODEL_KWARGS, PROFILES
from benchmarks.grid import DEFAULT, GridError, RunKey, load_grid
from benchmarks.paths import ROOT
from benchmarks.report import borrow
from benchmarks.report import main as report_main
from benchmarks.run import ROWS, fit_model
from qlib_hist.callbacks import CheckpointError

MODULES = ROOT / "benchmarks" / "grids" / "modules.yaml"


def write(tmp_path, text: str, name: str = "grid.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_variant_models_limit_a_variant_to_its_models(tmp_path):
    grid = load_grid(
        write(
            tmp_path,
            "name: g\nmodels: [qlib_hist_patched, hist_pit]\nseeds: [0, 1]\n"
            "variants: {default: {}, best: {lr: 0.001}}\nvariant_models: {best: [hist_pit]}\n",
        ),
        list(ROWS),
    )
    assert grid.runs() == [
        RunKey("qlib_hist_patched", DEFAULT, 0),
        RunKey("hist_pit", DEFAULT, 0),
        RunKey("hist_pit", "best", 0),
        RunKey("qlib_hist_patched", DEFAULT, 1),
        RunKey("hist_pit", DEFAULT, 1),
        RunKey("hist_pit", "best", 1),
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("variant_models: [best]\n", "variant_models must be a mapping"),
        ("variant_models: {worst: [hist_pit]}\n", "variant_models.worst is not a variant"),
        ("variant_models: {best: [lstm]}\n", "variant_models.best: 'lstm' is not in models"),
        ("variant_models: {best: []}\n", "variant_models.best must be a non-empty list"),
    ],
)
def test_bad_variant_models_name_the_key(tmp_path, extra, message):
    path = write(tmp_path, "name: g\nmodels: [hist_pit]\nseeds: [0]\nvariants: {best: {lr: 0.001}}\n" + extra)
    with pytest.raises(GridError) as err:
        load_grid(path, list(ROWS))
    assert message in str(err.value) and str(path) in str(err.value)


def test_row_seeds_give_only_the_averaged_rows_their_extra_members(tmp_path):
    text = (
        "name: g\nmodels: [qlib_hist_patched, hist_pit]\nseeds: [0, 1]\n"
        "variants: {default: {}, best: {lr: 0.001}}\nvariant_models: {best: [hist_pit]}\n"
        "row_seeds: {hist_pit+best: [0, 1, 2, 3], qlib_hist_patched: [1, 2]}\n"
    )
    grid = load_grid(write(tmp_path, text), list(ROWS))
    assert [(key.row, key.seed) for key in grid.runs()] == [
        ("hist_pit", 0),
        ("hist_pit+best", 0),
        ("qlib_hist_patched", 1),
        ("hist_pit", 1),
        ("hist_pit+best", 1),
        ("qlib_hist_patched", 2),  # the seeds beyond the grid's come last, seed-major too
        ("hist_pit+best", 2),
        ("hist_pit+best", 3),
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("row_seeds: [0, 1]\n", "row_seeds must be a mapping"),
        ("row_seeds: {qlib_hist_patched+best: [0]}\n", "row_seeds.qlib_hist_patched+best is not a row of the grid"),
        ("row_seeds: {hist_pit+best: []}\n", "row_seeds.hist_pit+best must be a non-empty list of integers"),
        ("row_seeds: {hist_pit+best: [0, 0]}\n", "row_seeds.hist_pit+best lists a seed twice"),
    ],
)
def test_bad_row_seeds_name_the_row(tmp_path, extra, message):
    text = (
        "name: g\nmodels: [qlib_hist_patched, hist_pit]\nseeds: [0]\n"
        "variants: {default: {}, best: {lr: 0.001}}\nvariant_models: {best: [hist_pit]}\n" + extra
    )
    path = write(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(path, list(ROWS))
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_variant_from_a_workflow_yaml_takes_its_model_kwargs_but_files_and_seed(tmp_path):
    workflow = write(
        tmp_path,
        "task:\n  model:\n    class: HIST\n    module_path: qlib_hist\n    kwargs:\n      lr: 2.0e-4\n"
        "      loss: ic\n      seed: 7\n      model_path: x.pkl\n      stock2concept: y.csv\n      dropout: 0.1\n",
        "best.yaml",
    )
    text = f"name: g\nmodels: [hist_pit]\nseeds: [0]\nvariants: {{best: {{from_workflow: {workflow}, dropout: 0.2}}}}\n"
    grid = load_grid(write(tmp_path, text), list(ROWS))
    assert grid.variants["best"] == {"lr": 2.0e-4, "loss": "ic", "dropout": 0.2}  # the grid's own key wins


def test_the_repository_workflow_is_readable_as_a_variant(tmp_path):
    variants = "variants: {yaml: {from_workflow: workflow_config_hist_Alpha360.yaml}}\n"
    text = "name: g\nmodels: [hist_pit]\nseeds: [0]\n" + variants
    grid = load_grid(write(tmp_path, text), list(ROWS))
    assert grid.variants["yaml"] == {k: v for k, v in MODEL_KWARGS.items() if k not in (*FILE_KWARGS, "seed")}


@pytest.mark.parametrize(
    "target, message",
    [
        ("nope.yaml", "does not exist"),
        ("plain.yaml", "has no task.model.kwargs"),
        ("3", "must be the path of a qrun YAML"),
    ],
)
def test_bad_from_workflow_names_the_variant(tmp_path, target, message):
    write(tmp_path, "task: {dataset: {}}\n", "plain.yaml")
    if target.endswith(".yaml"):
        target = str(tmp_path / target)
    path = write(
        tmp_path, f"name: g\nmodels: [hist_pit]\nseeds: [0]\nvariants: {{best: {{from_workflow: {target}}}}}\n"
    )
    with pytest.raises(GridError) as err:
        load_grid(path, list(ROWS))
    assert message in str(err.value) and "variants.best" in str(err.value)


def test_modules_grid_is_the_issues_design_with_full_borrowed():
    grid = load_grid(MODULES, list(ROWS))
    assert grid.models == ["hist_pit"] and grid.seeds == [0, 1, 2]
    assert (grid.profile["n_epochs"], grid.profile["early_stop"]) == (20, 5)  # the paper-options ablation's budget
    off = {"predefined_concepts": False, "hidden_concepts": False, "individual": False}
    assert grid.variants["pretrained_as_is"] == {**off, "n_epochs": 0}
    assert grid.variants["lstm_finetune"] == off
    assert grid.variants["base_rnn"] == {"predefined_concepts": False, "hidden_concepts": False}
    assert {name: grid.variants[name] for name in ("no_predefined", "no_hidden", "no_individual")} == {
        "no_predefined": {"predefined_concepts": False},
        "no_hidden": {"hidden_concepts": False},
        "no_individual": {"individual": False},
    }
    assert "full" not in grid.variants and len(grid.runs()) == 18  # full HIST is the ablation's default, borrowed
    ablation = load_grid(ROOT / "benchmarks" / "grids" / "ablation.yaml", list(ROWS))
    assert ablation.profile == grid.profile and ablation.variants[DEFAULT] == {}


def test_qlib_bench_profile_is_qlibs_segments_on_this_data():
    profile = PROFILES["qlib-bench"]
    assert profile["segments"] == {
        "train": ("2010-01-01", "2014-12-31"),
        "valid": ("2015-01-01", "2016-12-31"),
        "test": ("2017-01-01", "2020-08-01"),
    }
    assert profile["fit"] == profile["segments"]["train"] and profile["legacy_as_of"] == "2014-12-31"
    assert (profile["n_epochs"], profile["early_stop"]) == (MODEL_KWARGS["n_epochs"], MODEL_KWARGS["early_stop"])


#: the profile a borrow test's runs record: the data (dates, segments) and the budget
PROFILE = {
    "start": "2010-01-01",
    "fit": ["2010-01-01", "2016-12-31"],
    "segments": {"train": ["2010-01-01", "2016-12-31"], "valid": ["2017-01-01", "2018-12-31"]},
    "n_epochs": 20,
    "early_stop": 5,
}


def _result(variant: str, settings: dict, seed: int, grid: str, **kwargs) -> dict:
    base = {"lr": 1e-4, "n_epochs": 20, "early_stop": 5, "stock2concept": "benchmarks/cache/sw.csv"}
    return {
        "profile_settings": PROFILE,
        "model": "hist_pit",
        "variant": variant,
        "settings": settings,
        "seed": seed,
        "grid": grid,
        "profile": "cpu-quick",
        "provider_uri": "../shared/data/cn_csi300",
        "config": {"class": "HIST", "module_path": "qlib_hist", "kwargs": {**base, **settings, **kwargs, "seed": seed}},
        "metrics": {"IC": 0.02 + seed / 1000},
        "fit_seconds": 60.0,
        "daily_ic": {"2019-01-02": 0.1, "2019-02-01": 0.02 * seed},
        "daily_excess": {"2019-01-02": 0.001, "2019-02-01": -0.001},
    }


def _write_runs(root, grid: str, runs: list[dict]) -> None:
    folder = root / grid / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    for run in runs:
        row = run["model"] if run["variant"] == DEFAULT else f"{run['model']}+{run['variant']}"
        (folder / f"{row}_seed{run['seed']}.json").write_text(json.dumps(run))


def test_borrowed_runs_join_as_the_named_row_when_their_settings_match(tmp_path):
    mine = [_result("no_hidden", {"hidden_concepts": False}, s, "modules") for s in (0, 1)]
    _write_runs(tmp_path, "ablation", [_result(DEFAULT, {}, s, "ablation") for s in (0, 1, 2)])
    _write_runs(tmp_path, "ablation", [_result("concept_weight", {"concept_weight": "$close"}, 0, "ablation")])
    borrowed = borrow(tmp_path, "ablation:hist_pit=hist_pit+full", mine)
    assert [(r["variant"], r["seed"], r["borrowed_from"]) for r in borrowed] == [
        ("full", s, "ablation/hist_pit") for s in (0, 1, 2)
    ]
    assert borrowed[0]["borrowed_versus"] == "hist_pit+no_hidden"
    assert (borrowed[0]["borrowed_settings"], borrowed[0]["borrowed_unset"]) == ({}, ["hidden_concepts"])


def test_a_borrowed_variant_row_brings_its_own_settings_but_not_its_own_budget(tmp_path):
    """A variant row from another grid compares its own option (the screen's choice beside the final grid's rows);
    the training budget stays every row's, unless the borrow says otherwise (qlib's HIST at its own 200 epochs)."""
    mine = [_result(DEFAULT, {}, 0, "final"), _result("best", {"lr": 2e-4}, 0, "final")]
    _write_runs(tmp_path, "screen", [_result("aux", {"lr": 2e-4, "aux_horizons": [2, 3]}, s, "screen") for s in (0, 1)])
    borrowed = borrow(tmp_path, "screen:hist_pit+aux=hist_pit+chosen", mine)
    assert [(r["variant"], r["borrowed_versus"], r["borrowed_settings"]) for r in borrowed] == [
        ("chosen", "hist_pit+best", {"aux_horizons": [2, 3]})
    ] * 2
    _write_runs(tmp_path, "long", [_result("aux", {"aux_horizons": [2], "n_epochs": 200}, 0, "long")])
    with pytest.raises(SystemExit, match=r"model kwarg n_epochs=200 differs from hist_pit's 20: the training budget"):
        borrow(tmp_path, "long:hist_pit+aux=hist_pit+chosen", mine)
    at_own = borrow(tmp_path, "long:hist_pit+aux=hist_pit+chosen", mine, own_budget=True)
    assert at_own[0]["borrowed_settings"] == {"aux_horizons": [2], "n_epochs": 200}
    _write_runs(tmp_path, "five", [_result("aux", {"aux_horizons": [2], "ensemble": 5}, 0, "five")])
    with pytest.raises(SystemExit, match=r"model kwarg ensemble=5 differs from hist_pit's None: the training budget"):
        borrow(tmp_path, "five:hist_pit+aux=hist_pit+chosen", mine)  # five fits are a budget too
    _write_runs(tmp_path, "rate", [_result("aux", {"aux_horizons": [2]}, 0, "rate", lr=5e-4)])
    with pytest.raises(SystemExit, match="model kwarg lr=0.0005 differs from hist_pit's 0.0001"):
        borrow(tmp_path, "rate:hist_pit+aux=hist_pit+chosen", mine, own_budget=True)  # not its variant's: refused


def test_a_borrowed_budget_is_every_trained_rows_even_where_the_rows_variants_set_it(tmp_path):
    """Every row of the grid sets its epochs in its variant (qlib-segments-capped's rows do): a borrowed row still
    has to match them; an untrained row (0 epochs) sets no budget."""
    mine = [
        _result("best", {"lr": 2e-4, "n_epochs": 30, "early_stop": 10}, 0, "capped"),
        _result("as_is", {"n_epochs": 0}, 0, "capped"),
    ]
    _write_runs(tmp_path, "same", [_result("aux", {"aux_horizons": [2], "n_epochs": 30, "early_stop": 10}, 0, "same")])
    assert borrow(tmp_path, "same:hist_pit+aux=hist_pit+chosen", mine)[0]["borrowed_versus"] == "hist_pit+best"
    _write_runs(tmp_path, "long", [_result("aux", {"aux_horizons": [2], "n_epochs": 200, "early_stop": 10}, 0, "long")])
    with pytest.raises(SystemExit, match=r"n_epochs=200 differs from hist_pit\+best's 30: the training budget"):
        borrow(tmp_path, "long:hist_pit+aux=hist_pit+chosen", mine)


def test_a_borrow_compares_the_data_recorded_or_read_from_the_grid_file(tmp_path):
    """Two grids of one profile name can have other dates (the ablation trains from 2014, the final grid from 2010);
    runs from before 0.8.2 record no profile, so their grid file (by name) says what data they had."""
    mine = [_result(DEFAULT, {}, 0, "final")]
    later = {**PROFILE, "fit": ["2014-01-01", "2016-12-31"]}
    _write_runs(tmp_path, "short", [{**_result(DEFAULT, {}, 1, "short"), "profile_settings": later}])
    with pytest.raises(SystemExit, match=r"the data's fit \['2014-01-01', '2016-12-31'\] differs from hist_pit's"):
        borrow(tmp_path, "short:hist_pit=hist_pit+other", mine)
    _write_runs(
        tmp_path, "longer", [{**_result(DEFAULT, {}, 1, "longer"), "profile_settings": {**PROFILE, "n_epochs": 9}}]
    )
    assert borrow(tmp_path, "longer:hist_pit=hist_pit+other", mine)  # the profile's budget is checked as kwargs
    old = [{**_result(DEFAULT, {}, 0, "final"), "profile_settings": None}]
    _write_runs(tmp_path, "screen-dev", [{**_result(DEFAULT, {}, 1, "screen-dev"), "profile_settings": None}])
    assert borrow(tmp_path, "screen-dev:hist_pit=hist_pit+other", old)  # grids/final.yaml, grids/screen_dev.yaml
    _write_runs(tmp_path, "ablation", [{**_result(DEFAULT, {}, 1, "ablation"), "profile_settings": None}])
    with pytest.raises(SystemExit, match=r"the data's fit \['2014-01-01', '2016-12-31'\] differs"):
        borrow(tmp_path, "ablation:hist_pit=hist_pit+other", old)  # grids/ablation.yaml trains from 2014
    _write_runs(tmp_path, "gone", [{**_result(DEFAULT, {}, 1, "gone"), "profile_settings": None}])
    with pytest.raises(SystemExit, match="cannot tell the data of grid 'gone'.s runs"):
        borrow(tmp_path, "gone:hist_pit=hist_pit+other", mine)


def test_two_borrows_into_one_row_cannot_give_it_a_seed_twice(tmp_path):
    mine = [_result(DEFAULT, {}, 0, "final")]
    _write_runs(tmp_path, "final", mine)
    _write_runs(tmp_path, "one", [_result(DEFAULT, {}, s, "one") for s in (1, 2)])
    _write_runs(tmp_path, "two", [_result(DEFAULT, {}, s, "two") for s in (2, 3)])
    first = borrow(tmp_path, "one:hist_pit=hist_pit+more", mine)
    with pytest.raises(SystemExit, match=r"row hist_pit\+more already has seed\(s\) 2"):
        borrow(tmp_path, "two:hist_pit=hist_pit+more", mine, borrowed=first)
    with pytest.raises(SystemExit, match=r"row hist_pit\+more already has seed\(s\) 2"):
        report_main(
            ["--grid", "final", "--results-dir", str(tmp_path), "--borrow", "one:hist_pit=hist_pit+more"]
            + ["--borrow-budget", "two:hist_pit=hist_pit+more"]
        )


def test_a_borrow_compares_file_kwargs_by_file_name(tmp_path):
    """Runs made from another folder name the same cache file by another relative path; another file is refused."""
    mine = [_result(DEFAULT, {}, 0, "final")]
    _write_runs(tmp_path, "moved", [_result(DEFAULT, {}, 1, "moved", stock2concept="../main/benchmarks/cache/sw.csv")])
    assert borrow(tmp_path, "moved:hist_pit=hist_pit+other", mine)[0]["borrowed_settings"] == {}
    _write_runs(tmp_path, "other", [_result(DEFAULT, {}, 1, "other", stock2concept="benchmarks/cache/csrc.csv")])
    with pytest.raises(SystemExit, match="model kwarg stock2concept='csrc.csv' differs from hist_pit's 'sw.csv'"):
        borrow(tmp_path, "other:hist_pit=hist_pit+other", mine)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"profile": "paper"}, "profile 'paper' differs"),
        ({"provider_uri": "elsewhere"}, "provider_uri 'elsewhere' differs"),
    ],
)
def test_borrowed_runs_of_other_data_are_refused(tmp_path, change, message):
    mine = [_result("no_hidden", {"hidden_concepts": False}, 0, "modules")]
    _write_runs(tmp_path, "ablation", [{**_result(DEFAULT, {}, 0, "ablation"), **change}])
    with pytest.raises(SystemExit, match=message):
        borrow(tmp_path, "ablation:hist_pit=hist_pit+full", mine)


def test_borrowed_runs_with_other_epochs_are_refused(tmp_path):
    mine = [_result("no_hidden", {"hidden_concepts": False}, 0, "modules")]
    _write_runs(tmp_path, "ablation", [_result(DEFAULT, {}, 0, "ablation", n_epochs=8)])
    with pytest.raises(SystemExit, match="model kwarg n_epochs=8 differs"):
        borrow(tmp_path, "ablation:hist_pit=hist_pit+full", mine)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ablation-hist_pit", "expected GRID:ROW=AS"),
        ("ablation:hist_pit", "expected GRID:ROW=AS"),
        ("ablation:gru=gru+x", "no finished run of 'gru'"),
        ("ablation:hist_pit=lstm+x", "this grid has no run of model 'hist_pit'"),
    ],
)
def test_bad_borrow_arguments_say_what_is_wrong(tmp_path, spec, message):
    _write_runs(tmp_path, "ablation", [_result(DEFAULT, {}, 0, "ablation")])
    with pytest.raises(SystemExit, match=message):
        borrow(tmp_path, spec, [_result("no_hidden", {"hidden_concepts": False}, 0, "modules")])


def test_the_report_page_says_which_rows_are_borrowed(tmp_path):
    _write_runs(tmp_path, "modules", [_result("no_hidden", {"hidden_concepts": False}, 0, "modules")])
    _write_runs(tmp_path, "ablation", [_result(DEFAULT, {}, s, "ablation") for s in (0, 1)])
    assert (
        report_main(
            ["--grid", "modules", "--results-dir", str(tmp_path), "--borrow", "ablation:hist_pit=hist_pit+full"]
        )
        == 0
    )
    page = (tmp_path / "modules.md").read_text()
    assert "| HIST (qlib_hist, point-in-time SW concepts), full | 0, 1 |" in page
    assert (
        "Row `hist_pit+full` is `ablation/hist_pit`'s runs, fitted once for both grids: the same model and data, set "
        "as `hist_pit+no_hidden` but for `hidden_concepts` unset." in page
    )
    assert not list((tmp_path / "modules" / "runs").glob("*full*"))  # borrowed, not copied


class _Stale:
    def __init__(self, **kwargs):
        pass

    def fit(self, dataset):
        raise CheckpointError("checkpoint x was written with other settings")


class _Broken(_Stale):
    def fit(self, dataset):
        raise ValueError("no concept file\nsecond line")


def test_a_crashing_model_is_a_row_but_a_stale_checkpoint_is_not():
    model, error = fit_model({"class": "_Broken", "module_path": __name__, "kwargs": {}}, None)
    assert model is None and error["error"] == "ValueError: no concept file" and "Traceback" in error["traceback"]
    with pytest.raises(CheckpointError):  # no result file: a rerun of the grid fits it again
        fit_model({"class": "_Stale", "module_path": __name__, "kwargs": {}}, None)


def test_qlib_segments_grid_is_the_issues_capped_cpu_design():
    from benchmarks.grid import workflow_kwargs

    grid = load_grid(ROOT / "benchmarks" / "grids" / "qlib_segments.yaml", list(ROWS))
    assert grid.profile_name == "qlib-bench" and grid.name.endswith("capped")  # the table says it is capped
    assert (grid.profile["n_epochs"], grid.profile["early_stop"]) == (30, 10) and grid.seeds == [0]
    assert grid.profile["segments"] == PROFILES["qlib-bench"]["segments"]
    assert [key.row for key in grid.runs()] == ["qlib_hist_patched", "hist_pit+best", "hist_pit+pretrained_as_is"]
    best = workflow_kwargs(ROOT / "benchmarks" / "grids" / "recipe_0.6.yaml", "test")  # the recipe its runs had
    assert grid.variants["best"] == {**best, "n_epochs": 30, "early_stop": 10}  # the recipe on the grid's budget
    off = {"predefined_concepts": False, "hidden_concepts": False, "individual": False}
    assert grid.variants["pretrained_as_is"] == {**off, "n_epochs": 0}


def test_the_untrained_file_is_not_labelled_as_a_hist():
    from benchmarks.report import label

    assert label("hist_pit+pretrained_as_is").startswith("qlib's pretrained LSTM file, untrained")
    assert label("hist_pit+no_hidden") == "HIST (qlib_hist, point-in-time SW concepts), no_hidden"


def test_a_row_without_valid_scores_shows_na_not_nan():
    from benchmarks.report import summary_table

    untrained = {**_result("pretrained_as_is", {"n_epochs": 0}, 0, "modules"), "valid_score": None}
    trained = {**_result("no_hidden", {"hidden_concepts": False}, 0, "modules"), "valid_score": 0.07, "best_epoch": 3}
    line = next(row for row in summary_table([untrained, trained]).splitlines() if "untrained" in row)
    assert "| 0 | n/a | n/a |" in line and "nan" not in line


def test_final_grid_gives_every_row_the_same_data_and_budget_and_the_averaged_rows_nine_seeds():
    """The issue's final table: ours best is the recipe the shipped YAML held when its runs were made (its budget
    equal to the grid's, so no row trains longer), and the two 5-fit rows' members are seeds 0-8 of their single
    rows."""
    from benchmarks.grid import workflow_kwargs

    path = ROOT / "benchmarks" / "grids" / "final.yaml"
    best_yaml = ROOT / "benchmarks" / "grids" / "recipe_0.6.yaml"
    grid = load_grid(path, list(ROWS))
    assert grid.name == "final" and grid.profile_name == "cpu-quick" and grid.seeds == [0, 1, 2, 3, 4]
    assert grid.profile["segments"]["test"] == PROFILES["cpu-quick"]["segments"]["test"]
    assert grid.profile["segments"]["train"][0] == grid.profile["fit"][0] == "2010-01-01"  # the chosen train start
    best = grid.variants["best"]
    assert best == workflow_kwargs(best_yaml, "test")
    assert (best["n_epochs"], best["early_stop"]) == (grid.profile["n_epochs"], grid.profile["early_stop"])
    rows = {key.row for key in grid.runs()}
    assert rows == {
        "qlib_hist_patched",
        "hist_pit",
        "lstm",
        "gru",
        "lightgbm",
        "hist_pit+best",
        "hist_pit+pretrained_as_is",
    }
    seeds = {row: sorted(key.seed for key in grid.runs() if key.row == row) for row in rows}
    assert seeds["hist_pit+best"] == seeds["qlib_hist_patched"] == list(range(9))
    assert seeds["hist_pit+pretrained_as_is"] == [0]  # untrained: a seed changes nothing
    assert all(seeds[row] == list(range(5)) for row in ("hist_pit", "lstm", "gru", "lightgbm"))


def test_borrowing_into_a_row_that_has_the_seeds_is_refused_and_into_its_missing_seeds_allowed(tmp_path):
    """Two runs of one row and seed would be counted twice in the table and one would hide the other in the margins."""
    full = [_result("full", {}, s, "modules") for s in (0, 1)]
    _write_runs(tmp_path, "ablation", [_result(DEFAULT, {}, s, "ablation") for s in (1, 2)])
    with pytest.raises(SystemExit, match=r"this grid's row hist_pit\+full already has seed\(s\) 1: borrow as another"):
        borrow(tmp_path, "ablation:hist_pit=hist_pit+full", full)
    _write_runs(tmp_path, "other", [_result(DEFAULT, {}, s, "other") for s in (2, 3)])
    assert [r["seed"] for r in borrow(tmp_path, "other:hist_pit=hist_pit+full", full)] == [2, 3]

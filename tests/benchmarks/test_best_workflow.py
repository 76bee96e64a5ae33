"""``benchmarks.best_workflow``: the shipped best YAML trains what the chosen search trial trained, on qlib's
segments with the trial's train window, and is the file the committed choice writes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optuna")
pytest.importorskip("ray.tune")

from benchmarks import best_workflow as bw  # noqa: E402
from benchmarks.config import FILE_KWARGS, WORKFLOW, WORKFLOW_YAML, load_workflow  # noqa: E402
from benchmarks.search import METRIC, trial_kwargs  # noqa: E402
from qlib_hist.settings import HISTSettings  # noqa: E402

CHOICE = {
    "lr": 0.00023117093650126773,  # unrounded, as TPE proposes it
    "loss": "mse+ic",
    "weight_decay": 0.001,
    "dropout": 0.1,
    "hidden_size": 64,
    "concept_weight": True,
    "hidden_topk": 3,
    "predefined_concepts": False,
    "hidden_concepts": True,
    "individual": True,
    "train_start": "2012-01-01",
    "early_stop": 8,
    "keep_start": True,
    METRIC: 0.0781,
    "best_epoch": 0,
    "epochs": 9,
    "trial": "abc_00007",
}


def _written(tmp_path, choice):
    path = tmp_path / "best.yaml"
    path.write_text(bw.best_workflow(choice, WORKFLOW_YAML.read_text()))
    return load_workflow(path)


def _settings(kwargs):
    settings, rest = HISTSettings.from_kwargs(**{k: v for k, v in kwargs.items() if k not in (*FILE_KWARGS, "GPU")})
    assert rest == {}
    return settings.in_effect()  # the options of a switched-off module change nothing


@pytest.mark.parametrize(
    "hidden_size, has_pretrained, predefined", [(64, True, False), (128, False, False), (64, True, True)]
)
def test_the_yaml_trains_what_the_chosen_trial_trained(tmp_path, hidden_size, has_pretrained, predefined):
    choice = dict(CHOICE, hidden_size=hidden_size, predefined_concepts=predefined)
    workflow = _written(tmp_path, choice)
    kwargs = workflow["task"]["model"]["kwargs"]
    trial = trial_kwargs(choice, "membership.csv", "lstm.pkl")
    assert _settings(kwargs) == _settings(trial)  # every HIST setting, not only the searched ones
    assert ("model_path" in kwargs) is has_pretrained
    # the concept table and weights only where the predefined-concept module reads them
    assert kwargs.get("stock2concept") == ("sw_membership.csv" if predefined else None)
    assert ("concept_weight" in kwargs) is predefined
    header = "".join(line for line in (tmp_path / "best.yaml").read_text().splitlines(True) if line.startswith("#"))
    assert ("membership table" in header) is predefined and ("no concept table" in header) is not predefined
    assert workflow["task"]["model"]["module_path"] == "qlib_hist"
    warned = HISTSettings.from_kwargs(**kwargs)[0].warnings()
    assert not [w for w in warned if "has no effect" in w], warned  # no option of a switched-off module


def test_a_switched_off_hidden_module_writes_no_hidden_topk(tmp_path):
    kwargs = _written(tmp_path, dict(CHOICE, hidden_concepts=False))["task"]["model"]["kwargs"]
    assert "hidden_topk" not in kwargs and kwargs["hidden_concepts"] is False


def test_the_yaml_keeps_the_trials_train_window_on_qlibs_segments_and_the_rest_of_qlibs_benchmark(tmp_path):
    workflow = _written(tmp_path, CHOICE)  # a 2012 start is 5 years before the search's valid (2017)
    segments = workflow["task"]["dataset"]["kwargs"]["segments"]
    assert segments["train"] == ["2010-01-01", "2014-12-31"]  # 5 years before qlib's valid (2015)
    assert segments["valid"] == WORKFLOW["task"]["dataset"]["kwargs"]["segments"]["valid"]
    assert segments["test"] == WORKFLOW["task"]["dataset"]["kwargs"]["segments"]["test"]
    handler = workflow["data_handler_config"]
    assert handler["start_time"] == handler["fit_start_time"] == "2010-01-01"
    for key in ("port_analysis_config", "qlib_init", "market", "benchmark"):
        assert workflow[key] == WORKFLOW[key], key
    assert workflow["task"]["record"] == WORKFLOW["task"]["record"]
    text = bw.best_workflow(dict(CHOICE, train_start="2010-01-01"), WORKFLOW_YAML.read_text())
    assert "train: [2008-01-01, 2014-12-31]" in text and "do not edit by hand" in text  # 7 years: qlib's own


@pytest.mark.parametrize(
    "change, message",
    [
        ({"loss": "huber"}, "loss = 'huber' is not one of the searched"),
        ({"lr": 0.5}, r"lr = 0.5 is not a number in the searched \[2e-05, 0.002\]"),
        ({"lr": "1e-4"}, "lr = '1e-4' is not a number in the searched"),
        ({"keep_start": None}, "keep_start = None is not one of the searched"),
        ({"keep_start": 1}, r"keep_start = 1 is not one of the searched \[False, True\]"),  # 1 == True in Python
        ({"hidden_size": 64.0}, "hidden_size = 64.0 is not one of the searched"),
        ({"dropuot": 0.1}, "'dropuot' is not a searched setting"),
    ],
)
def test_a_choice_outside_the_space_is_refused_by_name(change, message):
    with pytest.raises(bw.ChoiceError, match=message):
        bw.best_workflow(dict(CHOICE, **change), WORKFLOW_YAML.read_text(), source="c.json")


def test_the_command_refuses_a_choice_without_a_setting_and_writes_nothing(tmp_path, capsys):
    choice = {k: v for k, v in CHOICE.items() if k != "individual"}
    (tmp_path / "c.json").write_text(json.dumps(choice))
    with pytest.raises(SystemExit) as exit_:
        bw.main(["--choice", str(tmp_path / "c.json"), "--out", str(tmp_path / "best.yaml")])
    assert exit_.value.code == 2 and "c.json: 'individual' is missing" in capsys.readouterr().err
    assert not (tmp_path / "best.yaml").exists()
    (tmp_path / "c.json").write_text(json.dumps(CHOICE))
    assert bw.main(["--choice", str(tmp_path / "c.json"), "--out", str(tmp_path / "best.yaml")]) == 0
    assert load_workflow(tmp_path / "best.yaml")["task"]["model"]["kwargs"]["early_stop"] == 8


@pytest.mark.parametrize("lr", [0.00023117093650126773, 2e-05, 3e-05, 0.002, 1.5e-04])
def test_lr_is_written_unrounded_and_read_back_as_the_same_float(tmp_path, lr):
    """Rounding would ship another lr than the trial's; PyYAML (YAML 1.1) reads ``3e-05`` as a string."""
    import yaml

    kwargs = _written(tmp_path, dict(CHOICE, lr=lr))["task"]["model"]["kwargs"]  # ruamel, as qrun reads it
    assert type(kwargs["lr"]) is float and kwargs["lr"] == lr
    pyyaml = yaml.safe_load((tmp_path / "best.yaml").read_text())["task"]["model"]["kwargs"]["lr"]
    assert type(pyyaml) is float and pyyaml == lr


def test_a_confirmed_choice_writes_the_same_model_and_names_its_mean(tmp_path):
    confirmed = dict(
        CHOICE, confirmed={"seeds": [0, 1, 2], "valid_ic": [0.0781, 0.0777, 0.0779], "mean": 0.0779, "std": 0.0002}
    )
    text = bw.best_workflow(confirmed, WORKFLOW_YAML.read_text())
    assert "valid IC 0.0781; mean over seeds 0, 1, 2: 0.0779)" in text
    assert text.split("\n", 3)[3] == bw.best_workflow(CHOICE, WORKFLOW_YAML.read_text()).split("\n", 3)[3]


def test_the_committed_best_yaml_is_what_the_committed_choice_writes():
    """The shipped YAML exists exactly when the search's choice does, and is its output byte for byte."""
    if not bw.CHOICE_JSON.exists():
        assert not bw.BEST_YAML.exists(), "workflow_config_hist_best.yaml without results/search_choice.json"
        return
    choice = json.loads(bw.CHOICE_JSON.read_text())
    screen = json.loads(bw.SCREEN_JSON.read_text()) if bw.SCREEN_JSON.exists() else None
    written = bw.best_workflow(choice, WORKFLOW_YAML.read_text(), options=bw.screen_options(screen))
    assert bw.BEST_YAML.read_text() == written, "stale: run python -m benchmarks.best_workflow"
    kwargs = load_workflow(bw.BEST_YAML)["task"]["model"]["kwargs"]
    assert HISTSettings.from_kwargs(**kwargs)[0].warnings() == []  # the shipped recipe: nothing HIST warns about


@pytest.mark.parametrize(
    "row, added",
    [
        ("hist_pit+best_aux", {"aux_horizons": [2, 3]}),
        ("hist_pit+best_market", {"market_context": ["SH000300", "SH000905", "SH000903"]}),
        ("hist_pit+best_market_aux", {"market_context": ["SH000300", "SH000905", "SH000903"], "aux_horizons": [2, 3]}),
    ],
)
def test_the_screens_choice_adds_its_candidates_options_to_the_recipe(tmp_path, row, added):
    options = bw.screen_options({"choice": row})
    assert options == added
    path = tmp_path / "best.yaml"
    path.write_text(bw.best_workflow(CHOICE, WORKFLOW_YAML.read_text(), options=options))
    kwargs = load_workflow(path)["task"]["model"]["kwargs"]
    trial = trial_kwargs(CHOICE, "membership.csv", "lstm.pkl")
    assert _settings(kwargs) == _settings({**trial, **added})
    assert _settings(kwargs) != _settings(trial)
    assert f"with {', '.join(added)} from benchmarks/results/screen_choice.json" in path.read_text()


@pytest.mark.parametrize("screen", [None, {"choice": None}, {"choice": "hist_pit+best"}])
def test_no_screen_choice_or_the_recipe_alone_writes_the_searchs_file(screen):
    assert bw.screen_options(screen) == {}
    template = WORKFLOW_YAML.read_text()
    assert bw.best_workflow(CHOICE, template, options=bw.screen_options(screen)) == bw.best_workflow(CHOICE, template)


@pytest.mark.parametrize("row", ["hist_pit+best_wide", "lstm+best_aux", "best_aux"])
def test_a_screen_choice_that_is_no_candidate_is_refused_by_name(row):
    with pytest.raises(bw.ChoiceError) as err:
        bw.screen_options({"choice": row}, source="s.json")
    assert str(err.value) == f"s.json: '{row}' is not a candidate of benchmarks/grids/screen_dev.yaml"


def test_the_command_takes_the_screens_choice(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(CHOICE))
    (tmp_path / "s.json").write_text(json.dumps({"choice": "hist_pit+best_aux"}))
    out = tmp_path / "best.yaml"
    assert bw.main(["--choice", str(tmp_path / "c.json"), "--screen", str(tmp_path / "s.json"), "--out", str(out)]) == 0
    assert load_workflow(out)["task"]["model"]["kwargs"]["aux_horizons"] == [2, 3]

"""Bad model keys and the inputs they name, one test per root cause (``tests/test_bad_inputs.py`` and
``tests/test_bad_inputs_more.py`` have the others): ``ensemble`` bounded and fixed once the network is built; an
assignment checked as construction is; non-finite numbers refused; options that change nothing warned about;
no concept table needed with the predefined-concept module off; ``qlib-hist rolling`` checking the model's keys
before any data is read; and messages that name the input and the problem (a CSV row longer than its header,
duplicated rows of a handler, a folder given as an output file)."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import typing

import numpy as np
import pandas as pd
import pytest
import yaml
from test_bad_inputs import _static_dataset, assert_user_error, run_cli

from qlib_hist.batches import DataError
from qlib_hist.concepts import ConceptError, NoConcepts, load_concept_source
from qlib_hist.settings import GROUPS, MAX_ENSEMBLE, HISTSettings, SettingsError

from conftest import SHORT_SEGMENTS, small_hist

TINY = dict(hidden_size=8, num_layers=1, GPU=-1)


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


def warnings_of(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ============================================================================ ensemble: bounded, fixed once built
@pytest.mark.parametrize("members", [MAX_ENSEMBLE + 1, 1_000_000])
def test_an_absurd_ensemble_is_refused_before_any_member_is_built(members, monkeypatch):
    from qlib_hist import HIST
    from qlib_hist.network import HISTModel

    def no_member(*args, **kwargs):
        raise AssertionError("a member was built")

    monkeypatch.setattr(HISTModel, "from_settings", no_member)
    with pytest.raises(SettingsError) as caught:
        HIST(ensemble=members, **TINY)
    assert one_line(caught.value) == f"ensemble must be in [1, {MAX_ENSEMBLE}], got {members}"
    assert f"K members (1 .. {MAX_ENSEMBLE})" in (HIST.__doc__ or "")  # the maximum is stated where keys are


def test_member_seeds_past_numpys_range_are_refused():
    with pytest.raises(SettingsError, match=r"seed=4294967295 with ensemble=2: .* use seed <= 4294967294"):
        HISTSettings.from_kwargs(seed=2**32 - 1, ensemble=2)
    HISTSettings.from_kwargs(seed=2**32 - 2, ensemble=2)


def test_ensemble_is_refused_after_construction_and_the_model_still_pickles(demo):
    model = small_hist(demo, **TINY, ensemble=2)
    with pytest.raises(SettingsError) as caught:
        model.ensemble = 3
    assert one_line(caught.value) == (
        "ensemble defines the network, which is already built: make a new model, HIST(ensemble=3, ...)"
    )
    assert model.ensemble == 2 and len(model.members()) == 2
    again = pickle.loads(pickle.dumps(model))
    assert again.ensemble == 2 and len(again.members()) == 2


# ============================================================================ an assignment is checked as construction
def test_cuda_graphs_assigned_on_a_cpu_is_refused_and_changes_nothing(demo):
    model = small_hist(demo, **TINY)
    with pytest.raises(SettingsError) as caught:
        model.cuda_graphs = True
    assert one_line(caught.value) == "cuda_graphs needs a CUDA device, and this HIST runs on cpu: set cuda_graphs false"
    assert model.cuda_graphs is False


def test_bf16_assigned_on_a_cpu_without_bf16_is_refused_and_changes_nothing(demo, monkeypatch):
    from qlib_hist import training

    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2", "fma"})
    model = small_hist(demo, **TINY)
    with pytest.raises(SettingsError, match=r"^precision='bf16' needs a CUDA device or a CPU with avx512_bf16/AMX"):
        model.precision = "bf16"
    assert model.precision == "fp32"
    model.precision = "fp32"  # a valid assignment still works


def test_gpu_assigned_is_checked_and_picks_the_device_again(demo):
    model = small_hist(demo, **TINY)
    with pytest.raises(
        SettingsError, match=r"^GPU must be a CUDA index or a device string such as 'cuda:0', got 'gpu0'"
    ):
        model.GPU = "gpu0"
    assert model.GPU == -1 and str(model.device) == "cpu"
    model.GPU = "cpu"
    assert model.GPU == "cpu" and str(model.device) == "cpu"
    assert {p.device.type for p in model.HIST_model.parameters()} == {"cpu"}


def test_predict_and_fit_check_the_device_of_a_model_made_elsewhere(demo, short_dataset, monkeypatch):
    """A pickle made where bf16 / CUDA graphs run, loaded on a CPU without them: refused before the data are read."""
    from qlib_hist import training

    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx512_bf16"})
    model = small_hist(demo, **TINY, precision="bf16")
    model.fitted = True
    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2"})  # another machine

    def no_data(*args, **kwargs):
        raise AssertionError("the segment was read before the device was checked")

    monkeypatch.setattr(model, "_batches", no_data)
    with pytest.raises(SettingsError, match=r"^precision='bf16' needs a CUDA device"):
        model.predict(short_dataset)
    with pytest.raises(SettingsError, match=r"^precision='bf16' needs a CUDA device"):
        model.fit(short_dataset)
    model.__dict__["settings"] = model.settings.replace(precision="fp32", cuda_graphs=True)  # as unpickled
    for call in (model.fit, model.finetune):
        with pytest.raises(SettingsError, match="cuda_graphs needs a CUDA device"):
            call(short_dataset)


# ============================================================================ numbers must be finite
FLOAT_KEYS = sorted(
    f.name
    for cls in GROUPS.values()
    for f in dataclasses.fields(cls)
    if float in (typing.get_type_hints(cls)[f.name], *typing.get_args(typing.get_type_hints(cls)[f.name]))
)


def test_every_float_key_is_covered():
    assert {"lr", "finetune_lr", "dropout", "weight_decay", "ic_weight"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "inf", "nan"])
def test_non_finite_numbers_are_refused_by_name(key, value):
    from qlib_hist import HIST

    with pytest.raises(SettingsError) as caught:
        HIST(**{key: value}, **TINY)
    message = one_line(caught.value)
    assert message.startswith(f"{key} must be a finite number") and message.endswith(f"got {float(value)!r}"), message


def test_a_non_finite_number_assigned_is_refused(demo):
    model = small_hist(demo, **TINY)
    with pytest.raises(SettingsError, match=r"^weight_decay must be a finite number >= 0.0, got inf"):
        model.weight_decay = float("inf")
    assert model.weight_decay == 0.0


# ============================================================================ settings that change nothing: a warning
@pytest.mark.parametrize(
    "kwargs, key, switch",
    [
        (dict(predefined_concepts=False, concept_refine=True), "concept_refine", "predefined_concepts"),
        (dict(predefined_concepts=False, concept_weight="$close * $volume"), "concept_weight", "predefined_concepts"),
        (dict(predefined_concepts=False, stock2concept="members.csv"), "stock2concept", "predefined_concepts"),
        (dict(hidden_concepts=False, hidden_topk=3), "hidden_topk", "hidden_concepts"),
    ],
)
def test_an_option_of_a_switched_off_module_is_a_warning_naming_both_keys(kwargs, key, switch, caplog):
    from qlib_hist import HIST

    with caplog.at_level(logging.WARNING):
        HIST(**kwargs, **TINY)
    (warned,) = [w for w in warnings_of(caplog) if "has no effect" in w]
    assert f"{key}={kwargs[key]!r} has no effect with {switch}=false" in warned, warned
    assert f"remove {key}, or turn {switch} on" in warned


def test_default_options_of_a_switched_off_module_say_nothing(caplog):
    from qlib_hist import HIST

    with caplog.at_level(logging.WARNING):
        HIST(predefined_concepts=False, hidden_concepts=False, hidden_topk=1, concept_refine=False, **TINY)
        HIST(**TINY)
    assert warnings_of(caplog) == []
    assert HISTSettings().warnings() == []


@pytest.mark.parametrize("metric", ["loss", "", None, "mse"])
def test_the_ic_loss_early_stopped_on_the_valid_mse_is_a_warning(metric, caplog):
    from qlib_hist import HIST

    with caplog.at_level(logging.WARNING):
        HIST(loss="ic", metric=metric, **TINY)
        HIST(loss="ic", metric="ic", **TINY)
        HIST(loss="mse+ic", metric="loss", **TINY)  # the MSE is part of this loss
    (warned,) = warnings_of(caplog)
    assert "loss='ic' trains on the daily IC, but metric='loss'" in warned
    assert "early-stops the fit on the valid MSE" in warned and "set metric to 'ic'" in warned


def test_the_warning_comes_again_when_an_assignment_makes_it(demo, caplog):
    model = small_hist(demo, **TINY, metric="loss")
    with caplog.at_level(logging.WARNING):
        model.loss = "ic"
        model.n_epochs = 3  # the same settings' warning is not repeated
    assert len([w for w in warnings_of(caplog) if "loss='ic'" in w]) == 1


def test_keep_start_without_a_start_to_keep_is_a_warning(demo, tmp_path, caplog):
    from qlib_hist import HIST

    with caplog.at_level(logging.WARNING):
        HIST(keep_start=True, **TINY)
    (warned,) = warnings_of(caplog)
    assert warned.startswith("HIST: keep_start=true without model_path (and pretrain_epochs=0): fit scores its random")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        HIST(keep_start=True, pretrain_epochs=2, **TINY)  # the start is the pretrained encoder
        HIST(keep_start=True, model_path=str(tmp_path / "lstm.pkl"), **TINY)
    assert warnings_of(caplog) == []


# ============================================================================ no concept table without the module
def test_no_concept_table_is_needed_or_read_with_the_predefined_module_off(demo, short_dataset):
    off = dict(predefined_concepts=False, stock2concept=None, stock_index=None)
    model = small_hist(demo, **off)
    assert isinstance(model.concept_source(), NoConcepts)
    model.fit(short_dataset)
    pred = model.predict(short_dataset)
    table = model.explain(short_dataset, top=2)
    assert np.isfinite(pred.to_numpy()).all() and len(table) == len(pred)
    np.testing.assert_allclose(
        table[["concept", "hidden_concept", "individual", "bias"]].sum(axis=1), table["score"], atol=1e-5
    )
    assert (table["concept"] == 0).all()
    with pytest.raises(ConceptError, match="with predefined_concepts false, HIST needs none"):
        small_hist(demo, stock2concept=None, stock_index=None).concept_source()

    # a table given anyway is not read (the file may even be missing) ...
    missing = small_hist(demo, predefined_concepts=False, stock2concept=str(demo.stock2concept) + ".gone")
    assert isinstance(missing.concept_source(), NoConcepts)
    # ... and the predictions are bit for bit those of the model that read it
    with_table = small_hist(demo, predefined_concepts=False)
    with_table.__dict__["_concept_source"] = load_concept_source(demo.stock2concept, demo.stock_index)
    with_table.fit(short_dataset)
    pd.testing.assert_series_equal(with_table.predict(short_dataset), pred, check_exact=True)


# ============================================================================ rolling: model keys before data
@pytest.mark.parametrize(
    "model, needle",
    [
        ({"cuda_graphs": True}, "task.model.kwargs: cuda_graphs needs a CUDA device"),
        ({"ensemble": 0}, f"task.model.kwargs: ensemble must be in [1, {MAX_ENSEMBLE}], got 0"),
        ({"lr": ".inf"}, "task.model.kwargs: lr must be a finite number >= 0.0, got inf"),
    ],
)
def test_rolling_refuses_bad_model_keys_before_any_data_is_read(demo, tmp_path, capsys, monkeypatch, model, needle):
    import qlib
    from test_rolling import write_workflow

    def no_data(*args, **kwargs):
        raise AssertionError("qlib started or data were read before the model's keys were checked")

    monkeypatch.setattr(qlib, "init", no_data)
    monkeypatch.setattr("qlib_hist.qlib_edge.rolling.init_instance_by_config", no_data)
    monkeypatch.setattr("qlib_hist.qlib_edge.rolling.task_generator", no_data)
    workflow = write_workflow(tmp_path, demo.provider_uri, demo.membership)
    config = yaml.safe_load(workflow.read_text())
    config["task"]["model"]["kwargs"].update(model)
    workflow.write_text(yaml.safe_dump(config).replace("lr: '.inf'", "lr: .inf"))  # the YAML float, not text
    capsys.readouterr()  # what importing qlib's rolling printed
    status, err = run_cli(capsys, "rolling", str(workflow))
    assert_user_error(status, err, str(workflow), needle)


def test_a_rolling_model_class_that_cannot_be_imported_is_named(demo, tmp_path, capsys, monkeypatch):
    import qlib
    from test_rolling import write_workflow

    monkeypatch.setattr(qlib, "init", lambda **kwargs: pytest.fail("qlib started"))
    workflow = write_workflow(tmp_path, demo.provider_uri, demo.membership)
    config = yaml.safe_load(workflow.read_text())
    config["task"]["model"]["module_path"] = "qlib_hist_no_such_module"
    workflow.write_text(yaml.safe_dump(config))
    import qlib_hist.qlib_edge.rolling  # noqa: F401  (what its import prints is not the command's)

    capsys.readouterr()
    status, err = run_cli(capsys, "rolling", str(workflow))
    assert_user_error(status, err, str(workflow), "task.model names no class that can be imported")


# ============================================================================ messages naming the input and problem
@pytest.mark.parametrize(
    "rows, line",
    [
        ("SH600000,c1,2016-01-04,,extra\nSH600001,c1,2016-01-04,\n", 2),  # pandas would read an index
        ("SH600000,c1,2016-01-04,\nSH600001,c1,2016-01-04,,extra\n", 3),  # pandas would fail to tokenize
        ("SH600000,c1,2016-01-04,,x\nSH600001,c1,2016-01-04,,x\n", 2),  # every row: still not an index
    ],
)
def test_a_membership_row_longer_than_its_header_names_the_line(tmp_path, rows, line):
    from qlib_hist.concepts.membership import load_membership

    path = tmp_path / "members.csv"
    path.write_text("instrument,concept,start_date,end_date\n" + rows)
    with pytest.raises(ConceptError) as caught:
        load_membership(path)
    message = one_line(caught.value)
    assert message.startswith(f"{path}, line {line}: has 5 fields, the header has 4 "), message
    assert "not a qlib instrument" not in message


def test_a_sw_history_row_longer_than_its_header_names_the_line(tmp_path, capsys):
    sw = tmp_path / "sw.csv"
    sw.write_text("instrument,start_date,industry_code\nSH600000,2010-01-04,480301,x\n")
    status, err = run_cli(capsys, "concepts", "from-sw", str(sw), str(tmp_path / "members.csv"))
    assert_user_error(status, err, f"{sw}, line 2: has 4 fields, the header has 3")


@pytest.fixture(scope="module")
def learn_frame(demo_handler) -> pd.DataFrame:
    from qlib.data.dataset.handler import DataHandlerLP

    return demo_handler.fetch(col_set=DataHandlerLP.CS_RAW, data_key=DataHandlerLP.DK_L).copy()


def test_duplicated_rows_name_the_segment_and_the_handler(demo, learn_frame):
    dates = learn_frame.index.get_level_values(0)
    row = learn_frame.loc[dates >= SHORT_SEGMENTS["train"][0]].iloc[[5]]
    dataset = _static_dataset(pd.concat([learn_frame, row]).sort_index(), SHORT_SEGMENTS)
    model = small_hist(demo)
    with pytest.raises(DataError) as caught:
        model.fit(dataset)
    message = one_line(caught.value)
    date, instrument = row.index[0]
    assert message.startswith(
        f"segment train: 1 (datetime, instrument) row(s) appear more than once, first ({date.date()}, {instrument}), "
        "in the data of handler qlib.data.dataset.handler.DataHandlerLP (data loader StaticDataLoader over an "
        "in-memory DataFrame)"
    ), message
    assert not model.fitted


def test_the_handler_reading_a_file_is_named_by_the_file(learn_frame, tmp_path):
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.data.dataset.loader import StaticDataLoader

    from qlib_hist.qlib_edge.dataset import data_source

    path = tmp_path / "frame.pkl"
    learn_frame.iloc[:50].to_pickle(path)
    dataset = DatasetH(DataHandlerLP(data_loader=StaticDataLoader(config=str(path))), segments=SHORT_SEGMENTS)
    assert data_source(dataset) == (
        f"handler qlib.data.dataset.handler.DataHandlerLP (data loader StaticDataLoader reading {path})"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["concepts", "from-sw", "{missing}", "{out}"],
        ["concepts", "merge", "{missing}", "--out", "{out}"],
        ["concepts", "from-returns", "--provider-uri", "{missing}", "--start", "2016-01-04", "--end", "2016-06-30",
         "--out", "{out}"],
    ],
)  # fmt: skip
def test_a_folder_given_as_the_output_table_is_named_before_the_inputs_are_read(tmp_path, capsys, command):
    out = tmp_path / "concepts"
    out.mkdir()
    argv = [a.format(missing=tmp_path / "no_such_input.csv", out=out) for a in command]
    status, err = run_cli(capsys, *argv)
    assert_user_error(status, err, f"{out} is a directory: give the membership table's file name (a .csv or .parquet)")
    assert "no suffix" not in err and "no_such_input" not in err

"""Bad inputs end in a clear error, up front: one test per root cause (not per input), through the public API or
the CLI's ``main()`` and its exit code. Sections follow the README's troubleshooting table."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist.batches import DataError, build_daily_batches, check_labels
from qlib_hist.cli import main
from qlib_hist.concepts import ConceptError, LegacyConcepts
from qlib_hist.concepts.legacy import load_stock2concept, load_stock_index
from qlib_hist.settings import SettingsError
from qlib_hist.training import Trainer, TrainingError, select_device

from conftest import D_FEAT, SHORT_SEGMENTS, shared_file, small_hist, synthetic_frame


def run_cli(capsys, *argv: str) -> tuple:
    """``qlib-hist ARGV`` -> (exit status, stderr)."""
    status = main(list(argv))
    return status, capsys.readouterr().err


def assert_user_error(status: int, err: str, *needles: str) -> None:
    """Exit 2 with one line ``qlib-hist: error: ...`` holding every needle, no traceback."""
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("qlib-hist: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ============================================================================ security: no code runs from a data file
class _Payload:
    """Unpickling this creates a marker file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_stock_index_is_refused_before_any_code_runs(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "stock_index.npy"
    np.save(evil, np.array({"SH600000": _Payload(str(marker))}, dtype=object), allow_pickle=True)
    with pytest.raises(ConceptError, match=r"refused to unpickle io\.open.*\.json"):
        load_stock_index(evil)
    assert not marker.exists()
    # the format itself keeps loading: a pickled {str: int} dict with numpy integers, as qlib ships it
    good = tmp_path / "good.npy"
    np.save(good, np.array({"SH600000": np.int64(3), "SZ000001": 4}, dtype=object), allow_pickle=True)
    assert load_stock_index(good) == {"SH600000": 3, "SZ000001": 4}


@pytest.mark.realdata
def test_qlibs_own_stock_index_loads():
    mapping = load_stock_index(shared_file("qlib_reference/qlib_csi300_stock_index.npy"))
    assert len(mapping) == 735 and mapping["SH600000"] == 0


def test_handler_cache_never_unpickles_and_rebuilds_a_damaged_entry(demo, demo_handler, tmp_path, monkeypatch, caplog):
    from qlib.data.dataset.handler import DataHandlerLP

    from qlib_hist.qlib_edge.handler_cache import cached_handler

    builds = []

    def build(config):
        builds.append(config)
        return demo_handler

    monkeypatch.setattr("qlib.utils.init_instance_by_config", build)
    config = {"class": "Alpha360", "module_path": "qlib.contrib.data.handler", "kwargs": {"instruments": demo.market}}
    expected = demo_handler.fetch(data_key=DataHandlerLP.DK_I)
    cached_handler(config, demo.provider_uri, tmp_path)
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    marker = tmp_path / "code_ran"
    # an attacker (or a crash) puts a pickle where the values were: read with allow_pickle=False, it cannot run
    np.save(entry / "values.npy", np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    with caplog.at_level(logging.WARNING, logger="qlib_hist"):
        again = cached_handler(config, demo.provider_uri, tmp_path)
    assert not marker.exists() and len(builds) == 2
    assert any("damaged" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(again.fetch(data_key=DataHandlerLP.DK_I), expected)
    # a truncated entry too
    values = entry / "values.npy"
    values.write_bytes(values.read_bytes()[:1000])
    cached_handler(config, demo.provider_uri, tmp_path)
    assert len(builds) == 3


# ============================================================================ training that cannot succeed
def _static_dataset(frame: pd.DataFrame, segments: dict):
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.data.dataset.loader import StaticDataLoader

    return DatasetH(DataHandlerLP(data_loader=StaticDataLoader(config=frame)), segments=segments)


@pytest.fixture(scope="module")
def learn_frame(demo_handler) -> pd.DataFrame:
    from qlib.data.dataset.handler import DataHandlerLP

    return demo_handler.fetch(col_set=DataHandlerLP.CS_RAW, data_key=DataHandlerLP.DK_L).copy()


def _with_labels(frame: pd.DataFrame, segment: tuple, value: float) -> pd.DataFrame:
    out = frame.copy()
    dates = out.index.get_level_values(0)
    out.loc[(dates >= segment[0]) & (dates <= segment[1]), ("label", out["label"].columns[0])] = value
    return out


@pytest.mark.parametrize(
    "segment, value, metric, needle",
    [
        ("train", np.nan, "ic", "segment train: every label is NaN"),
        ("valid", np.nan, "loss", "segment valid: every label is NaN"),
        ("valid", 0.5, "ic", "segment valid: the labels never differ"),
    ],
)
def test_labels_that_cannot_train_or_score_are_refused(demo, learn_frame, segment, value, metric, needle):
    dataset = _static_dataset(_with_labels(learn_frame, SHORT_SEGMENTS[segment], value), SHORT_SEGMENTS)
    model = small_hist(demo, metric=metric)
    with pytest.raises(DataError, match=needle):
        model.fit(dataset)
    assert not model.fitted


def test_constant_valid_labels_train_with_the_loss_metric(demo, learn_frame):
    dataset = _static_dataset(_with_labels(learn_frame, SHORT_SEGMENTS["valid"], 0.5), SHORT_SEGMENTS)
    model = small_hist(demo, metric="loss")
    model.fit(dataset)
    assert model.fitted and model.best_epoch == 0


@pytest.mark.parametrize("value", [1e300, np.inf, np.nan])
def test_legacy_matrix_beyond_float32_names_row_and_column(tmp_path, value):
    matrix = np.zeros((4, 3))
    matrix[2, 1] = value
    np.save(tmp_path / "m.npy", matrix)
    with pytest.raises(ConceptError, match="row 2 column 1"):
        load_stock2concept(tmp_path / "m.npy")


def test_membership_weight_beyond_float32_names_the_line(tmp_path):
    from qlib_hist.concepts.membership import MembershipConcepts

    path = tmp_path / "m.csv"
    path.write_text(
        "instrument,concept,start_date,end_date,weight\nSH600000,a,2020-01-01,,1\nSH600001,a,2020-01-01,,1e300\n"
    )
    with pytest.raises(ConceptError, match="line 3.*1e300.*float32"):
        MembershipConcepts.from_path(path)


def test_nan_weight_in_model_path_is_named(demo, demo_dataset, tmp_path):
    from qlib_hist.network import RNNRegressor

    state = RNNRegressor(6, 16, 1, 0.0, "GRU").state_dict()
    state["rnn.weight_hh_l0"][0, 0] = float("nan")
    torch.save(state, tmp_path / "base.pt")
    with pytest.raises(ValueError, match="'rnn.weight_hh_l0' holds NaN"):
        small_hist(demo, model_path=str(tmp_path / "base.pt")).fit(demo_dataset)


def test_non_finite_loss_stops_at_the_first_step(synthetic_batches):
    from qlib_hist.network import HISTModel
    from qlib_hist.settings import TrainSettings

    train, valid = synthetic_batches
    net = HISTModel(D_FEAT, 8, 1)
    with torch.no_grad():
        net.fc_out.bias.fill_(float("inf"))  # what an overflowing input or a diverged weight does
    trainer = Trainer(net, torch.optim.Adam(net.parameters()), TrainSettings(n_epochs=3), torch.device("cpu"))
    with pytest.raises(TrainingError, match="epoch 0: the train loss is"):
        trainer.fit(train, valid)
    assert trainer.history == []


def test_no_finite_valid_score_is_an_error_not_the_last_epoch(synthetic_batches):
    from qlib_hist.network import HISTModel
    from qlib_hist.settings import TrainSettings

    train, valid = synthetic_batches
    net = HISTModel(D_FEAT, 8, 1)
    with torch.no_grad():
        net.fc_out.weight.zero_()  # every prediction is the bias: no IC on any day
    settings = TrainSettings(n_epochs=2, lr=0.0, metric="ic")
    with pytest.raises(TrainingError, match="no epoch gave a finite valid ic"):
        Trainer(net, torch.optim.SGD(net.parameters(), lr=0.0), settings, torch.device("cpu")).fit(train, valid)


# ============================================================================ the feature layout
FIELDS = ["CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME"]


def _named(frame: pd.DataFrame, names: list) -> pd.DataFrame:
    frame = frame.copy()
    frame.columns = pd.MultiIndex.from_tuples([("feature", n) for n in names] + [("label", "LABEL0")])
    return frame


@pytest.mark.parametrize(
    "names, d_feat, needle",
    [
        ([f"{f}{t}" for f in FIELDS for t in range(9, -1, -1)], 5, "d_feat=5, but the feature columns hold 6 fields"),
        (["KMID", "KLEN", "KUP"] + [f"ROC{i}" for i in range(57)], 6, "not a time series of fields x days"),
        ([f"{f}{t}" for f in FIELDS for t in range(10)], 6, "would read time backwards"),
    ],
)
def test_feature_layout_must_be_fields_by_days(concept_source, names, d_feat, needle):
    frame = _named(synthetic_frame(2, seed=0), names)
    with pytest.raises(DataError, match=needle):
        build_daily_batches(frame, concept_source, "train", d_feat, with_label=True)
    good = [f"{f}{t}" for f in FIELDS for t in range(9, -1, -1)]  # Alpha360's own layout passes
    build_daily_batches(_named(synthetic_frame(2, seed=0), good), concept_source, "train", 6, with_label=True)


def test_duplicated_rows_are_an_error(concept_source):
    frame = synthetic_frame(2, seed=0)
    frame = pd.concat([frame, frame.iloc[[3]]])
    with pytest.raises(DataError, match="appears more than once"):
        build_daily_batches(frame, concept_source, "train", D_FEAT, with_label=True)


def test_check_labels_accepts_ordinary_labels(synthetic_batches):
    train, _ = synthetic_batches
    check_labels(train, "train", need_daily_variation=True)


# ============================================================================ settings, devices, weights, datasets
def test_device_strings_fall_back_like_indices(caplog):
    logger = logging.getLogger("test_bad_inputs")
    with caplog.at_level(logging.INFO, logger="test_bad_inputs"):
        for gpu in (7, "cuda:7", "cuda"):
            device = select_device(gpu, logger)
            if not torch.cuda.is_available():
                assert device == torch.device("cpu")
    if not torch.cuda.is_available():
        assert sum("CUDA is not available" in r.getMessage() for r in caplog.records) == 3
    with pytest.raises(SettingsError, match="GPU must be"):
        select_device("warp:9", logger)


def test_a_cuda_model_unpickles_on_a_cpu_machine(demo):
    model = small_hist(demo, GPU="cuda:0")
    loaded = pickle.loads(pickle.dumps(model))
    assert loaded.GPU == "cuda:0"
    if not torch.cuda.is_available():
        assert loaded.device == torch.device("cpu") and not loaded.use_gpu


def test_weights_that_do_not_fit_say_which_parameter(demo):
    state = pickle.loads(pickle.dumps(small_hist(demo))).__getstate__()
    state["settings"]["hidden_size"] = 8  # the weights are 16 wide
    with pytest.raises(ValueError, match="parameter 'rnn.weight_ih_l0' has shape"):
        pickle.loads(pickle.dumps(small_hist(demo))).__setstate__(state)


@pytest.mark.parametrize(
    "name, kind", [("save_path", "file"), ("checkpoint_dir", "folder"), ("pretrain_save_path", "file")]
)
def test_unwritable_outputs_fail_before_training(demo, demo_dataset, tmp_path, name, kind, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = str(blocker / "out")
    read = []
    monkeypatch.setattr("qlib_hist.qlib_edge.model.segment_batches", lambda *a, **k: read.append(a))
    model = small_hist(demo, **({} if name == "save_path" else {name: target}))
    with pytest.raises(OSError, match=f"{name} {target}: cannot write there"):
        model.fit(demo_dataset, **({"save_path": target} if name == "save_path" else {}))
    assert read == []  # refused before any data was read


def test_not_a_dataset_and_unknown_segments(demo, demo_dataset):
    model = small_hist(demo)
    with pytest.raises(DataError, match="needs a qlib DatasetH.*DataFrame"):
        model.fit(pd.DataFrame())
    model.fitted = True
    with pytest.raises(DataError, match="segment 'tset' is not in the dataset's segments"):
        model.predict(demo_dataset, "tset")
    with pytest.raises(DataError, match="segment must be a segment name"):
        model.predict(demo_dataset, 3)


def test_network_input_shapes_are_named():
    from qlib_hist.network import HISTModel

    net = HISTModel(6, 8, 1)
    x, c = torch.zeros(5, 60), torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"x must be \[N, d_feat \* T\] with d_feat=6, got shape \(5, 59\)"):
        net(torch.zeros(5, 59), c)
    with pytest.raises(ValueError, match="concept_matrix must be .N, C. with N=5"):
        net(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="member_weight must be .N. with N=5"):
        net(x, c, torch.ones(4))


# ======================================================================= files: all or nothing, never over an input
def test_legacy_files_not_written_together_are_refused(demo, tmp_path):
    from qlib_hist.concepts.legacy_export import to_legacy

    paths = to_legacy(demo.membership, demo.end, demo.instruments, tmp_path / "a")
    LegacyConcepts(paths.stock2concept, paths.stock_index_json)  # a sealed set loads
    other = to_legacy(demo.membership, demo.start, demo.instruments[:10], tmp_path / "b")
    os.replace(other.stock_index_json, paths.stock_index_json)  # an old/new mix, as an interrupted export leaves
    with pytest.raises(ConceptError, match="not the file that .*manifest.json lists"):
        LegacyConcepts(paths.stock2concept, paths.stock_index_json)


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    from qlib_hist.atomic_files import atomic_write_text

    dead = 2**22 + 12345  # above the default pid_max: no process has it
    stale = tmp_path / f".out.txt.{dead}.abc.tmp"
    stale.write_text("half a file")
    live = tmp_path / f".out.txt.{os.getppid()}.abc.tmp"
    live.write_text("another writer, still running")
    atomic_write_text(tmp_path / "out.txt", "whole")
    assert not stale.exists() and live.exists() and (tmp_path / "out.txt").read_text() == "whole"


def test_write_explanation_checks_the_day_before_writing(tmp_path):
    from qlib_hist.explain_report import write_explanation

    index = pd.MultiIndex.from_product([pd.bdate_range("2020-01-01", periods=3), ["SH600000", "SH600001"]])
    table = pd.DataFrame(
        {"score": 0.0, "concept": 0.1, "hidden_concept": 0.2, "individual": 0.3, "bias": -0.6}, index=index
    )
    with pytest.raises(ValueError, match="day 2020-02-01 is not a day of the explanation"):
        write_explanation(table, tmp_path / "out", "2020-02-01")
    assert not (tmp_path / "out").exists()


# ============================================================================ the CLI: one line and exit 2
@pytest.fixture
def sw_csv(tmp_path):
    path = tmp_path / "sw.csv"
    path.write_text("instrument,start_date,industry_code,updated_at\nSH600000,2010-01-04,480301,2014-01-01\n")
    return path


def test_cli_never_writes_over_an_input_and_checks_suffixes(capsys, sw_csv):
    before = sw_csv.read_bytes()
    assert_user_error(*run_cli(capsys, "concepts", "from-sw", str(sw_csv), str(sw_csv)), "is the input file")
    assert sw_csv.read_bytes() == before
    assert_user_error(*run_cli(capsys, "concepts", "from-sw", str(sw_csv), str(sw_csv.with_suffix(".xlsx"))), ".xlsx")
    assert_user_error(*run_cli(capsys, "concepts", "from-sw", str(sw_csv.parent), "out.csv"), str(sw_csv.parent))


def test_cli_dates_and_calendar(capsys, demo, tmp_path):
    membership = str(demo.membership)
    common = [
        "concepts",
        "to-legacy",
        membership,
        "--provider-uri",
        str(demo.provider_uri),
        "--out",
        str(tmp_path) + "/",
    ]
    assert_user_error(*run_cli(capsys, *common, "--as-of", "1990-01-01"), "--as-of 1990-01-01", demo.start, demo.end)
    with pytest.raises(SystemExit) as stop:
        main([*common, "--as-of", "2020-13-45"])
    assert stop.value.code == 2 and "--as-of takes a date" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_membership_open_end_sentinel_and_ragged_csv(capsys, demo, tmp_path):
    sentinel = tmp_path / "m.csv"
    sentinel.write_text(f"instrument,concept,start_date,end_date\n{demo.instruments[0]},c,{demo.start},9999-12-31\n")
    assert (
        main(["concepts", "report", str(sentinel), "--provider-uri", str(demo.provider_uri), "--market", demo.market])
        == 0
    )
    capsys.readouterr()
    ragged = tmp_path / "r.csv"
    ragged.write_text(f"instrument,concept,start_date,end_date\n{demo.instruments[0]},c,{demo.start},,extra\n")
    assert_user_error(
        *run_cli(capsys, "concepts", "report", str(ragged), "--provider-uri", str(demo.provider_uri)), str(ragged)
    )


@pytest.mark.parametrize(
    "text, needle",
    [("a: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "got a list"), ("task: {}\n", "no qlib_init section")],
)
def test_cli_workflow_yaml_errors(capsys, tmp_path, text, needle):
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(text)
    assert_user_error(*run_cli(capsys, "explain", str(workflow), "--out", str(tmp_path / "e")), str(workflow), needle)
    assert_user_error(*run_cli(capsys, "explain", str(tmp_path), "--out", str(tmp_path / "e")), "Is a directory")


def test_cli_demo_epochs_checked_before_writing(capsys, tmp_path):
    out = tmp_path / "demo"
    assert_user_error(*run_cli(capsys, "demo", "--epochs", "-1", "--out", str(out)), "n_epochs must be >= 0, got -1")
    assert not out.exists()


def test_cli_internal_bugs_keep_their_traceback(monkeypatch, sw_csv):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr("qlib_hist.concepts.shenwan.from_sw", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["concepts", "from-sw", str(sw_csv), str(sw_csv.with_name("out.csv"))])

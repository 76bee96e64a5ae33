"""qlib's HIST with a checkpointed loop (``benchmarks.qlib_patched.PatchedQlibHIST(checkpoint_dir=...)``).

Without ``checkpoint_dir`` the fit is qlib's own; with one, the loop written out again computes exactly what
qlib's does, and a fit killed in the middle of an epoch (an exception from the optimizer's step, the epoch's days
half trained) resumes in a new model object, the random states disturbed in between, to the very same scores,
best epoch, weights and predictions as the fit never stopped. A deliberately broken resume (numpy's shuffle or
the optimizer not restored) does not: the equality is not vacuous. A checkpoint of another fit is refused, naming
the file; a failed write leaves the last whole checkpoint.

All on the demo market, with qlib's GRU base at its shipped size (qlib's ``fit`` loads a ``GRUModel()`` of
hidden size 64 into the network) and one layer, on 21 train and 21 valid days: a few tenths of a second an epoch.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.grid import RunKey, load_grid, make_grid
from benchmarks.paths import ROOT
from benchmarks.qlib_patched import CHECKPOINT_NAME, PatchedQlibHIST, cpu_pandas3_patches
from benchmarks.run import CHECKPOINTING, ROWS, GridContext
from qlib_hist.callbacks import CheckpointError

SEGMENTS = {
    "train": ("2016-04-01", "2016-04-29"),
    "valid": ("2016-05-03", "2016-05-31"),
    "test": ("2016-06-01", "2016-06-15"),
}
#: lr 0.01 on this data: valid IC best at epoch 0, then 3 worse epochs, so early stop 3 ends the fit at epoch 3
SETTINGS = dict(
    d_feat=6, hidden_size=64, num_layers=1, n_epochs=8, early_stop=3, lr=0.01, metric="ic", base_model="GRU", GPU=-1
)
SEED = 0
KILLED_IN = 2  # the epoch a kill interrupts: epochs 0 and 1 are checkpointed, with one epoch without improvement


class Killed(Exception):
    """The kill: raised from inside qlib's ``train_epoch``, as a SIGKILL would stop it anywhere."""


@pytest.fixture(scope="module")
def legacy(demo, tmp_path_factory):
    """qlib's concept files over every demo stock (qlib's loop reads row 733 for a stock without one)."""
    from qlib_hist.concepts.legacy_export import to_legacy

    return to_legacy(demo.membership, SEGMENTS["train"][1], demo.instruments, tmp_path_factory.mktemp("legacy") / "x")


@pytest.fixture(scope="module")
def dataset(demo_handler):
    from qlib.data.dataset import DatasetH

    return DatasetH(demo_handler, segments=SEGMENTS)


def make(legacy, checkpoint_dir=None, **overrides) -> PatchedQlibHIST:
    kwargs = dict(SETTINGS, seed=SEED, stock2concept=str(legacy.stock2concept), stock_index=str(legacy.stock_index_npy))
    return PatchedQlibHIST(**{**kwargs, **overrides}, checkpoint_dir=checkpoint_dir)


def fitted(model, dataset, tmp_path) -> dict:
    """Fit ``model``; what must not change: qlib's ``evals_result``, the best epoch and score, the final weights,
    the file qlib saves and the test predictions."""
    evals: dict = {}
    save = tmp_path / "saved.pt"
    model.fit(dataset, evals_result=evals, save_path=str(save))
    return {
        "evals": evals,
        "best": (model.best_epoch, model.best_score),
        "weights": {k: v.clone() for k, v in model.HIST_model.state_dict().items()},
        "saved": torch.load(save, map_location="cpu", weights_only=True),
        "pred": model.predict(dataset),
        "history": model.history,
        "rng": random_states(),
    }


def random_states() -> tuple:
    """numpy's and torch's global generators, as a fit leaves them for what the process does next."""
    _, keys, pos, *_ = np.random.get_state(legacy=True)
    return keys.copy(), pos, torch.get_rng_state()


def assert_same(got: dict, want: dict) -> None:
    for name in ("train", "valid"):
        assert got["evals"][name] == want["evals"][name], name
        assert [type(s) for s in got["evals"][name]] == [type(s) for s in want["evals"][name]]
    assert got["best"] == want["best"]
    for what in ("weights", "saved"):
        assert got[what].keys() == want[what].keys()
        assert all(torch.equal(got[what][k], want[what][k]) for k in want[what]), what
    assert got["pred"].index.equals(want["pred"].index)
    assert torch.equal(torch.from_numpy(got["pred"].to_numpy()), torch.from_numpy(want["pred"].to_numpy()))
    (keys, pos, torch_state), (want_keys, want_pos, want_torch) = got["rng"], want["rng"]
    assert np.array_equal(keys, want_keys) and pos == want_pos and torch.equal(torch_state, want_torch)


def train_days(dataset) -> int:
    from qlib.data.dataset.handler import DataHandlerLP

    frame = dataset.prepare("train", col_set="label", data_key=DataHandlerLP.DK_L)
    return frame.index.get_level_values("datetime").nunique()


def kill_at_step(model, steps: int) -> None:
    """Make the optimizer's step number ``steps`` (from 0) raise :class:`Killed` before it changes anything."""
    step, done = model.train_optimizer.step, [0]

    def counting(*args, **kwargs):
        if done[0] == steps:
            raise Killed
        done[0] += 1
        return step(*args, **kwargs)

    model.train_optimizer.step = counting


def disturb_random_states() -> None:
    """What a new process would start with: other states of every generator the loop could draw from."""
    np.random.seed(12345)
    torch.manual_seed(12345)
    random.seed(12345)


@pytest.fixture(scope="module")
def qlib_fit(legacy, dataset, tmp_path_factory):
    """qlib's own HIST, with only the CPU/pandas 3 patches, fitted: what every fit here must reproduce."""
    from qlib.contrib.model.pytorch_hist import HIST

    kwargs = dict(SETTINGS, seed=SEED, stock2concept=str(legacy.stock2concept), stock_index=str(legacy.stock_index_npy))
    model = HIST(**kwargs)
    evals: dict = {}
    save = tmp_path_factory.mktemp("qlib") / "saved.pt"
    with cpu_pandas3_patches():
        model.fit(dataset, evals_result=evals, save_path=str(save))
        pred = model.predict(dataset)
    valid = [float(s) for s in evals["valid"]]
    best = valid.index(max(valid))
    return {
        "evals": evals,
        "best": (best, valid[best]),
        "weights": {k: v.clone() for k, v in model.HIST_model.state_dict().items()},
        "saved": torch.load(save, map_location="cpu", weights_only=True),
        "pred": pred,
        "rng": random_states(),
    }


@pytest.fixture(scope="module")
def uninterrupted(legacy, dataset, tmp_path_factory):
    """A checkpointed fit that was never stopped, and its checkpoint folder."""
    folder = tmp_path_factory.mktemp("uninterrupted") / "ckpt"
    return fitted(make(legacy, str(folder)), dataset, folder.parent), folder


@pytest.fixture(scope="module")
def killed(legacy, dataset, tmp_path_factory):
    """The checkpoint folder of a fit killed three steps into epoch :data:`KILLED_IN`."""
    folder = tmp_path_factory.mktemp("killed") / "ckpt"
    model = make(legacy, str(folder))
    kill_at_step(model, KILLED_IN * train_days(dataset) + 3)
    with pytest.raises(Killed):
        model.fit(dataset, save_path=str(folder.parent / "saved.pt"))
    return folder


def test_the_data_exercises_early_stopping_across_the_kill(qlib_fit, killed):
    """The test's premise: qlib's fit early-stops before ``n_epochs``, and the kill falls between an epoch without
    improvement and the early stop (so the stop count, the best weights and the best score must all carry over)."""
    valid = qlib_fit["evals"]["valid"]
    assert len(valid) < SETTINGS["n_epochs"] and qlib_fit["best"][0] < KILLED_IN - 1 < len(valid) - 1
    state = torch.load(killed / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == KILLED_IN - 1 and state["stop_steps"] >= 1 and not state["stopped"]
    assert state["evals_result"]["valid"] == [float(s) for s in valid[:KILLED_IN]]


def test_without_a_folder_the_fit_is_qlibs(legacy, dataset, qlib_fit, tmp_path):
    got = fitted(make(legacy), dataset, tmp_path)
    assert_same(got, qlib_fit)
    assert list(tmp_path.iterdir()) == [tmp_path / "saved.pt"]  # no checkpoint anywhere of its own


def test_the_checkpointed_loop_computes_what_qlibs_does(uninterrupted, qlib_fit):
    got, folder = uninterrupted
    assert_same(got, qlib_fit)
    assert [h["valid_score"] for h in got["history"]] == [float(s) for s in qlib_fit["evals"]["valid"]]
    assert all(h["seconds"] > 0 for h in got["history"])
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_NAME]
    state = torch.load(folder / CHECKPOINT_NAME, weights_only=True)
    assert state["stopped"] and state["epoch"] == len(qlib_fit["evals"]["valid"]) - 1
    assert state["best_epoch"] == qlib_fit["best"][0]
    assert all(torch.equal(state["best_param"][k], qlib_fit["saved"][k]) for k in qlib_fit["saved"])


def test_a_killed_fit_resumes_bit_for_bit(legacy, dataset, killed, uninterrupted, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(killed, folder)
    disturb_random_states()
    model = make(legacy, str(folder))
    disturb_random_states()  # after the constructor's own seeding too
    got = fitted(model, dataset, tmp_path)
    want = uninterrupted[0]
    assert_same(got, want)
    assert len(model._epoch_starts) == len(want["evals"]["valid"]) - KILLED_IN  # the checkpointed epochs not rerun
    assert [h["valid_score"] for h in got["history"]] == [h["valid_score"] for h in want["history"]]
    assert len(got["history"]) == len(want["history"]) and all(h["seconds"] > 0 for h in got["history"])


@pytest.mark.parametrize("broken", ["numpy", "optimizer", "stop_steps"])
def test_a_resume_that_misses_a_state_is_caught(legacy, dataset, killed, uninterrupted, tmp_path, monkeypatch, broken):
    """The bit-for-bit test has teeth: leave out numpy's generator (the day shuffle), the optimizer's moments or the
    early-stopping count, and the resumed fit differs from the uninterrupted one."""
    import benchmarks.qlib_patched as patched

    folder = tmp_path / "ckpt"
    shutil.copytree(killed, folder)
    if broken == "numpy":
        set_state = patched.set_rng_state
        monkeypatch.setattr(patched, "set_rng_state", lambda state: set_state({**state, "numpy": _numpy_now()}))
    elif broken == "optimizer":
        monkeypatch.setattr(torch.optim.Adam, "load_state_dict", lambda self, state: None)
    else:
        read = patched.read_checkpoint
        monkeypatch.setattr(patched, "read_checkpoint", lambda *args: {**read(*args), "stop_steps": 0})
    got = fitted(make(legacy, str(folder)), dataset, tmp_path)
    with pytest.raises(AssertionError):
        assert_same(got, uninterrupted[0])


def _numpy_now() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]


def copied_legacy(legacy, folder, flip: bool = False) -> SimpleNamespace:
    """``legacy``'s two files copied into ``folder`` (``flip``: the concept columns reversed, other contents)."""
    folder.mkdir()
    matrix = np.load(legacy.stock2concept)
    np.save(folder / legacy.stock2concept.name, matrix[:, ::-1] if flip else matrix)
    shutil.copy(legacy.stock_index_npy, folder / legacy.stock_index_npy.name)
    return SimpleNamespace(
        stock2concept=folder / legacy.stock2concept.name, stock_index_npy=folder / legacy.stock_index_npy.name
    )


def test_a_finished_checkpoint_gives_the_finished_model_without_training(legacy, dataset, uninterrupted, tmp_path):
    """Killed after its last epoch but before the grid wrote its result: the rerun trains nothing. The concept
    files moved elsewhere (another cache folder, another machine) with the same contents still resume."""
    folder = tmp_path / "ckpt"
    shutil.copytree(uninterrupted[1], folder)
    model = make(copied_legacy(legacy, tmp_path / "moved"), str(folder))
    got = fitted(model, dataset, tmp_path)
    assert model._epoch_starts == []
    assert_same(got, uninterrupted[0])
    assert got["history"] == uninterrupted[0]["history"]  # the seconds of the attempt that trained them


@pytest.mark.parametrize(
    "change",
    [{"lr": 0.02}, {"n_epochs": 9}, {"early_stop": 4}, {"seed": 1}, {"train": "2016-04-05"}, {"concepts": "flip"}],
    ids=["lr", "n_epochs", "early_stop", "seed", "train data", "concept file contents"],
)
def test_a_checkpoint_of_another_fit_is_refused_naming_the_folder(
    legacy, dataset, demo_handler, uninterrupted, tmp_path, change
):
    from qlib.data.dataset import DatasetH

    folder = tmp_path / "ckpt"
    shutil.copytree(uninterrupted[1], folder)
    before = (folder / CHECKPOINT_NAME).read_bytes()
    kwargs = dict(change)
    if "train" in kwargs:
        segments = {**SEGMENTS, "train": (kwargs.pop("train"), SEGMENTS["train"][1])}
        dataset = DatasetH(demo_handler, segments=segments)
    if kwargs.pop("concepts", None):
        legacy = copied_legacy(legacy, tmp_path / "other", flip=True)
    model = make(legacy, str(folder), **kwargs)
    with pytest.raises(CheckpointError, match="other settings or another dataset") as err:
        model.fit(dataset, save_path=str(tmp_path / "saved.pt"))
    assert str(folder) in str(err.value) and "delete it or use another checkpoint_dir" in str(err.value)
    assert (folder / CHECKPOINT_NAME).read_bytes() == before and model._epoch_starts == []  # refused before training


def test_a_damaged_checkpoint_names_the_file(legacy, dataset, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    model = make(legacy, str(folder))
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        model.fit(dataset, save_path=str(tmp_path / "saved.pt"))
    assert f"checkpoint {folder / CHECKPOINT_NAME}" in str(err.value) and model._epoch_starts == []


def test_a_failed_checkpoint_write_leaves_the_last_whole_one(legacy, dataset, tmp_path, monkeypatch):
    """The second epoch's write dies half-way (a full disk): the error names the checkpoint, no partial or
    temporary file is left, and the first epoch's checkpoint is still there, whole."""
    folder = tmp_path / "ckpt"
    save, calls = torch.save, []

    def dying_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as file:
                file.write(b"half a checkpo")
            raise OSError(28, "No space left on device", str(path))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left on device") as err:
        make(legacy, str(folder)).fit(dataset, save_path=str(tmp_path / "saved.pt"))
    assert err.value.filename == str(folder / CHECKPOINT_NAME)  # the file asked for, not the temporary one
    assert str(calls[1]) != str(folder / CHECKPOINT_NAME)  # written beside it, then renamed
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_NAME]
    state = torch.load(folder / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 0 and len(state["evals_result"]["valid"]) == 1


def test_the_grid_runner_gives_qlibs_hist_a_checkpoint_folder_it_does_not_record(monkeypatch, tmp_path):
    """``benchmarks.run`` passes the qlib_hist_patched row a per-run ``checkpoint_dir`` under the cache, as it
    does ours, and records the config without it: result-file names and checkpoint-folder digests stay as they
    were. qlib's unpatched HIST gets none (it would ignore it)."""
    from qlib.workflow import R

    import benchmarks.run as run

    assert CHECKPOINTING["benchmarks.qlib_patched"] == CHECKPOINT_NAME
    assert "qlib.contrib.model.pytorch_hist" not in CHECKPOINTING
    grid = make_grid("g", "qlib-bench", ["qlib_hist_patched", "qlib_hist"], [0], list(ROWS))
    legacy = SimpleNamespace(stock2concept=tmp_path / "s2c.npy", stock_index_npy=tmp_path / "index.npy")
    where = str(tmp_path)
    checkpoints = str(tmp_path / "checkpoints")
    ctx = GridContext(
        grid, where, "csi300", "SH000300", where, checkpoints, where, "sqlite://", {"legacy": legacy}, None, 1
    )
    seen: list = []
    monkeypatch.setattr(run, "end_killed_attempts", lambda *args: None)
    monkeypatch.setattr(R, "start", lambda **kwargs: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(run, "fit_model", lambda config, dataset: (seen.append(config), (None, {"error": "x"}))[1])
    keys = {key.model: key for key in grid.runs()}
    key = keys["qlib_hist_patched"]
    patched, plain = run.run_one(key, None, ctx), run.run_one(keys["qlib_hist"], None, ctx)
    assert seen[0]["kwargs"]["checkpoint_dir"] == str(ctx.checkpoint_dir(key))
    assert ctx.checkpoint_dir(key).parent == tmp_path / "checkpoints" / "g"
    assert "checkpoint_dir" not in patched["config"]["kwargs"] and patched["resumed"] is False
    assert "checkpoint_dir" not in ctx.config(key)["kwargs"]  # nor in what names its checkpoint folder
    assert "checkpoint_dir" not in seen[1]["kwargs"] and "resumed" not in plain


def test_a_checkpoint_folder_is_named_by_what_the_run_trains_not_by_where_this_machine_keeps_things(tmp_path):
    """A run of qlib's own budget outlives a session only if its checkpoint folder does, and a new session has
    another cache and maybe another checkout: qlib's patched HIST's folder name is the same whatever the cache, the
    checkpoint root, the provider's parent folder or the concept files' folder, and changes with a setting or the
    provider."""
    grid = make_grid("g", "qlib-bench", ["qlib_hist_patched"], [0], list(ROWS))
    (key,) = grid.runs()

    def folder(home: str, provider: str = "cn_csi300", model: str = "qlib_hist_patched", **changed: object) -> str:
        where = tmp_path / home
        legacy = SimpleNamespace(stock2concept=where / "s2c.npy", stock_index_npy=where / "index.npy")
        ctx = GridContext(
            make_grid("g", "qlib-bench", [model], [0], list(ROWS)) if not changed else grid,
            str(where / "data" / provider),
            "csi300",
            "SH000300",
            str(where / "cache"),
            str(where / "kept"),
            str(where / "runs"),
            "sqlite://",
            {"legacy": legacy},
            str(where / "model_lstm_csi300.pkl"),
            1,
        )
        if changed:
            ctx.grid.variants[key.variant].update(changed)
        path = ctx.checkpoint_dir(RunKey(model, key.variant, key.seed))
        assert path.parent == where / "kept" / "g"  # under --checkpoint-dir, not the cache
        return path.name

    here = folder("session_a")
    assert folder("session_b") == here
    assert folder("session_c", provider="cn_data") != here
    assert folder("session_d", lr=0.001) != here
    # qlib_hist's own checkpoints fingerprint their files' paths: their folders follow the paths
    assert folder("session_a", model="hist_legacy") != folder("session_b", model="hist_legacy")


def test_the_full_budget_grid_is_qlibs_hist_at_its_own_budget_on_qlibs_segments():
    full = load_grid(ROOT / "benchmarks" / "grids" / "qlib_segments_full.yaml", list(ROWS))
    capped = load_grid(ROOT / "benchmarks" / "grids" / "qlib_segments.yaml", list(ROWS))
    assert full.profile_name == capped.profile_name == "qlib-bench"
    assert full.profile["segments"] == capped.profile["segments"]
    assert (full.profile["n_epochs"], full.profile["early_stop"]) == (200, 20)  # qlib's YAML
    assert [key.row for key in full.runs()] == ["qlib_hist_patched"] * 3 and full.seeds == [0, 1, 2]
    assert full.name != capped.name  # its results and checkpoints apart from the capped grid's

"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test tensors are tiny: one intra-op thread is far faster than two on a shared, busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def temp_files_under_basetemp(tmp_path_factory):
    """The session's ``tempfile`` folders go under pytest's basetemp, which pytest prunes: qlib's
    ``Recorder.load_object`` leaves each artifact mlflow copied to a fresh ``mkdtemp`` folder (thousands a suite).
    In this process only: subprocesses and Ray (which reads ``$TMPDIR`` for its socket paths) keep the system's."""
    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = before


def _shared_data_dir() -> Path:
    """The shared real-data folder: ``$QLIB_HIST_SHARED_DATA`` or ``../shared/data`` beside the project root."""
    env = os.environ.get("QLIB_HIST_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared data folder; skips the test when it is not there (a test that reads a file in it asks
    :func:`shared_file` for it, which skips when that file is missing)."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found: {path} (set QLIB_HIST_SHARED_DATA)")
    return path


def shared_file(relpath: str) -> Path:
    """``relpath`` (a file or folder) under the shared data folder; skips the calling test, naming the missing
    path, when it is not there. Tests that use it carry the ``realdata`` mark."""
    path = _shared_data_dir() / relpath
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set QLIB_HIST_SHARED_DATA)")
    return path


# ---------------------------------------------------------------------------------------------- qlib's global state
@contextlib.contextmanager
def qlib_state_kept() -> Iterator[None]:
    """Undo whatever ``qlib.init`` calls the block makes: qlib's config ``C``, the registered data providers
    (``D``, ``Cal``, ``Inst``, ...), the operators and the recorder ``R`` are put back, and qlib's memory cache
    is emptied (it may hold another provider's data under the same instrument names)."""
    import qlib.data.data as qlib_data
    from qlib.config import C
    from qlib.data.cache import H
    from qlib.data.ops import Operators
    from qlib.workflow import R

    names = ("Cal", "Inst", "FeatureD", "PITD", "ExpressionD", "DatasetD", "D")
    wrappers = [*(getattr(qlib_data, name) for name in names), Operators, R]
    config = copy.deepcopy(C.__dict__["_config"])
    inner = [{k: dict(v) if isinstance(v, dict) else v for k, v in w.__dict__.items()} for w in wrappers]
    try:
        yield
    finally:
        C.__dict__["_config"] = config
        for wrapper, state in zip(wrappers, inner):
            wrapper.__dict__.clear()
            wrapper.__dict__.update(state)
        H.clear()


@pytest.fixture
def keep_qlib_state() -> Iterator[None]:
    """The test's ``qlib.init`` calls are undone after it (:func:`qlib_state_kept`)."""
    with qlib_state_kept():
        yield


# ---------------------------------------------------------------------------------------------- synthetic market
DEMO_SEGMENTS = {
    "train": ("2016-04-01", "2016-09-30"),
    "valid": ("2016-10-03", "2016-12-30"),
    "test": ("2017-01-02", "2017-03-24"),
}


def tiny_grid(start: str, epochs: int, rest: str, early_stop: int | None = None) -> str:
    """A benchmark grid file's text (``name: tiny``) on the demo market: 3 months of train, 2 of valid, 1 of test
    from 2016-04 (the demo's first days are its features' warm-up), ``epochs`` and ``early_stop`` rounds (default:
    as many as ``epochs``), then ``rest`` (models, seeds, variants)."""
    return f"""
name: tiny
profile: cpu-quick
settings:
  start: {start}
  end: 2016-09-30
  fit: [2016-04-01, 2016-06-30]
  segments:
    train: [2016-04-01, 2016-06-30]
    valid: [2016-07-01, 2016-08-31]
    test: [2016-09-01, 2016-09-29]
  n_epochs: {epochs}
  early_stop: {epochs if early_stop is None else early_stop}
{rest.strip()}
"""


def init_qlib(provider_uri) -> None:
    """(Re)initialise qlib on ``provider_uri``; other test modules may have pointed it elsewhere."""
    import qlib

    qlib.init(provider_uri=str(provider_uri), region="cn", kernels=1)


#: the demo's Alpha360 processors (those of qlib's HIST benchmark)
PROCESSORS = dict(
    infer_processors=[
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
        {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
    ],
    learn_processors=[{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
)


def alpha360_kwargs(demo, with_processors: bool = True) -> dict:
    """The demo's ``Alpha360`` keyword arguments (a fresh copy: qlib may keep what it is given)."""
    processors = (
        PROCESSORS if with_processors else dict(infer_processors=[], learn_processors=[{"class": "DropnaLabel"}])
    )
    return copy.deepcopy(
        dict(
            instruments=demo.market,
            start_time=demo.start,
            end_time=DEMO_SEGMENTS["test"][1],
            fit_start_time=DEMO_SEGMENTS["train"][0],
            fit_end_time=DEMO_SEGMENTS["train"][1],
            **processors,
        )
    )


def alpha360_handler(demo, with_processors: bool = True):
    from qlib.contrib.data.handler import Alpha360

    init_qlib(demo.provider_uri)
    return Alpha360(**alpha360_kwargs(demo, with_processors))


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small synthetic market (40 stocks, 320 days from 2016-01-04) with its concept files."""
    from qlib_hist.demo_data import write_demo_provider

    return write_demo_provider(tmp_path_factory.mktemp("demo"), n_stocks=40, n_days=320, seed=0)


@pytest.fixture(scope="session")
def demo_handler(demo):
    return alpha360_handler(demo)


@pytest.fixture(scope="session")
def demo_dataset(demo_handler):
    from qlib.data.dataset import DatasetH

    return DatasetH(demo_handler, segments=DEMO_SEGMENTS)


@pytest.fixture(scope="session")
def demo_raw_dataset(demo):
    """Alpha360 without processors: the first days of the window hold NaN features."""
    from qlib.data.dataset import DatasetH

    return DatasetH(
        alpha360_handler(demo, with_processors=False),
        segments={"train": ("2016-01-04", "2016-06-30"), "valid": DEMO_SEGMENTS["valid"]},
    )


SHORT_SEGMENTS = {
    "train": ("2016-04-01", "2016-06-30"),
    "valid": ("2016-07-01", "2016-08-31"),
    "test": ("2016-09-01", "2016-09-30"),
}


@pytest.fixture(scope="session")
def short_dataset(demo_handler):
    """The demo handler with shorter segments (65 / 44 / 22 days): cheaper epochs."""
    from qlib.data.dataset import DatasetH

    return DatasetH(demo_handler, segments=SHORT_SEGMENTS)


@pytest.fixture(scope="session")
def membership_file(demo, tmp_path_factory) -> Path:
    """The demo membership plus two concepts that constrain the explanation:

    ``ghost`` has only members outside the market (it never exists on a day), ``late`` gets 15 members from
    2017-02-01 (it exists only on the later test days). Sorted names: concept_0..7, ghost, late.
    """
    table = pd.read_csv(demo.membership)
    extra = [
        {"instrument": "SZ999998", "concept": "ghost", "start_date": "2016-01-04", "end_date": None},
        {"instrument": "SZ999999", "concept": "ghost", "start_date": "2016-01-04", "end_date": None},
    ]
    extra += [
        {"instrument": inst, "concept": "late", "start_date": "2017-02-01", "end_date": None}
        for inst in demo.instruments[:15]
    ]
    path = tmp_path_factory.mktemp("membership") / "membership.csv"
    pd.concat([table, pd.DataFrame(extra)], ignore_index=True).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------- small HIST models
#: test_model's HIST: two epochs, qlib's default device (``GPU=0``: CUDA where there is one)
SMALL = dict(
    d_feat=6, hidden_size=16, num_layers=1, n_epochs=2, early_stop=2, lr=1e-3, metric="ic", base_model="GRU", seed=3
)
#: the paper options' HIST: one epoch, on the CPU
SMALL_CPU = dict(SMALL, n_epochs=1, early_stop=5, GPU=-1)


def small_hist(demo, preset: dict = SMALL_CPU, **overrides):
    """A small ``HIST`` on the demo's legacy concept files: ``preset``, then ``overrides``."""
    from qlib_hist import HIST

    kwargs = dict(preset, stock2concept=str(demo.stock2concept), stock_index=str(demo.stock_index))
    kwargs.update(overrides)
    return HIST(**kwargs)


# ---------------------------------------------------------------------------------------------- qlib's network
@pytest.fixture
def qlib_on_cpu(monkeypatch):
    """qlib's forward calls ``torch.device(torch.get_device(x))``, which is -1 (an error) for CPU tensors."""
    qlib_hist_mod = pytest.importorskip("qlib.contrib.model.pytorch_hist")
    monkeypatch.setattr(qlib_hist_mod.torch, "get_device", lambda t: "cpu")


# ---------------------------------------------------------------------------------------------- synthetic frames
D_FEAT, T = 6, 10  # Alpha360-like: 6 fields x 10 steps
N_FEATURES = D_FEAT * T
INSTRUMENTS = [f"SH6{i:05d}" for i in range(24)]


def synthetic_frame(
    n_days: int, seed: int, start: str = "2020-01-01", n_stocks: int = 24, noise: float = 0.1
) -> pd.DataFrame:
    """Alpha360-like frame: feature column f*T + t is field f at step t; the label is a function of the last step."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n_days)
    index = pd.MultiIndex.from_product([dates, INSTRUMENTS[:n_stocks]], names=["datetime", "instrument"])
    x = rng.normal(size=(len(index), N_FEATURES)).astype(np.float32)
    last_f0, last_f1 = x[:, 0 * T + T - 1], x[:, 1 * T + T - 1]
    y = last_f0 - 0.5 * last_f1 + noise * rng.normal(size=len(index))
    columns = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(N_FEATURES)] + [("label", "LABEL0")])
    return pd.DataFrame(np.column_stack([x, y]), index=index, columns=columns)


def legacy_concepts(directory: Path, n_concepts: int, n_indexed: int = 20):
    """A random legacy concept source (density 0.3, seed 0) over the first ``n_indexed`` of :data:`INSTRUMENTS`;
    the others are unknown (no concept)."""
    from qlib_hist.concepts import LegacyConcepts

    matrix = (np.random.default_rng(0).random((n_indexed, n_concepts)) < 0.3).astype(np.float32)
    np.save(directory / "stock2concept.npy", matrix)
    (directory / "stock_index.json").write_text(json.dumps({inst: i for i, inst in enumerate(INSTRUMENTS[:n_indexed])}))
    return LegacyConcepts(directory / "stock2concept.npy", directory / "stock_index.json")


@pytest.fixture(scope="session")
def concept_source(tmp_path_factory):
    """6 concepts over the first 20 of the 24 instruments: the last 4 are unknown."""
    return legacy_concepts(tmp_path_factory.mktemp("concepts"), n_concepts=6)


@pytest.fixture(scope="session")
def synthetic_batches(concept_source):
    """(train, valid): 16 and 6 days of :func:`synthetic_frame` as daily batches."""
    from qlib_hist.batches import build_daily_batches

    train = build_daily_batches(synthetic_frame(16, seed=1), concept_source, "train", D_FEAT, with_label=True)
    valid = build_daily_batches(
        synthetic_frame(6, seed=2, start="2021-01-01"), concept_source, "valid", D_FEAT, with_label=True
    )
    return train, valid

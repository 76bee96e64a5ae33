"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test tensors are tiny: one intra-op thread is far faster than two on a shared, busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shared_data_dir() -> Path:
    """The shared real-data folder: ``$QLIB_HIST_SHARED_DATA`` or ``../shared/data`` beside the project root."""
    env = os.environ.get("QLIB_HIST_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared data folder; skips the test when it is not there."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found: {path} (set QLIB_HIST_SHARED_DATA)")
    return path


# ---------------------------------------------------------------------------------------------- synthetic market
DEMO_SEGMENTS = {
    "train": ("2016-04-01", "2016-09-30"),
    "valid": ("2016-10-03", "2016-12-30"),
    "test": ("2017-01-02", "2017-03-24"),
}


def init_qlib(provider_uri) -> None:
    """(Re)initialise qlib on ``provider_uri``; other test modules may have pointed it elsewhere."""
    import qlib

    qlib.init(provider_uri=str(provider_uri), region="cn", kernels=1)


def alpha360_handler(demo, with_processors: bool = True):
    from qlib.contrib.data.handler import Alpha360

    init_qlib(demo.provider_uri)
    processors = dict(infer_processors=[], learn_processors=[{"class": "DropnaLabel"}])
    if with_processors:
        processors = dict(
            infer_processors=[
                {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
                {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
            ],
            learn_processors=[{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
        )
    return Alpha360(
        instruments=demo.market, start_time=demo.start, end_time=DEMO_SEGMENTS["test"][1],
        fit_start_time=DEMO_SEGMENTS["train"][0], fit_end_time=DEMO_SEGMENTS["train"][1], **processors,
    )


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

    return DatasetH(alpha360_handler(demo, with_processors=False), segments={"train": ("2016-01-04", "2016-06-30"), "valid": DEMO_SEGMENTS["valid"]})

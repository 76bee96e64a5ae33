"""Behaviour pinned across releases: predictions bit-identical to the ones the 0.1.0 code made, and a model
pickled by 0.1.0 loading and predicting the same in this release.

``tests/fixtures/release_0.1.0.npz`` holds predictions (and ``explain`` parts) of small fits on the synthetic
provider, made by qlib-hist 0.1.0 on this project's machine with ``python tests/make_release_fixtures.py`` at that
release; ``hist_0.1.0.pkl`` is a fitted model pickled by it; ``release_0.1.0.json`` says which CPU kernels and torch
made them.
Exact equality is the contract: same seed on CPU, same predictions. On another CPU kernel set (torch's
``get_cpu_capability``: AVX2, AVX512, ...) or torch build, float32 kernels round differently in the last bits, so
there the check is a tolerance of 1e-4 instead (a behaviour change moves predictions by far more). Regenerate only
from a release commit, never from the code under test.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from release_cases import CASES, fit_case

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def release() -> dict:
    with np.load(FIXTURES / "release_0.1.0.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def assert_same():
    """Exact on the kernels and torch that made the fixtures, within 1e-4 elsewhere (see the module docstring)."""
    made = json.loads((FIXTURES / "release_0.1.0.json").read_text())
    same_build = (
        made["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and made["torch"] == torch.__version__
    )
    if same_build:
        return np.testing.assert_array_equal
    return lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_predictions_bit_identical_to_release(name, demo, demo_dataset, release, assert_same):
    model = fit_case(name, demo, demo_dataset)
    pred = model.predict(demo_dataset, "test")
    assert_same(pred.to_numpy(), release[f"{name}/pred"])
    if f"{name}/explain" in release:
        parts = model.explain(demo_dataset, "test")[["concept", "hidden_concept", "individual", "bias"]]
        assert_same(parts.to_numpy(np.float32), release[f"{name}/explain"])


def test_pickle_from_release_loads_and_predicts(demo, demo_dataset, release, assert_same):
    model = pickle.loads((FIXTURES / "hist_0.1.0.pkl").read_bytes())
    assert model.fitted
    # the pickle names the demo's concept files by the paths they had when it was written: point it at this run's
    model.stock2concept, model.stock_index = str(demo.stock2concept), str(demo.stock_index)
    assert_same(model.predict(demo_dataset, "test").to_numpy(), release["pickled/pred"])

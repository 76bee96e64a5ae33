"""Write ``tests/fixtures/release_*.npz`` and ``hist_*.pkl`` with the installed qlib-hist (run at a release).

python tests/make_release_fixtures.py
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import qlib_hist  # noqa: E402
from qlib_hist.demo_data import write_demo_provider  # noqa: E402

import conftest  # noqa: E402
from release_cases import CASES, fit_case  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    from qlib.data.dataset import DatasetH

    demo = write_demo_provider(Path(tempfile.mkdtemp()) / "demo", n_stocks=40, n_days=320, seed=0)
    dataset = DatasetH(conftest.alpha360_handler(demo), segments=conftest.DEMO_SEGMENTS)
    arrays = {}
    for name in sorted(CASES):
        model = fit_case(name, demo, dataset)
        arrays[f"{name}/pred"] = model.predict(dataset, "test").to_numpy()
        if name == "lstm_table_paper":
            parts = model.explain(dataset, "test")[["concept", "hidden_concept", "individual", "bias"]]
            arrays[f"{name}/explain"] = parts.to_numpy(np.float32)
        if name == "gru_legacy_ic":
            (HERE / "fixtures" / f"hist_{qlib_hist.__version__}.pkl").write_bytes(pickle.dumps(model))
            arrays["pickled/pred"] = arrays[f"{name}/pred"]
    np.savez_compressed(HERE / "fixtures" / f"release_{qlib_hist.__version__}.npz", **arrays)
    print({k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()

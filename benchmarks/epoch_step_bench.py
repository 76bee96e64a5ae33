"""One CPU train pass of the qlib_hist found first on ``sys.path``: 20 synthetic days of 300 stocks, Alpha360's
360 features, 100 legacy concepts, LSTM 64 x 2, one thread.

    python benchmarks/epoch_step_bench.py LABEL          # "LABEL min_seconds median_seconds" of 3 timed epochs
    python benchmarks/epoch_step_bench.py --pairs 8      # fp32 against bf16 autocast, alternated epochs

The first form prints after one warm-up epoch; ``benchmarks/cpu_epoch_ab.sh BASE`` runs it alternately against
another commit's package, so that both share the machine's load (the loop's own cost, not the data's). The second
times ``precision: fp32`` and ``bf16`` train epochs in alternated pairs (the order flips each pair) and prints each
pair and the median ratio bf16 / fp32: what bf16 buys on a CPU with avx512_bf16 or AMX (elsewhere it is refused).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qlib_hist.batches import build_daily_batches
from qlib_hist.concepts import LegacyConcepts
from qlib_hist.network import HISTModel
from qlib_hist.settings import TrainSettings
from qlib_hist.training import Trainer


def synthetic_batches():
    """The 20 days of 300 stocks (seeded), as one training segment."""
    rng = np.random.default_rng(0)
    n_days, n_stocks, n_features = 20, 300, 360
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    inst = [f"SH6{i:05d}" for i in range(n_stocks)]
    index = pd.MultiIndex.from_product([dates, inst], names=["datetime", "instrument"])
    x = rng.normal(size=(len(index), n_features)).astype(np.float32)
    y = rng.normal(size=len(index))
    cols = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(n_features)] + [("label", "LABEL0")])
    df = pd.DataFrame(np.column_stack([x, y]), index=index, columns=cols)
    d = Path(tempfile.mkdtemp())
    np.save(d / "s2c.npy", (rng.random((n_stocks, 100)) < 0.03).astype(np.float32))
    (d / "idx.json").write_text(json.dumps({s: i for i, s in enumerate(inst)}))
    return build_daily_batches(df, LegacyConcepts(d / "s2c.npy", d / "idx.json"), "train", 6, with_label=True)


def make_trainer(precision: str = "fp32") -> Trainer:
    """A seeded HIST (LSTM 64 x 2) and its trainer; ``precision`` is passed only when not fp32 (older releases have
    no such setting)."""
    torch.manual_seed(0)
    net = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model="LSTM")
    extra: dict = {} if precision == "fp32" else {"precision": precision}
    settings = TrainSettings(n_epochs=3, seed=0, **extra)
    return Trainer(net, torch.optim.Adam(net.parameters(), lr=1e-4), settings, torch.device("cpu"))


def timed_epoch(trainer: Trainer, batches) -> float:
    tic = time.perf_counter()
    trainer.train_epoch(batches)
    return time.perf_counter() - tic


def main(argv: list) -> None:
    torch.set_num_threads(1)
    batches = synthetic_batches()
    if argv[:1] == ["--pairs"]:
        trainers = {p: make_trainer(p) for p in ("fp32", "bf16")}
        for trainer in trainers.values():
            trainer.train_epoch(batches)  # warm-up
        ratios = []
        for pair in range(int(argv[1])):
            order = ("fp32", "bf16") if pair % 2 == 0 else ("bf16", "fp32")
            seconds = {p: timed_epoch(trainers[p], batches) for p in order}
            ratios.append(seconds["bf16"] / seconds["fp32"])
            print(f"pair {pair}: fp32 {seconds['fp32']:.2f} s, bf16 {seconds['bf16']:.2f} s, ratio {ratios[-1]:.2f}")
        spread = f"min {min(ratios):.2f}, max {max(ratios):.2f}"
        print(f"bf16/fp32 median {np.median(ratios):.2f} ({spread}), {len(ratios)} pairs")
        return
    trainer = make_trainer()
    trainer.train_epoch(batches)  # warm-up
    times = [timed_epoch(trainer, batches) for _ in range(3)]
    print(argv[0], min(times), sorted(times)[1])


if __name__ == "__main__":
    main(sys.argv[1:])

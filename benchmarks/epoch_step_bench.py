"""One CPU train pass of the qlib_hist found first on ``sys.path``: 20 synthetic days of 300 stocks, Alpha360's
360 features, 100 legacy concepts, LSTM 64 x 2, one thread; prints ``LABEL min_seconds median_seconds`` of 3 timed
epochs after one warm-up. ``benchmarks/cpu_epoch_ab.sh BASE`` runs it alternately against another commit's package,
so that both share the machine's load (the loop's own cost, not the data's)."""

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

torch.set_num_threads(1)
rng = np.random.default_rng(0)
n_days, n_stocks, F = 20, 300, 360
dates = pd.bdate_range("2020-01-01", periods=n_days)
inst = [f"SH6{i:05d}" for i in range(n_stocks)]
index = pd.MultiIndex.from_product([dates, inst], names=["datetime", "instrument"])
x = rng.normal(size=(len(index), F)).astype(np.float32)
y = rng.normal(size=len(index))
cols = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(F)] + [("label", "LABEL0")])
df = pd.DataFrame(np.column_stack([x, y]), index=index, columns=cols)
d = Path(tempfile.mkdtemp())
np.save(d / "s2c.npy", (rng.random((n_stocks, 100)) < 0.03).astype(np.float32))
(d / "idx.json").write_text(json.dumps({s: i for i, s in enumerate(inst)}))
batches = build_daily_batches(df, LegacyConcepts(d / "s2c.npy", d / "idx.json"), "train", 6, with_label=True)
torch.manual_seed(0)
net = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model="LSTM")
trainer = Trainer(
    net, torch.optim.Adam(net.parameters(), lr=1e-4), TrainSettings(n_epochs=3, seed=0), torch.device("cpu")
)
trainer.train_epoch(batches)  # warm-up
times = []
for _ in range(3):
    tic = time.perf_counter()
    trainer.train_epoch(batches)
    times.append(time.perf_counter() - tic)
print(sys.argv[1], min(times), sorted(times)[1])

"""K members' train epoch, sequential against batched (``ensemble_mode``), on the synthetic days of
``epoch_step_bench.py`` (20 days of 300 stocks, 360 features, 100 concepts, LSTM 64 x 2).

    python benchmarks/ensemble_step_bench.py --members 5 --pairs 4                  # CPU, one thread
    python benchmarks/ensemble_step_bench.py --members 5 --pairs 4 --device cuda    # a GPU

Each pair times one epoch of the K members trained one after another (K ``Trainer.train_epoch``) and one epoch of
the same K trained as one batched network (``BatchedTrainer.train_epoch``), in alternated order; it prints each pair,
one member's epoch for scale, and the median ratio batched / sequential (below 1: batching pays).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch_step_bench import synthetic_batches  # noqa: E402

from qlib_hist.batched import BatchedTrainer  # noqa: E402
from qlib_hist.network import HISTModel  # noqa: E402
from qlib_hist.settings import TrainSettings  # noqa: E402
from qlib_hist.training import Trainer  # noqa: E402


def members_trainers(k: int, device: torch.device) -> List[Trainer]:
    """K seeded HISTs (LSTM 64 x 2) on ``device`` and their trainers (Adam, seeds 0..K-1)."""
    trainers = []
    for member in range(k):
        torch.manual_seed(member)
        net = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model="LSTM").to(device)
        settings = TrainSettings(n_epochs=3, seed=member)
        trainers.append(Trainer(net, torch.optim.Adam(net.parameters(), lr=1e-4), settings, device))
    return trainers


def timed(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads on a CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = synthetic_batches()
    sequential = members_trainers(args.members, device)
    batched = BatchedTrainer(members_trainers(args.members, device))
    running = list(range(args.members))

    def one_after_another() -> None:
        for trainer in sequential:
            trainer.train_epoch(batches)

    def together() -> None:
        batched.train_epoch(batches, running)

    one_after_another()  # warm-up (allocations, kernels chosen)
    together()
    ratios = []
    for pair in range(args.pairs):
        order = [("sequential", one_after_another), ("batched", together)]
        seconds = {name: timed(run, device) for name, run in (order if pair % 2 == 0 else order[::-1])}
        ratios.append(seconds["batched"] / seconds["sequential"])
        print(
            f"pair {pair}: {args.members} members sequential {seconds['sequential']:.3f} s, batched "
            f"{seconds['batched']:.3f} s, one member {seconds['sequential'] / args.members:.3f} s, "
            f"ratio {ratios[-1]:.2f}"
        )
    print(f"median batched / sequential over {args.pairs} pairs: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()

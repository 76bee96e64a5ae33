"""Speed and memory: qlib's HIST (patched to run) vs qlib_hist's HIST on the same handler, kwargs and device.

    python -m benchmarks.speed --provider-uri ../shared/data/cn_csi300 [--device cpu|cuda] [--epochs 3]

Each implementation runs in its own subprocess (so peak memory is its own) and reports:

- median seconds per training epoch, each as its own ``fit`` runs one: qlib = train pass + its eval pass over
  train + eval over valid; ours = train pass + eval over valid (``eval_train=False``, the default). The train pass
  alone is reported too;
- seconds for ``predict`` over the test segment;
- peak RSS during ``fit`` above the RSS before it (psutil sampled every 5 ms), in MB.

Prints each figure and the ratio ours / qlib, and writes ``benchmarks/results/speed_<device>.json`` (the provider
as a path relative to the repository). Run from the repository root.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.config import WORKFLOW
from benchmarks.paths import HERE, ROOT, SHARED, repo_relative
from qlib_hist._io import atomic_write_text

#: the speed runs' own segments (dates), shorter than the cpu-quick table's
SEGMENTS = {
    "train": ("2015-01-01", "2016-12-31"),
    "valid": ("2017-01-01", "2017-12-31"),
    "test": ("2018-01-01", "2018-12-31"),
}

if TYPE_CHECKING:
    from typing_extensions import Self


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak - base`` is the extra memory of the watched block, in bytes.

    Before taking ``base`` it collects garbage and hands freed heap back to the OS (glibc ``malloc_trim``): without
    that, memory freed while loading the dataset stays in the process and is reused by ``fit``, and the figure
    swings between identical runs (see benchmarks/README.md).
    """

    def __init__(self, interval: float = 0.005) -> None:
        import ctypes
        import gc

        import psutil

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: the base may include freed heap
            pass
        self.process, self.interval = psutil.Process(), interval
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def qlib_epoch_timer(model) -> list[tuple[float, float]]:
    """Wrap qlib HIST's ``train_epoch`` and ``test_epoch`` to record (train seconds, epoch start) per epoch."""
    marks = []
    train_epoch = model.train_epoch

    def timed_train_epoch(*args, **kwargs):
        tic = time.perf_counter()
        train_epoch(*args, **kwargs)
        marks.append((tic, time.perf_counter() - tic))

    model.train_epoch = timed_train_epoch
    return marks


def measure(impl: str, args: argparse.Namespace) -> dict:
    """Runs inside the subprocess: fit + predict one implementation; returns its figures (seconds, MB)."""
    import numpy as np
    import qlib
    import torch
    from qlib.data.dataset import DatasetH

    from benchmarks.config import PROFILES, WORKFLOW, handler_config, hist_kwargs
    from benchmarks.run import build_concepts
    from qlib_hist.qlib_edge.handler_cache import cached_handler

    qlib.init(provider_uri=str(args.provider_uri), region=WORKFLOW["qlib_init"]["region"], kernels=2)
    profile = dict(PROFILES["cpu-quick"], n_epochs=args.epochs, early_stop=args.epochs + 1)
    handler = handler_config(args.market, SEGMENTS["train"][0], SEGMENTS["test"][1], SEGMENTS["train"])
    dataset = DatasetH(cached_handler(handler, args.provider_uri, args.cache_dir), segments=SEGMENTS)
    concepts = build_concepts(
        profile, Path(args.provider_uri), args.market, Path(args.cache_dir), ["qlib_hist"], sw_csv=args.sw_csv
    )
    # no model_path: both start from their own random init
    kwargs = hist_kwargs(
        profile,
        stock2concept=str(concepts["legacy"].stock2concept),
        stock_index=str(concepts["legacy"].stock_index_npy),
        seed=0,
        GPU=0 if args.device == "cuda" else -1,
    )
    if impl == "qlib":
        from benchmarks.qlib_patched import PatchedQlibHIST

        model = PatchedQlibHIST(**kwargs)
        marks = qlib_epoch_timer(model)
    else:
        from qlib_hist import HIST

        model = HIST(**kwargs)
    torch.manual_seed(0)
    with PeakRSS() as rss:
        tic = time.perf_counter()
        model.fit(dataset)
        fit_seconds = time.perf_counter() - tic
    if impl == "qlib":
        starts = [m[0] for m in marks] + [tic + fit_seconds]
        epoch_seconds = [b - a for a, b in itertools.pairwise(starts)]
        train_seconds = [m[1] for m in marks]
    else:
        epoch_seconds = [h["seconds"] for h in model.history]
        train_seconds = [h["train_seconds"] for h in model.history]
    tic = time.perf_counter()
    pred = model.predict(dataset, segment="test")
    predict_seconds = time.perf_counter() - tic
    return {
        "impl": impl,
        "device": args.device,
        "epochs": len(epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "train_pass_seconds": train_seconds,
        "median_epoch_seconds": statistics.median(epoch_seconds),
        "median_train_pass_seconds": statistics.median(train_seconds),
        "predict_seconds": predict_seconds,
        "fit_seconds": fit_seconds,
        "fit_extra_peak_mb": (rss.peak - rss.base) / 2**20,
        "rss_before_fit_mb": rss.base / 2**20,
        "pred_rows": len(pred),
        "pred_finite": bool(np.isfinite(pred.to_numpy()).all()),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: measure both implementations, each in a subprocess; 0 when both ran."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider-uri", default=WORKFLOW["qlib_init"]["provider_uri"])
    parser.add_argument("--market", default=WORKFLOW["market"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    parser.add_argument("--sw-csv", default=str(SHARED / "sw_industry_history.csv"))
    parser.add_argument("--impl", choices=("ours", "qlib"), help=argparse.SUPPRESS)  # subprocess mode
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.provider_uri = Path(args.provider_uri).expanduser().resolve()
    # absolute: the subprocesses run in the repository root
    args.cache_dir = str(Path(args.cache_dir).expanduser().resolve())
    args.sw_csv = str(Path(args.sw_csv).expanduser().resolve())
    if args.impl:
        print("RESULT " + json.dumps(measure(args.impl, args)), flush=True)
        return 0

    results = {}
    for impl in ("qlib", "ours"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.speed",
            "--impl",
            impl,
            "--provider-uri",
            str(args.provider_uri),
            "--market",
            args.market,
            "--device",
            args.device,
            "--epochs",
            str(args.epochs),
            "--cache-dir",
            args.cache_dir,
            "--sw-csv",
            args.sw_csv,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{impl} failed (exit {proc.returncode})")
        results[impl] = json.loads(line[0][len("RESULT ") :])
    rows = [
        ("median epoch seconds", "median_epoch_seconds"),
        ("median train-pass seconds", "median_train_pass_seconds"),
        ("predict seconds (test)", "predict_seconds"),
        ("fit extra peak RSS (MB)", "fit_extra_peak_mb"),
    ]
    print(f"{'figure':<28}{'qlib':>10}{'ours':>10}{'ours/qlib':>11}")
    for label, key in rows:
        q, o = results["qlib"][key], results["ours"][key]
        print(f"{label:<28}{q:>10.2f}{o:>10.2f}{o / q:>11.2f}")
    results["host"] = f"{platform.machine()}, {os.cpu_count()} cores"
    results["segments"] = SEGMENTS
    results["provider_uri"] = repo_relative(args.provider_uri)
    out = Path(args.out or HERE / "results" / f"speed_{args.device}.json")
    atomic_write_text(out, json.dumps(results, indent=1))
    print(f"wrote {repo_relative(out.resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

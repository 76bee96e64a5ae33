"""Speed and memory: qlib's HIST (patched to run) vs qlib_hist's HIST on the same handler, kwargs and device.

    python -m benchmarks.speed --provider-uri ../shared/data/cn_csi300 [--device cpu|cuda] [--epochs 3]
    python -m benchmarks.speed --device cuda --precision fp32 bf16 --shared 8     # the GPU table
    python -m benchmarks.speed --precision fp32 bf16 --threads 1   # a CPU with avx512_bf16/AMX: fp32 against bf16

Rows (:data:`ROWS`): ``qlib``; ``ours``. With ``--device cuda`` also ``ours_plain`` (ours with the loop as it was
before 0.6: each day copied from the host, each step's loss read back at once), ``ours_graphs`` (``cuda_graphs``),
``ours_ensemble5`` (``ensemble: 5`` trained batched: its epoch is the five members' together) and, for ``bf16`` in
``--precision``, ``ours_bf16`` (``precision: bf16`` with ``cuda_graphs``); on a CPU, ``bf16`` in ``--precision``
adds ``ours_bf16_cpu`` (``precision: bf16``, eager; the CPU must report avx512_bf16 or AMX); ``--shared N`` runs
N copies of the fastest of ours side by side on the one GPU. Each row runs in its own subprocess (so peak memory is
its own) and reports:

- median seconds per training epoch, each as its own ``fit`` runs one: qlib = train pass + its eval pass over
  train + eval over valid; ours = train pass + eval over valid (``eval_train=False``, the default). The train pass
  alone is reported too;
- seconds for ``predict`` over the test segment;
- peak RSS during ``fit`` above the RSS before it (psutil sampled every 5 ms), in MB; on CUDA the peak GPU memory
  (``torch.cuda.max_memory_allocated``), in MB.

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

from benchmarks import script_parser
from benchmarks.config import WORKFLOW
from benchmarks.paths import HERE, ROOT, SHARED, repo_relative
from qlib_hist.atomic_files import atomic_write_text
from qlib_hist.training import BF16_CPU_FLAGS, cpu_has_bf16

#: the speed runs' own segments (dates), shorter than the cpu-quick table's
SEGMENTS = {
    "train": ("2015-01-01", "2016-12-31"),
    "valid": ("2017-01-01", "2017-12-31"),
    "test": ("2018-01-01", "2018-12-31"),
}

#: row -> HIST kwargs it adds (``qlib`` is qlib's HIST); ``ours_plain`` also restores the per-day host loop
ROWS: dict[str, dict | None] = {
    "qlib": None,
    "ours_plain": {},
    "ours": {},
    "ours_graphs": {"cuda_graphs": True},
    "ours_bf16": {"cuda_graphs": True, "precision": "bf16"},
    "ours_ensemble5": {"ensemble": 5, "ensemble_mode": "batched"},
    "ours_bf16_cpu": {"precision": "bf16"},
}


def rows_for(device: str, precisions: list[str]) -> list[str]:
    """The rows a run measures: qlib and ours on a CPU (with bf16, ours in bf16 too); on CUDA the fp32 paths and,
    with bf16, the bf16 one."""
    if device == "cpu":
        return ["qlib", "ours"] + (["ours_bf16_cpu"] if "bf16" in precisions else [])
    rows = ["qlib", "ours_plain", "ours", "ours_graphs", "ours_ensemble5"] if "fp32" in precisions else ["qlib"]
    return rows + (["ours_bf16"] if "bf16" in precisions else [])


def plain_loop() -> None:
    """``ours_plain``: the loop before 0.6, in this process: days copied from the host at each step, and each
    step's loss read back before the next (the per-step host sync)."""
    import qlib_hist.training as training

    training.CHECK_EVERY = 1
    training.Trainer.on_device = lambda self, batches: batches  # type: ignore[method-assign]


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

    if args.threads:
        torch.set_num_threads(args.threads)
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

        if impl == "ours_plain":
            plain_loop()
        model = HIST(**kwargs, **(ROWS[impl] or {}))
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        tic = time.perf_counter()
        model.fit(dataset)
        fit_seconds = time.perf_counter() - tic
    if impl == "qlib":
        starts = [m[0] for m in marks] + [tic + fit_seconds]
        epoch_seconds = [b - a for a, b in itertools.pairwise(starts)]
        train_seconds = [m[1] for m in marks]
    elif "member" in model.history[0]:  # a batched ensemble: an epoch is its members' longest record
        epochs = sorted({h["epoch"] for h in model.history})
        epoch_seconds = [max(h["seconds"] for h in model.history if h["epoch"] == e) for e in epochs]
        train_seconds = [max(h["train_seconds"] for h in model.history if h["epoch"] == e) for e in epochs]
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
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
    }


FIGURES = [
    ("median epoch s", "median_epoch_seconds"),
    ("median train pass s", "median_train_pass_seconds"),
    ("predict s (test)", "predict_seconds"),
    ("fit extra peak RSS MB", "fit_extra_peak_mb"),
    ("peak GPU memory MB", "gpu_peak_mb"),
]


def print_table(results: dict) -> None:
    """Each figure of each row, and its ratio to qlib's (``x0.20`` = a fifth of qlib's)."""
    for label, key in FIGURES:
        if results["qlib"].get(key) is None:
            continue
        base = results["qlib"][key]
        cells = [f"{row} {r[key]:.2f} (x{r[key] / base:.2f})" for row, r in results.items() if row != "qlib"]
        print(f"{label:<22} qlib {base:.2f} | " + " | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    """Command line: measure both implementations, each in a subprocess; 0 when both ran."""
    parser = script_parser("benchmarks.speed", __doc__)
    parser.add_argument("--provider-uri", default=WORKFLOW["qlib_init"]["provider_uri"])
    parser.add_argument("--market", default=WORKFLOW["market"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    parser.add_argument("--sw-csv", default=str(SHARED / "sw_industry_history.csv"))
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    parser.add_argument("--shared", type=int, default=0, help="also run N copies of ours side by side (CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of each row (default: torch's own)")
    parser.add_argument("--impl", choices=tuple(ROWS), help=argparse.SUPPRESS)  # subprocess mode
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.provider_uri = Path(args.provider_uri).expanduser().resolve()
    # absolute: the subprocesses run in the repository root
    args.cache_dir = str(Path(args.cache_dir).expanduser().resolve())
    args.sw_csv = str(Path(args.sw_csv).expanduser().resolve())
    if args.impl:
        print("RESULT " + json.dumps(measure(args.impl, args)), flush=True)
        return 0

    if args.threads < 0:
        parser.error(f"--threads must be 0 (torch's own) or more, not {args.threads}")
    if args.device == "cpu" and args.shared:
        parser.error("--shared is a CUDA row: use it with --device cuda")
    if args.device == "cpu" and "bf16" in args.precision and not cpu_has_bf16():
        flags = " or ".join(BF16_CPU_FLAGS)
        parser.error(f"--precision bf16 on a CPU needs one that reports {flags}: this one does not")

    def command(impl: str) -> list[str]:
        return [
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
            "--threads",
            str(args.threads),
        ]

    def finished(impl: str, proc: subprocess.CompletedProcess) -> dict:
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{impl} failed (exit {proc.returncode})")
        return json.loads(line[0][len("RESULT ") :])

    results: dict = {}
    for impl in rows_for(args.device, args.precision):
        results[impl] = finished(impl, subprocess.run(command(impl), capture_output=True, text=True, cwd=ROOT))
    if args.shared:
        singles = [r for r in results if r.startswith("ours") and "ensemble" not in r]  # one model each
        fastest = min(singles, key=lambda r: results[r]["median_epoch_seconds"])
        procs = [
            subprocess.Popen(command(fastest), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            for _ in range(args.shared)
        ]
        outputs = [p.communicate() for p in procs]  # reads both pipes to the end (no deadlock on a full pipe)
        runs = [
            finished(fastest, subprocess.CompletedProcess(p.args, p.returncode, *out)) for p, out in zip(procs, outputs)
        ]
        results[f"{fastest} x{args.shared} shared"] = {
            **runs[0],
            "median_epoch_seconds": statistics.median(r["median_epoch_seconds"] for r in runs),
            "median_train_pass_seconds": statistics.median(r["median_train_pass_seconds"] for r in runs),
            "predict_seconds": statistics.median(r["predict_seconds"] for r in runs),
            "runs": len(runs),
        }
    print_table(results)
    results["host"] = f"{platform.machine()}, {os.cpu_count()} cores"
    results["segments"] = SEGMENTS
    results["provider_uri"] = repo_relative(args.provider_uri)
    out = Path(args.out or HERE / "results" / f"speed_{args.device}.json")
    atomic_write_text(out, json.dumps(results, indent=1))
    print(f"wrote {repo_relative(out.resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

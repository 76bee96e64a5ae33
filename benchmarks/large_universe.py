"""Forward+backward cost of one trading day as the universe grows: qlib's HISTModel vs ours.

    python -m benchmarks.large_universe [--sizes 300 800 2000 5000] [--device cpu|cuda] [--repeats 3]

Synthetic day: N stocks, Alpha360-shaped features ``[N, 360]``, 400 concepts with each stock in 3 of them
(the scale of SW levels 1-3), LSTM encoder, hidden size 64, the same weights in both models. Each (model, N) runs in
its own subprocess; after one untimed warm-up pass it reports the median seconds of a forward pass plus
``loss.backward()``, and the peak memory
above the process's memory before the first pass (CPU: RSS sampled every 5 ms; CUDA: ``max_memory_allocated``).
qlib's forward is patched only for its CPU crash. Writes ``benchmarks/results/large_universe_<device>.json`` (paths
in a failed row's error relative to the repository). Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from benchmarks import script_parser
from benchmarks.paths import HERE, ROOT, relative_traceback, repo_relative
from qlib_hist.atomic_files import atomic_write_text

N_CONCEPTS, CONCEPTS_PER_STOCK = 400, 3


def measure(impl: str, n: int, device: str, repeats: int) -> dict:
    """Runs inside the subprocess: ``repeats`` timed passes of one model over ``n`` stocks (seconds, MB)."""
    import torch

    from benchmarks.speed import PeakRSS

    torch.manual_seed(0)
    if impl == "qlib":
        from qlib.contrib.model.pytorch_hist import HISTModel

        from benchmarks.qlib_patched import cpu_pandas3_patches
    else:
        from contextlib import nullcontext as cpu_pandas3_patches  # type: ignore[assignment]

        from qlib_hist.network import HISTModel
    net = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model="LSTM").to(device)
    x = torch.randn(n, 360, device=device)
    concepts = torch.zeros(n, N_CONCEPTS, device=device)
    concepts[
        torch.arange(n).repeat_interleave(CONCEPTS_PER_STOCK), torch.randint(0, N_CONCEPTS, (n * CONCEPTS_PER_STOCK,))
    ] = 1.0
    label = torch.randn(n, device=device)
    seconds = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as rss, cpu_pandas3_patches():
        for step in range(repeats + 1):  # the first pass warms up the kernels and is not timed
            tic = time.perf_counter()
            net.zero_grad()
            loss = ((net(x, concepts) - label) ** 2).mean()
            loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if step:
                seconds.append(time.perf_counter() - tic)
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else (rss.peak - rss.base) / 2**20
    return {
        "impl": impl,
        "n": n,
        "device": device,
        "median_seconds": statistics.median(seconds),
        "seconds": seconds,
        "peak_mb": peak_mb,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: both models at every size, each in a subprocess; 0 when done (failed sizes are rows too)."""
    parser = script_parser("benchmarks.large_universe", __doc__)
    parser.add_argument("--sizes", nargs="+", type=int, default=[300, 800, 2000, 5000])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one[0], int(args.one[1]), args.device, args.repeats)), flush=True)
        return 0
    rows: list[dict] = []
    print(f"{'N':>6} {'qlib s':>9} {'ours s':>9} {'ratio':>6} {'qlib MB':>9} {'ours MB':>9} {'ratio':>6}")
    for n in args.sizes:
        got = {}
        for impl in ("qlib", "ours"):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.large_universe",
                    "--device",
                    args.device,
                    "--repeats",
                    str(args.repeats),
                    "--one",
                    impl,
                    str(n),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=False,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            error = relative_traceback(proc.stderr[-500:])
            got[impl] = json.loads(line[0][7:]) if line else {"impl": impl, "n": n, "error": error}
        rows.extend(got.values())
        q, o = got["qlib"], got["ours"]
        if "error" in q or "error" in o:
            print(f"{n:>6} failed: {q.get('error') or o.get('error')}")
            continue
        time_ratio = o["median_seconds"] / q["median_seconds"]
        print(
            f"{n:>6} {q['median_seconds']:>9.3f} {o['median_seconds']:>9.3f} {time_ratio:>6.2f}"
            f" {q['peak_mb']:>9.0f} {o['peak_mb']:>9.0f} {o['peak_mb'] / max(q['peak_mb'], 1e-9):>6.2f}",
            flush=True,
        )
    out = HERE / "results" / f"large_universe_{args.device}.json"
    host = f"{platform.machine()}, {os.cpu_count()} cores"
    atomic_write_text(out, json.dumps({"host": host, "rows": rows}, indent=1))
    print(f"wrote {repo_relative(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

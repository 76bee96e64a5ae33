"""Forward+backward cost of one trading day as the universe grows: qlib's HISTModel vs ours.

    python benchmarks/large_universe.py [--sizes 300 800 2000 5000] [--device cpu|cuda] [--repeats 3]

Synthetic day: N stocks, Alpha360-shaped features ``[N, 360]``, 400 concepts with each stock in 3 of them
(the scale of SW levels 1-3), LSTM encoder, hidden size 64, the same weights in both models. Each (model, N) runs in
its own subprocess; after one untimed warm-up pass it reports the median seconds of a forward pass plus
``loss.backward()``, and the peak memory
above the process's memory before the first pass (CPU: RSS sampled every 5 ms; CUDA: ``max_memory_allocated``).
qlib's forward is patched only for its CPU crash. Writes ``benchmarks/results/large_universe_<device>.json``.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

N_CONCEPTS, CONCEPTS_PER_STOCK = 400, 3


def measure(impl: str, n: int, device: str, repeats: int) -> dict:
    import torch

    from benchmarks.speed import PeakRSS

    torch.manual_seed(0)
    if impl == "qlib":
        from benchmarks.qlib_patched import cpu_pandas3_patches
        from qlib.contrib.model.pytorch_hist import HISTModel
    else:
        from contextlib import nullcontext as cpu_pandas3_patches

        from qlib_hist.network import HISTModel
    net = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model="LSTM").to(device)
    x = torch.randn(n, 360, device=device)
    concepts = torch.zeros(n, N_CONCEPTS, device=device)
    concepts[torch.arange(n).repeat_interleave(CONCEPTS_PER_STOCK),
             torch.randint(0, N_CONCEPTS, (n * CONCEPTS_PER_STOCK,))] = 1.0
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
    return {"impl": impl, "n": n, "device": device, "median_seconds": statistics.median(seconds), "seconds": seconds,
            "peak_mb": peak_mb, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[300, 800, 2000, 5000])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one[0], int(args.one[1]), args.device, args.repeats)), flush=True)
        return 0
    rows = []
    print(f"{'N':>6} {'qlib s':>9} {'ours s':>9} {'ratio':>6} {'qlib MB':>9} {'ours MB':>9} {'ratio':>6}")
    for n in args.sizes:
        got = {}
        for impl in ("qlib", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats),
                                   "--one", impl, str(n)], capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            got[impl] = json.loads(line[0][7:]) if line else {"impl": impl, "n": n, "error": proc.stderr[-500:]}
        rows.extend(got.values())
        q, o = got["qlib"], got["ours"]
        if "error" in q or "error" in o:
            print(f"{n:>6} failed: {q.get('error') or o.get('error')}")
            continue
        print(f"{n:>6} {q['median_seconds']:>9.3f} {o['median_seconds']:>9.3f} {o['median_seconds'] / q['median_seconds']:>6.2f}"
              f" {q['peak_mb']:>9.0f} {o['peak_mb']:>9.0f} {o['peak_mb'] / max(q['peak_mb'], 1e-9):>6.2f}", flush=True)
    from qlib_hist._io import atomic_write_text

    out = HERE / "results" / f"large_universe_{args.device}.json"
    atomic_write_text(out, json.dumps({"host": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

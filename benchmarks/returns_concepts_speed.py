"""Speed of ``qlib-hist concepts from-returns``: a real market and a 5,000-stock synthetic one.

    python -m benchmarks.returns_concepts_speed --provider-uri ../shared/data/cn_csi300

1. the provider's market (csi300 here), monthly refreshes from the first day a window fits to the calendar's end;
2. the demo generator's market with 5,000 stocks (written once into the cache folder), monthly refreshes.

Default settings (window 120, clusters 10,40,120, market-neutral). Writes ``results/returns_concepts_speed.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks import script_parser
from benchmarks.paths import HERE, repo_relative
from qlib_hist.atomic_files import atomic_write_text
from qlib_hist.concepts.report import read_calendar
from qlib_hist.concepts.returns import ReturnConceptSpec, concepts_from_returns
from qlib_hist.demo_data import write_demo_provider


def timed(provider: Path, market: str, spec: ReturnConceptSpec) -> dict:
    """One build from the first day a window fits to the calendar's end: seconds and what it made."""
    calendar = read_calendar(provider)
    start, end = str(calendar[spec.window + 1].date()), str(calendar[-1].date())
    tic = time.perf_counter()
    table, stats = concepts_from_returns(provider, market, start, end, spec)
    return {
        "provider": repo_relative(provider),
        "market": market,
        "start": start,
        "end": end,
        "seconds": round(time.perf_counter() - tic, 2),
        "refreshes": stats.refreshes,
        "stock_refreshes": stats.clustered,
        "memberships": len(table),
        "concepts": int(table["concept"].nunique()),
        "summary": stats.describe(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("benchmarks.returns_concepts_speed", __doc__)
    parser.add_argument("--provider-uri", required=True)
    parser.add_argument("--market", default="csi300")
    parser.add_argument("--stocks", type=int, default=5000, help="stocks of the synthetic market")
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    args = parser.parse_args(argv)
    spec = ReturnConceptSpec()
    results = {
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "spec": spec.__dict__ | {"clusters": list(spec.clusters)},
    }
    results["real"] = timed(Path(args.provider_uri).expanduser().resolve(), args.market, spec)
    print(results["real"])
    demo_dir = Path(args.cache_dir).resolve() / f"demo_{args.stocks}"
    if not (demo_dir / "demo_meta.json").exists():
        write_demo_provider(demo_dir, n_stocks=args.stocks, n_days=700, seed=0)
    results["synthetic"] = timed(demo_dir / "provider", "demo", spec)
    print(results["synthetic"])
    atomic_write_text(HERE / "results" / "returns_concepts_speed.json", json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

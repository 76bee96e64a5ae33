"""Benchmark table and plots from the per-run JSON files that :mod:`benchmarks.run` writes.

    python -m benchmarks.report --profile cpu-quick
    python -m benchmarks.report --grid ablation
    python -m benchmarks.report --grid modules --borrow ablation:hist_pit=hist_pit+full

Writes ``benchmarks/results/<name>.md`` (rows: one per model and grid variant, mean ± std over seeds, like qlib's
benchmark README; grid runs add the valid score at the best epoch, the best epoch and the fit time; a model that
crashed is a row with its error) and two PNGs beside it: the cumulative excess return (with cost) of each
model's TopkDropout backtest over the test period (mean over seeds), and the monthly mean IC per model.
The page names the provider relative to the repository root.

``--borrow GRID:ROW=AS`` adds the runs of ``ROW`` from another grid's results as the row ``AS`` (``model+variant``),
when they are the same model fitted with the same data and settings as this grid's runs of that model, variant keys
aside (:func:`borrow`): a row two grids share is fitted once. The page says which rows are borrowed.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks import script_parser
from benchmarks.config import portable_kwargs
from benchmarks.grid import DEFAULT, load_grid
from benchmarks.paired import DAILY_KEYS, NW_LAGS, paired_t
from benchmarks.paths import HERE, repo_relative
from benchmarks.run import REPORT_METRICS, ROWS
from qlib_hist.atomic_files import atomic_path, atomic_write_text

LABELS = {
    "hist_pit": "HIST (qlib_hist, point-in-time SW concepts)",
    "hist_legacy": "HIST (qlib_hist, static legacy matrix as of end of train)",
    "hist_paper": "HIST (qlib_hist, paper options, point-in-time SW concepts)",
    "hist_returns": "HIST (qlib_hist, concepts from returns)",
    "hist_sw_returns": "HIST (qlib_hist, SW + concepts from returns)",
    "hist_none": "HIST (qlib_hist, no predefined concept)",
    "qlib_hist": "HIST (qlib.contrib.model.pytorch_hist, as shipped)",
    "qlib_hist_patched": "HIST (qlib's, patched only to run: CPU + pandas 3)",
    "lstm": "LSTM (qlib, Alpha360)",
    "gru": "GRU (qlib, Alpha360)",
    "lightgbm": "LightGBM (qlib, Alpha360)",
}


def load_runs(runs_dir: Path) -> list[dict]:
    """The result dicts of every ``*.json`` in ``runs_dir``, in file-name order."""
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]


def row_of(run: dict) -> str:
    """The table row of a run: its model, or ``<model>+<variant>`` for a grid variant other than ``default``."""
    variant = run.get("variant", DEFAULT)
    return run["model"] if variant == DEFAULT else f"{run['model']}+{variant}"


#: rows whose variant makes them another model than the row's label says
ROW_LABELS = {
    "hist_pit+pretrained_as_is": "qlib's pretrained LSTM file, untrained (hist_pit, every module off, 0 epochs)",
    "hist_pit+lstm_finetune": "qlib's LSTM layout from the pretrained file, fine-tuned (hist_pit, every module off)",
}


def label(row: str, rows: Iterable[str] = ()) -> str:
    """The row's name in tables and legends: the model's label, then the variant (or :data:`ROW_LABELS`').

    ``rows`` are the rows of the same table: a model's default row is named ``<label>, default`` when one of them
    is a variant of that model under the model's label (beside ``<label>, best`` the bare label would be ambiguous).
    """
    if row in ROW_LABELS:
        return ROW_LABELS[row]
    model, _, variant = row.partition("+")
    name = LABELS.get(model, model)
    if not variant and any(r.startswith(f"{model}+") and r not in ROW_LABELS for r in rows):
        variant = DEFAULT
    return f"{name}, {variant}" if variant else name


def rows_in_order(runs: list[dict]) -> list[str]:
    """The rows of ``runs``: models in :data:`LABELS` order, each model's variants in the order they first appear."""
    rows = list(dict.fromkeys(row_of(r) for r in runs))
    models = list(LABELS) + sorted({r["model"] for r in runs} - set(LABELS))
    return sorted(rows, key=lambda row: models.index(row.partition("+")[0]))


def hosts_line(runs: list[dict]) -> str:
    """``host: <host>`` when every run names the same machine, else each host with the count of its runs; a run
    scored on a GPU adds the GPU's name."""
    machines = Counter(run.get("host", "") + _gpu_suffix(run.get("device", "cpu")) for run in runs)
    if len(machines) == 1:
        return f"host: {next(iter(machines))}"
    return "hosts: " + "; ".join(f"{host} ({n} run{'s' if n > 1 else ''})" for host, n in machines.most_common())


def _gpu_suffix(device: str) -> str:
    return "" if device == "cpu" else f", {device}"


def fit_seconds(run: dict) -> float:
    """A run's training time: the sum of its epochs' seconds (a run resumed from its checkpoint counts the epochs
    of every attempt), else its ``fit_seconds``."""
    return float(sum(run["epoch_seconds"])) if run.get("epoch_seconds") else float(run["fit_seconds"])


def n_fits(run: dict) -> int:
    """How many models a run trained: an ``ensemble: K`` run's K, a seed average's members (its ``fits``), else 1."""
    if "fits" in run:
        return int(run["fits"])
    return int(run.get("config", {}).get("kwargs", {}).get("ensemble", 1))


#: result fields that must agree between a borrowed run and this grid's runs of its model
SAME_FIELDS = ("profile", "provider_uri")

#: model kwargs that set the training budget (epochs, early stop, pretraining epochs, fits): a borrowed run must have
#: every trained row's values, even where its own variant sets them, unless the borrow says otherwise
#: (``--borrow-budget``), so that every row of a table gets the same epochs and early stopping
BUDGET_KWARGS = ("n_epochs", "early_stop", "pretrain_epochs", "ensemble")

#: profile settings that are the budget, not the data: the rest (dates, segments, the fit window) are the data
PROFILE_BUDGET = ("n_epochs", "early_stop")


def _kwargs(run: dict) -> dict:
    """The run's model kwargs without the seed, each file kwarg as its file name (:func:`portable_kwargs`)."""
    return portable_kwargs({k: v for k, v in run["config"]["kwargs"].items() if k != "seed"})


def _fixed_kwargs(run: dict) -> dict:
    """The run's model kwargs that its grid variant did not set (:func:`_kwargs`)."""
    return {k: v for k, v in _kwargs(run).items() if k not in run.get("settings", {})}


@functools.cache
def _grid_profile(name: str) -> dict | None:
    """The profile (dates, segments, budget) of the grid file named ``name`` under ``benchmarks/grids`` (its
    ``name`` key); None when no grid file has that name. Read once per name."""
    for path in sorted((HERE / "grids").rglob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if isinstance(spec, dict) and spec.get("name") == name:
            return load_grid(path, list(ROWS)).profile
    return None


def data_settings(run: dict, spec: str) -> dict:
    """The data a run was fitted and scored on: its grid's profile (dates, segments, fit window) without the budget
    (:data:`PROFILE_BUDGET`). Run files record it (``profile_settings``) from 0.8.2 on; for an older file it is read
    from the grid file of the run's ``grid`` name, and with neither, ``SystemExit`` says so (naming ``spec``)."""
    profile = run.get("profile_settings") or _grid_profile(run.get("grid", ""))
    if profile is None:
        raise SystemExit(
            f"--borrow {spec}: cannot tell the data of grid {run.get('grid')!r}'s runs: their files record no "
            "profile_settings and no grid file under benchmarks/grids has that name"
        )
    profile = json.loads(json.dumps(profile))  # tuples as lists, as a run file holds them
    return {k: v for k, v in profile.items() if k not in PROFILE_BUDGET}


def _nearest_row(kwargs: dict, peers: list[dict]) -> tuple[str, dict, list[str]]:
    """The row of ``peers`` whose model kwargs (:func:`_kwargs`) differ from ``kwargs`` in the fewest keys (a tie goes
    to the row that trains fewer models, then to the first in the table's order), the keys ``kwargs`` sets otherwise
    (with its values), and the keys that row sets and ``kwargs`` leaves unset."""
    diffs: dict[str, tuple[dict, list[str]]] = {}
    fits: dict[str, int] = {}
    for peer in peers:
        theirs = _kwargs(peer)
        row = row_of(peer)
        other = {k: v for k, v in kwargs.items() if k not in theirs or theirs[k] != v}
        diffs.setdefault(row, (other, sorted(set(theirs) - set(kwargs))))
        fits.setdefault(row, n_fits(peer))
    order = rows_in_order(peers)
    nearest = min(diffs, key=lambda row: (sum(map(len, diffs[row])), fits[row], order.index(row)))
    return (nearest, *diffs[nearest])


def _check_borrow(spec: str, run: dict, peers: list[dict], peer_data: list[dict], own_budget: bool) -> None:
    """``SystemExit`` naming the first field by which a borrowed ``run`` may not sit beside ``peers`` (this grid's
    runs of its model, ``peer_data`` their :func:`data_settings`): the provider or profile, the data, a trained
    row's budget, or a model kwarg that neither run's variant sets."""
    theirs, own = _kwargs(run), set(run.get("settings", {})) - set(BUDGET_KWARGS)
    mine = data_settings(run, spec)
    for peer, ours in zip(peers, peer_data):
        for key in SAME_FIELDS:
            if run.get(key) != peer.get(key):
                raise SystemExit(
                    f"--borrow {spec}: {key} {run.get(key)!r} differs from {row_of(peer)}'s {peer.get(key)!r}"
                )
        for key in sorted(set(mine) | set(ours)):
            if mine.get(key) != ours.get(key):
                raise SystemExit(
                    f"--borrow {spec}: the data's {key} {mine.get(key)!r} differs from {row_of(peer)}'s "
                    f"{ours.get(key)!r}"
                )
        peer_kwargs = _kwargs(peer)
        for key in BUDGET_KWARGS if not own_budget and peer_kwargs.get("n_epochs") != 0 else ():
            if theirs.get(key) != peer_kwargs.get(key):
                raise SystemExit(
                    f"--borrow {spec}: model kwarg {key}={theirs.get(key)!r} differs from {row_of(peer)}'s "
                    f"{peer_kwargs.get(key)!r}: the training budget (--borrow-budget to show the row anyway)"
                )
        fixed = _fixed_kwargs(peer)
        for key in sorted((set(theirs) | set(fixed)) - set(peer.get("settings", {})) - own - set(BUDGET_KWARGS)):
            if theirs.get(key) != fixed.get(key):
                raise SystemExit(
                    f"--borrow {spec}: model kwarg {key}={theirs.get(key)!r} differs from {row_of(peer)}'s "
                    f"{fixed.get(key)!r}"
                )


def borrow(
    results: Path, spec: str, runs: list[dict], own_budget: bool = False, borrowed: Iterable[dict] = ()
) -> list[dict]:
    """The runs ``--borrow GRID:ROW=AS`` adds to ``runs``, relabelled ``AS`` (``model+variant``).

    Each borrowed run must sit beside every finished run of ``runs`` of its model (:func:`_check_borrow`): the same
    profile, provider and data (:func:`data_settings`); the training budget of every trained row
    (:data:`BUDGET_KWARGS`) unless ``own_budget`` (``--borrow-budget``: e.g. qlib's HIST at its own 200 epochs beside
    capped rows); and every model kwarg that neither run's grid variant sets, seeds aside. Its own variant's other
    settings are what its row compares (e.g. ``aux_horizons``, or a whole ``from_workflow`` recipe), and the page
    names each by which it differs from the nearest row (``borrowed_versus``, ``borrowed_settings``,
    ``borrowed_unset``: :func:`_nearest_row`). A seed the row ``AS`` has already, in ``runs`` or in the runs
    ``borrowed`` by an earlier ``--borrow``, is refused. Otherwise ``SystemExit`` names the field.
    """
    grid, _, rest = spec.partition(":")
    row, _, new_row = rest.partition("=")
    if not (grid and row and new_row):
        raise SystemExit(f"--borrow {spec!r}: expected GRID:ROW=AS, e.g. ablation:hist_pit=hist_pit+full")
    model, _, variant = new_row.partition("+")
    mine = [r for r in load_runs(results / grid / "runs") if row_of(r) == row and "metrics" in r]
    if not mine:
        raise SystemExit(f"--borrow {spec}: no finished run of {row!r} in {results / grid / 'runs'}")
    peers = [r for r in runs if r["model"] == model and "config" in r and "metrics" in r]
    if model != mine[0]["model"] or not peers:
        raise SystemExit(f"--borrow {spec}: this grid has no run of model {mine[0]['model']!r} to compare with")
    taken = sorted({r["seed"] for r in [*runs, *borrowed] if row_of(r) == new_row} & {r["seed"] for r in mine})
    if taken:
        raise SystemExit(
            f"--borrow {spec}: this grid's row {new_row} already has seed(s) {', '.join(map(str, taken))}: "
            "borrow as another row name, or only seeds it lacks"
        )
    peer_data = [data_settings(peer, spec) for peer in peers]
    out = []
    for run in mine:
        _check_borrow(spec, run, peers, peer_data, own_budget)
        nearest, changed, unset = _nearest_row(_kwargs(run), peers)
        out.append(
            {
                **run,
                "variant": variant or DEFAULT,
                "borrowed_from": f"{grid}/{row}",
                "borrowed_versus": nearest,
                "borrowed_settings": changed,
                "borrowed_unset": unset,
            }
        )
    return out


def _mean_std(values: list[float], digits: int) -> str:
    """``mean ± std`` of the values that exist (not NaN), ``(k of n)`` after it when only k of n runs do (e.g. runs made
    before a field was recorded), ``n/a`` when none does (e.g. the valid score of a row that trains no epoch)."""
    per_run = [np.atleast_1d(np.asarray(v, dtype=float)) for v in values]  # an ensemble run holds one per member
    present = [v[~np.isnan(v)] for v in per_run]
    have = sum(1 for v in present if len(v))
    if not have:
        return "n/a"
    known = np.concatenate(present)
    cell = f"{known.mean():.{digits}f} ± {known.std(ddof=0):.{digits}f}"
    return cell if have == len(values) else f"{cell} ({have} of {len(values)})"


def summary_table(runs: list[dict]) -> str:
    """Markdown: one row per (model, variant), each metric as mean ± std over its seeds.

    Runs of a grid (they record the early-stopping metric) also get the valid score at the best epoch, the best
    epoch (0-based) and the fit time (:func:`fit_seconds`). A table with an ensemble or seed-average row has a
    ``Fits`` column, the models each run trained (:func:`n_fits`): their cost, which ``Fit s`` and ``Epochs run``
    sum over the members.
    """
    with_valid = any("valid_score" in r for r in runs)
    with_fits = any(n_fits(r) > 1 for r in runs)
    extra = (["Fits"] if with_fits else []) + (["Valid (best epoch)", "Best epoch", "Fit s"] if with_valid else [])
    header = ["Model", "Seeds"] + extra + list(REPORT_METRICS) + ["Epochs run", "Sec/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = rows_in_order(runs)
    for row in rows:
        mine = [r for r in runs if row_of(r) == row]
        ok = [r for r in mine if "metrics" in r]
        if not ok:
            err = mine[0].get("error", "no result")
            seeds = ", ".join(str(r["seed"]) for r in mine)
            lines.append(f"| {label(row, rows)} | {seeds} | crashed: `{err[:120]}` |" + " |" * (len(header) - 3))
            continue
        cells = [label(row, rows), ", ".join(str(r["seed"]) for r in ok)]
        if with_fits:
            cells.append("/".join(sorted({str(n_fits(r)) for r in ok})))
        if with_valid:
            cells.append(_mean_std([r.get("valid_score", np.nan) for r in ok], 4))
            cells.append(_mean_std([r.get("best_epoch", np.nan) for r in ok], 1))
            cells.append(f"{np.mean([fit_seconds(r) for r in ok]):.0f}")
        cells += [_mean_std([r["metrics"].get(metric, np.nan) for r in ok], 4) for metric in REPORT_METRICS]
        epochs = [len(r["epoch_seconds"]) for r in ok if r.get("epoch_seconds")]
        seconds = [np.median(r["epoch_seconds"]) for r in ok if r.get("epoch_seconds")]
        some = "" if len(epochs) == len(ok) else f" ({len(epochs)} of {len(ok)})"  # runs before epochs were kept
        cells.append(f"{np.mean(epochs):.1f}{some}" if epochs else "n/a")
        fit = f"fit {np.mean([r['fit_seconds'] for r in ok]):.0f}s"
        cells.append(f"{np.mean(seconds):.0f}{some}" if seconds else fit)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the metrics :func:`margins` compares
MARGIN_METRICS = ("IC", "Rank IC")


def untrained(runs: list[dict]) -> bool:
    """Whether ``runs`` train no epoch (``n_epochs: 0``): scored as loaded, so every seed gives the same figures."""
    return bool(runs) and all(r.get("config", {}).get("kwargs", {}).get("n_epochs") == 0 for r in runs)


def margins(runs: list[dict], versus: str) -> str:
    """Markdown: each row's lead over the row ``versus`` on :data:`MARGIN_METRICS`, as a difference of means and in
    units of the larger of the two rows' seed standard deviations (ddof 0, as in :func:`summary_table`); ``+inf`` or
    ``-inf`` when both spreads are 0 over two or more seeds (or both rows are untrained), ``n/a (1 seed)`` when the
    rows share one seed, whose spread is unknown rather than 0.

    The means and spreads are taken over the seeds both rows have; an :func:`untrained` row has one value whatever
    the seed, so it stands beside every seed of the other row. A row with other ``Fits`` than ``versus`` says so: a
    5-fit row's lead over a 1-fit row is bought with 5 fits.

    Beside each lead, the paired test over test days (:func:`benchmarks.paired.paired_t`): the Newey–West t of the
    daily differences, each day's value averaged over the same seeds; where only some of those seeds' run files
    hold the daily series (files made before ``daily_rank_ic`` was recorded), over those seeds, named in the cell;
    ``n/a`` where none does."""
    by_row: dict[str, dict[int, dict]] = {}
    for run in runs:
        if "metrics" in run:
            by_row.setdefault(row_of(run), {})[run["seed"]] = run
    if versus not in by_row:
        raise ValueError(f"--versus {versus!r}: no finished run of that row (rows: {sorted(by_row)})")
    header = ["Row", "Fits", "Seeds"] + [
        f"{m} {part}" for m in MARGIN_METRICS for part in ("lead", "in std", f"paired t (NW {NW_LAGS})")
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = rows_in_order(runs)
    for row in rows:
        if row == versus or row not in by_row:
            continue
        pairs = pair_by_seed(by_row[row], by_row[versus])
        if not pairs:
            continue
        fits = {n_fits(run) for pair in pairs.values() for run in pair}
        deterministic = untrained(list(by_row[row].values())) and untrained(list(by_row[versus].values()))
        cells = [label(row, rows), "/".join(str(n) for n in sorted(fits)), ", ".join(map(str, pairs))]
        for metric in MARGIN_METRICS:
            cells += lead_over(pairs, metric, deterministic).cells()
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Lead:
    """One row's lead over another on one metric, over the seeds both have (:func:`lead_over`)."""

    lead: float  # mean of mine minus mean of theirs
    in_std: float  # lead / the larger seed std (ddof 0); ±inf when both are 0; NaN with one seed (not measured)
    t: float  # the paired Newey–West t over test days; NaN where no shared seed has the daily series on both sides
    t_seeds: tuple[int, ...] = ()  # the seeds the t is over, where only some shared seeds have the daily series

    def cells(self) -> list[str]:
        """The three cells of :func:`margins`: lead, in std, paired t (naming its seeds where it is over some)."""
        if np.isnan(self.in_std):
            in_std = "n/a (1 seed)"
        elif np.isinf(self.in_std):
            in_std = f"{self.in_std:+}"
        else:
            in_std = "0" if self.lead == 0 else f"{self.in_std:+.1f}"
        t = "n/a" if np.isnan(self.t) else f"{self.t:+.1f}"
        if self.t_seeds:
            t += f" (seed{'s' if len(self.t_seeds) > 1 else ''} {', '.join(map(str, self.t_seeds))})"
        return [f"{self.lead:+.4f}", in_std, t]


def lead_over(pairs: dict[int, tuple[dict, dict]], metric: str, deterministic: bool = False) -> Lead:
    """The lead of the first run of each pair (seed -> (mine, theirs), :func:`pair_by_seed`) over the second on
    ``metric`` (``IC`` or ``Rank IC``); ``deterministic``: both rows are untrained, so a spread of 0 over one seed is
    measured. The paired t is over the pairs whose runs both hold the metric's daily series (files made before a
    series was recorded lack it): all of them, or the seeds it names (``t_seeds``)."""
    mine = np.array([pair[0]["metrics"][metric] for pair in pairs.values()])
    theirs = np.array([pair[1]["metrics"][metric] for pair in pairs.values()])
    lead, spread = float(mine.mean() - theirs.mean()), float(max(mine.std(), theirs.std()))
    if spread > 0:
        in_std = lead / spread
    elif len(pairs) < 2 and not deterministic:  # one seed: its spread is not measured, not zero
        in_std = float("nan")
    else:
        in_std = 0.0 if lead == 0 else float(np.sign(lead) * np.inf)
    key = DAILY_KEYS[metric]
    daily = daily_pairs(pairs, key)
    t = paired_t([pair[0] for pair in daily.values()], [pair[1] for pair in daily.values()], key) if daily else np.nan
    return Lead(lead, in_std, float(t), tuple(daily) if 0 < len(daily) < len(pairs) else ())


def daily_pairs(pairs: dict[int, tuple[dict, dict]], key: str) -> dict[int, tuple[dict, dict]]:
    """The pairs (:func:`pair_by_seed`) whose two runs both hold the daily series ``key``: a paired test is over
    these (files made before a series was recorded lack it)."""
    return {seed: pair for seed, pair in pairs.items() if key in pair[0] and key in pair[1]}


def pair_by_seed(mine: dict[int, dict], theirs: dict[int, dict]) -> dict[int, tuple[dict, dict]]:
    """seed -> (my run, their run) over the seeds both have; an :func:`untrained` side pairs with every seed."""
    if untrained(list(theirs.values())):
        return {seed: (run, next(iter(theirs.values()))) for seed, run in sorted(mine.items())}
    if untrained(list(mine.values())):
        return {seed: (next(iter(mine.values())), run) for seed, run in sorted(theirs.items())}
    return {seed: (mine[seed], theirs[seed]) for seed in sorted(set(mine) & set(theirs))}


def _mean_over_seeds(runs: list[dict], key: str) -> dict:
    """row -> mean over seeds of the daily series ``key`` (a pd.Series indexed by date)."""
    out = {}
    for row in rows_in_order(runs):
        series = [pd.Series(r[key]) for r in runs if row_of(r) == row and key in r]
        if series:
            frame = pd.concat(series, axis=1)
            frame.index = pd.to_datetime(frame.index)
            out[row] = frame.mean(axis=1).sort_index()
    return out


def plot(runs: list[dict], out_prefix: Path) -> list[Path]:
    """The two PNGs (cumulative excess return, monthly IC) at ``<out_prefix>_*.png``; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def line_plot(lines: pd.DataFrame, title: str, ylabel: str, suffix: str, **style) -> Path:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        lines.plot(ax=ax, lw=1, **style)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = _save(fig, out_prefix.with_name(out_prefix.name + suffix))
        plt.close(fig)
        return path

    rows = rows_in_order(runs)
    excess = pd.DataFrame(
        {label(m, rows): daily.cumsum() for m, daily in _mean_over_seeds(runs, "daily_excess").items()}
    )
    daily_ic = _mean_over_seeds(runs, "daily_ic")
    monthly_ic = pd.DataFrame({label(m, rows): s.resample("ME").mean() for m, s in daily_ic.items()})
    monthly_ic.index = monthly_ic.index.strftime("%Y-%m")
    return [
        line_plot(
            excess,
            "Cumulative excess return with cost (TopkDropout 50/5 vs SH000300), mean over seeds",
            "cumulative sum of daily excess return",
            "_excess_return.png",
        ),
        line_plot(
            monthly_ic,
            "Monthly mean of daily IC on the test segment, mean over seeds",
            "IC",
            "_monthly_ic.png",
            marker=".",
        ),
    ]


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: write ``<results-dir>/<name>.md`` and its plots; 0 when done."""
    parser = script_parser("benchmarks.report", __doc__)
    parser.add_argument(
        "--profile", "--grid", dest="name", default="cpu-quick", help="the results to report: results/<name>/runs"
    )
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--command", default=None, help="the command line that produced the runs, for the page")
    parser.add_argument(
        "--borrow", action="append", default=[], metavar="GRID:ROW=AS", help="add another grid's runs of ROW as AS"
    )
    parser.add_argument(
        "--borrow-budget",
        action="append",
        default=[],
        metavar="GRID:ROW=AS",
        help="as --borrow, for runs at their own training budget (n_epochs, early_stop, pretrain_epochs, ensemble)",
    )
    parser.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="ROW",
        help="add each row's lead over ROW in seed standard deviations (repeatable)",
    )
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    runs = load_runs(results / args.name / "runs")
    if not runs:
        raise SystemExit(f"no runs in {results / args.name / 'runs'}")
    borrowed: list[dict] = []
    for spec, own_budget in [(spec, False) for spec in args.borrow] + [(spec, True) for spec in args.borrow_budget]:
        borrowed += borrow(results, spec, runs, own_budget, borrowed)
    runs += borrowed
    lead_tables = {}
    for versus in args.versus:  # refused before any file is written
        try:
            lead_tables[versus] = margins(runs, versus)
        except ValueError as err:
            parser.error(str(err))
    pngs = plot(runs, results / args.name)
    provider = repo_relative(runs[0]["provider_uri"])
    page = [f"# Benchmark `{args.name}`", "", f"Provider: `{provider}`; {hosts_line(runs)}.", ""]
    if args.command:
        page += ["Made by:", "", "```bash", args.command, "```", ""]
    page += [summary_table(runs), ""]
    for row in dict.fromkeys(row_of(r) for r in borrowed):
        first = next(r for r in borrowed if row_of(r) == row)
        changed = ", ".join(
            [f"`{k}: {json.dumps(v)}`" for k, v in first["borrowed_settings"].items()]
            + [f"`{k}` unset" for k in first["borrowed_unset"]]
        )
        page += [
            f"Row `{row}` is `{first['borrowed_from']}`'s runs, fitted once for both grids: the same model and data, "
            + (f"set as `{first['borrowed_versus']}` but for {changed}." if changed else "with the same settings."),
            "",
        ]
    rows = rows_in_order(runs)
    for versus, lead_table in lead_tables.items():
        page += [
            f"Lead over {label(versus, rows)}: the difference of the means over the seeds both rows have (an "
            "untrained row has one value for every seed), and that difference in units of the larger of the two "
            "rows' seed standard deviations over those seeds (population, ddof 0; the sample standard deviation, "
            "ddof 1, is √(n/(n−1)) times larger over n seeds: 1.22 at 3, 1.12 at 5, 1.06 at 9, so divide an "
            "'in std' figure by that factor to read it in sample standard deviations). The paired t is the "
            f"Newey–West t-statistic ({NW_LAGS} lags) of the mean daily difference over the test days both rows "
            "scored, each day's value averaged over the same seeds (`benchmarks/paired.py`). It holds the fits "
            "fixed, so it measures day-to-day noise and not seed-to-seed: a lead needs |t| ≥ 2 and a lead in seed "
            "standard deviations. A t followed by seeds is over those seeds only: the other shared seeds' run files "
            "predate that daily series. `n/a`: no shared seed's run files hold it.",
            "",
            lead_table,
            "",
        ]
    page += [
        "Mean ± std (population, ddof 0) over the seeds listed (± 0 with one seed). Sec/epoch is the median wall "
        "time of the run's epochs, on whatever else the machine was doing then; `speed.py` has the clean timings.",
        "",
    ]
    page += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    atomic_write_text(results / f"{args.name}.md", "\n".join(page))
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())

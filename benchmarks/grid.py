"""A benchmark grid: models x setting variants x seeds on one profile, from a small YAML file.

    name: ablation                 # results go to benchmarks/results/<name>/runs, the table to <name>.md
    profile: cpu-quick             # a profile of benchmarks.config.PROFILES: dates, epochs
    settings: {n_epochs: 20, early_stop: 5}     # what the grid changes in that profile (optional)
    models: [hist_pit]             # rows of benchmarks.run (hist_pit, lightgbm, ...)
    seeds: [0, 1, 2]
    variants:                      # variant -> the model kwargs it sets; {} is the row as benchmarks.run has it
      default: {}
      hidden_topk: {hidden_topk: 3}
      best: {from_workflow: workflow_config_hist_best.yaml}   # the model kwargs of a qrun YAML (see below)
    variant_models:                # variant -> the models it runs on (optional; a variant not named runs on all)
      hidden_topk: [hidden_topk]
    row_seeds:                     # row -> its seeds, instead of the grid's (optional)
      hist_pit+best: [0, 1, 2, 3, 4, 5, 6, 7, 8]

``row_seeds`` gives a row (``model`` or ``model+variant``, as the table names it) other seeds than the grid's:
the members a seed average of ``K`` seeds ``s..s+K-1`` needs beyond the grid's seeds (see
:mod:`benchmarks.seed_average`), so only the rows averaged pay for them.

``from_workflow`` (a path relative to the repository root, or absolute) takes the variant's kwargs from the
``task.model.kwargs`` of a qrun workflow YAML, without its file kwargs (``model_path``, the concept files: each run
passes its own) and its seed (the grid's); other keys beside it override the file's. So a table scores the very
YAML a user runs, not a copy of its settings.

Each (model, variant, seed) is one run, :class:`RunKey`; its result file is ``<row>_seed<k>.json`` where the row is
the model, or ``<model>+<variant>`` for a variant other than ``default``, so a grid of one ``default`` variant
writes the same files as the plain ``--models/--seeds`` command line. The file is read as qrun reads YAML
(:func:`benchmarks.config.load_workflow`) and checked here, before anything runs: an unknown key, model, profile
setting or a name that cannot be a file name is a :class:`GridError` naming the file and the key.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.config import FILE_KWARGS, PROFILES, load_workflow
from benchmarks.paths import ROOT
from qlib_hist.config_dates import ConfigDateError

DEFAULT = "default"  # the variant that changes nothing
GRID_KEYS = ("name", "profile", "settings", "models", "seeds", "variants", "variant_models", "row_seeds")
FROM_WORKFLOW = "from_workflow"  # a variant's kwargs from a qrun YAML's task.model.kwargs
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # names that are safe in a file name and hold no "+"


class GridError(ValueError):
    """A grid file or grid argument that cannot be run: the message names the file and the key."""


@dataclass(frozen=True, order=True)
class RunKey:
    """One run of a grid: a model row, a setting variant, a seed."""

    model: str
    variant: str
    seed: int

    @property
    def row(self) -> str:
        """The table row: the model, or ``<model>+<variant>``."""
        return self.model if self.variant == DEFAULT else f"{self.model}+{self.variant}"

    @property
    def file_name(self) -> str:
        """The run's result file: ``<row>_seed<k>.json``."""
        return f"{self.row}_seed{self.seed}.json"


@dataclass
class Grid:
    """What to run: ``models`` x ``variants`` x ``seeds`` on ``profile`` (dates and epochs)."""

    name: str
    profile_name: str
    profile: dict
    models: list[str]
    seeds: list[int]
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {DEFAULT: {}})
    source: str = "command line"  # the grid file, for messages and the report
    variant_models: dict[str, list[str]] = field(default_factory=dict)  # variant -> its models; absent: all
    row_seeds: dict[str, list[int]] = field(default_factory=dict)  # row -> its seeds; absent: the grid's seeds

    def runs(self) -> list[RunKey]:
        """Every run, seed-major (the first seed of every row first, so a stopped grid has whole seeds); the seeds
        only some rows have (``row_seeds``) after the grid's."""
        extra = sorted({s for seeds in self.row_seeds.values() for s in seeds} - set(self.seeds))
        keys = [
            RunKey(m, v, s)
            for s in [*self.seeds, *extra]
            for v in self.variants
            for m in self.models
            if m in self.variant_models.get(v, self.models)
        ]
        return [key for key in keys if key.seed in self.row_seeds.get(key.row, self.seeds)]


def profile_with(name: str, settings: dict | None, where: str) -> dict:
    """A copy of ``PROFILES[name]`` with ``settings`` (n_epochs, early_stop, dates) applied; ``where`` names the
    source in errors."""
    if name not in PROFILES:
        raise GridError(f"{where}: profile {name!r} is not one of {sorted(PROFILES)}")
    profile = copy.deepcopy(PROFILES[name])
    for key, value in (settings or {}).items():
        if key not in profile:
            raise GridError(f"{where}: settings.{key} is not a profile setting (one of {sorted(profile)})")
        if key == "segments":
            value = _segments(value, where)
        elif key == "fit":
            value = tuple(_pair(value, f"{where}: settings.fit"))
        elif key in ("n_epochs", "early_stop") and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise GridError(f"{where}: settings.{key} must be a positive integer, got {value!r}")
        profile[key] = value
    return profile


def _pair(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise GridError(f"{where} must be [start, end], got {value!r}")
    return [str(v) for v in value]


def _segments(value: Any, where: str) -> dict:
    if not isinstance(value, dict) or set(value) != {"train", "valid", "test"}:
        raise GridError(f"{where}: settings.segments must have train, valid and test, got {value!r}")
    return {seg: tuple(_pair(span, f"{where}: settings.segments.{seg}")) for seg, span in value.items()}


def _names(values: Any, key: str, where: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise GridError(f"{where}: {key} must be a non-empty list, got {values!r}")
    for value in values:
        if not isinstance(value, str) or not _NAME.match(value):
            raise GridError(f"{where}: {key} entry {value!r} is not a name (letters, digits, _ . -)")
    if len(set(values)) != len(values):
        raise GridError(f"{where}: {key} lists a name twice: {values}")
    return values


def workflow_kwargs(path: str | Path, where: str) -> dict:
    """The model kwargs of the qrun workflow YAML ``path`` (relative to the repository root unless absolute),
    without the file kwargs and the seed; ``where`` names the grid key in errors."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise GridError(f"{where}: {FROM_WORKFLOW} must be the path of a qrun YAML, got {path!r}")
    full = Path(path) if Path(path).is_absolute() else ROOT / path
    if not full.is_file():
        raise GridError(f"{where}: {FROM_WORKFLOW}: {full} does not exist")
    try:
        kwargs = load_workflow(full)["task"]["model"]["kwargs"]
    except (KeyError, TypeError):
        raise GridError(f"{where}: {FROM_WORKFLOW}: {full} has no task.model.kwargs") from None
    except Exception as err:  # ruamel's errors carry the line
        raise GridError(f"{where}: {FROM_WORKFLOW}: {full} is not YAML: {err}") from None
    if not isinstance(kwargs, dict):
        raise GridError(f"{where}: {FROM_WORKFLOW}: task.model.kwargs of {full} must be a mapping")
    return {key: value for key, value in kwargs.items() if key not in (*FILE_KWARGS, "seed")}


def _variant_models(spec: Any, variants: dict, models: list[str], source: str) -> dict[str, list[str]]:
    """``variant_models`` checked: each key a variant of the grid, each value a non-empty list of its models."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise GridError(f"{source}: variant_models must be a mapping of variant -> models, got {spec!r}")
    for variant, names in spec.items():
        if variant not in variants:
            raise GridError(f"{source}: variant_models.{variant} is not a variant (one of {sorted(variants)})")
        for model in _names(names, f"variant_models.{variant}", source):
            if model not in models:
                raise GridError(f"{source}: variant_models.{variant}: {model!r} is not in models {models}")
    return {variant: list(names) for variant, names in spec.items()}


def _seeds(seeds: Any, where: str) -> list[int]:
    """``seeds`` checked: a non-empty list of distinct integers; ``where`` names the key in errors."""
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        raise GridError(f"{where} must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{where} lists a seed twice: {seeds}")
    return list(seeds)


def _row_seeds(spec: Any, rows: list[str], source: str) -> dict[str, list[int]]:
    """``row_seeds`` checked: each key a row of the grid (``model`` or ``model+variant``), each value its seeds."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise GridError(f"{source}: row_seeds must be a mapping of row -> seeds, got {spec!r}")
    for row, seeds in spec.items():
        if row not in rows:
            raise GridError(f"{source}: row_seeds.{row} is not a row of the grid (one of {rows})")
        _seeds(seeds, f"{source}: row_seeds.{row}")
    return {row: list(seeds) for row, seeds in spec.items()}


def make_grid(
    name: str,
    profile: str,
    models: list[str],
    seeds: list[int],
    known_models: list[str],
    variants: dict | None = None,
    settings: dict | None = None,
    source: str = "command line",
    variant_models: dict | None = None,
    row_seeds: dict | None = None,
) -> Grid:
    """A checked :class:`Grid`; ``known_models`` are the rows the runner can train."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise GridError(f"{source}: name {name!r} is not a name (letters, digits, _ . -)")
    for model in _names(models, "models", source):
        if model not in known_models:
            raise GridError(f"{source}: models: {model!r} is not a benchmark row (one of {sorted(known_models)})")
    seeds = _seeds(seeds, f"{source}: seeds")
    variants = {DEFAULT: {}} if variants is None else variants
    if not isinstance(variants, dict) or not variants:
        raise GridError(f"{source}: variants must be a mapping of name -> model kwargs, got {variants!r}")
    _names(list(variants), "variants", source)
    checked = {}
    for variant, kwargs in variants.items():
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise GridError(f"{source}: variants.{variant} must be a mapping of model kwargs, got {kwargs!r}")
        if "seed" in kwargs:
            raise GridError(f"{source}: variants.{variant} sets seed: seeds come from the grid's seeds")
        if FROM_WORKFLOW in kwargs:
            rest = {k: v for k, v in kwargs.items() if k != FROM_WORKFLOW}
            kwargs = {**workflow_kwargs(kwargs[FROM_WORKFLOW], f"{source}: variants.{variant}"), **rest}
        checked[variant] = kwargs
    grid = Grid(
        name,
        profile,
        profile_with(profile, settings, source),
        list(models),
        seeds,
        checked,
        source,
        _variant_models(variant_models, checked, list(models), source),
    )
    grid.row_seeds = _row_seeds(row_seeds, list(dict.fromkeys(key.row for key in grid.runs())), source)
    return grid


def load_grid(path: str | Path, known_models: list[str]) -> Grid:
    """The :class:`Grid` of a YAML grid file (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    try:
        spec = load_workflow(path)
    except ConfigDateError as err:  # it names the file and the key
        raise GridError(f"grid file {err}") from None
    except Exception as err:  # ruamel's errors carry the line
        raise GridError(f"grid file {path} is not YAML: {err}") from None
    if not isinstance(spec, dict):
        raise GridError(f"grid file {path} must be a mapping with {', '.join(GRID_KEYS)}")
    unknown = sorted(set(spec) - set(GRID_KEYS))
    if unknown:
        raise GridError(f"grid file {path}: unknown key(s) {unknown}; a grid has {', '.join(GRID_KEYS)}")
    missing = [key for key in ("name", "models", "seeds") if key not in spec]
    if missing:
        raise GridError(f"grid file {path}: missing {missing}")
    if spec.get("settings") is not None and not isinstance(spec["settings"], dict):
        raise GridError(f"grid file {path}: settings must be a mapping, got {spec['settings']!r}")
    return make_grid(
        spec["name"],
        spec.get("profile", "cpu-quick"),
        spec["models"],
        spec["seeds"],
        known_models,
        variants=spec.get("variants"),
        settings=spec.get("settings"),
        source=f"grid file {path}",
        variant_models=spec.get("variant_models"),
        row_seeds=spec.get("row_seeds"),
    )

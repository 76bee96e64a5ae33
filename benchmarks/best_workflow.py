"""``workflow_config_hist_best.yaml``, written from the search's choice and nothing else (issue 28).

    python -m benchmarks.best_workflow        # results/search_choice.json -> workflow_config_hist_best.yaml

The file is qlib's HIST benchmark YAML (``workflow_config_hist_Alpha360.yaml``: qlib's segments, handler, records
and backtest) with two things taken from the choice that ``python -m benchmarks.search --report`` fixed on valid:

- ``task.model.kwargs``: the searched settings (lr, loss, weight decay, dropout, width, module switches,
  ``hidden_topk``, concept weights, ``keep_start``, early stop), the search's epoch budget, seed 0, point-in-time
  concepts (``sw_membership.csv``, as every trial had) when the predefined-concept module is on, and qlib's
  pretrained LSTM only at its width (64). The options of a module the choice switches off (the concept table and
  weights, ``hidden_topk``: :data:`qlib_hist.settings.MODULE_OPTIONS`) are left out: they change nothing, and
  ``HIST`` warns about them;
- the train window: the search's train start is a window length before its valid segment (cpu-quick valid starts
  2017: a 2012 start is 5 years); the YAML keeps that length before qlib's valid start (2015: from 2010), and its
  handler starts and fits its processors there, as the trials' did.

Where the screen (``python -m benchmarks.screen``: the recipe with ``market_context``, ``aux_horizons`` or both,
chosen on valid over two windows) has chosen a candidate other than the recipe alone, that candidate's options
(its variant in ``grids/screen_dev.yaml``) join the model kwargs; with the recipe alone chosen, or no choice yet,
the file is the search's alone.

``tests/benchmarks/test_best_workflow.py`` checks that the committed file is what this writes from the committed
choices, so the YAML cannot drift from the search and the screen.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from benchmarks import script_parser
from benchmarks.config import PROFILES, WORKFLOW, WORKFLOW_YAML, load_workflow
from benchmarks.paths import HERE, ROOT, repo_relative
from benchmarks.search import CONCEPT_WEIGHT, MAX_EPOCHS, METRIC, PRETRAINED_HIDDEN, param_problems
from benchmarks.search_records import ROW_KEYS
from qlib_hist.atomic_files import atomic_write_text
from qlib_hist.settings import HISTSettings

BEST_YAML = ROOT / "workflow_config_hist_best.yaml"
CHOICE_JSON = HERE / "results" / "search_choice.json"
PRETRAINED = "benchmarks/LSTM/model_lstm_csi300.pkl"  # the template's, qlib's layout
SCREEN_JSON = HERE / "results" / "screen_choice.json"
SCREEN_GRID = HERE / "grids" / "screen_dev.yaml"
RECIPE_ROW = "hist_pit+best"  # the screen's name for the search's recipe alone
#: the settings a screen candidate may add to the search's recipe
SCREEN_KEYS = ("market_context", "market_temperature", "aux_horizons", "aux_weight")


class ChoiceError(ValueError):
    """A search choice that cannot become a workflow: a setting missing, or a value outside the search space."""


def check_choice(choice: dict, source: str) -> None:
    """Refuse a choice that is not a point of the search space: a setting missing, of another type (``1`` for
    ``true``, ``"1e-4"`` for a number) or outside its range, or a key that is neither a setting nor a table row's
    (trial, score, epochs)."""
    if not isinstance(choice, dict):
        raise ChoiceError(f"{source}: a search choice is a JSON object, got {type(choice).__name__}")
    problems = param_problems(choice, ignore=ROW_KEYS)
    if problems:
        raise ChoiceError(f"{source}: {'; '.join(problems)}")


def train_start(choice: dict) -> str:
    """The YAML's train start: the search's window length (years before cpu-quick's valid start) before qlib's."""
    search_valid = int(PROFILES["cpu-quick"]["segments"]["valid"][0][:4])
    qlib_valid = int(WORKFLOW["task"]["dataset"]["kwargs"]["segments"]["valid"][0][:4])
    years = search_valid - int(choice["train_start"][:4])
    return f"{qlib_valid - years}-01-01"


def screen_options(screen: dict | None, source: str = "the screen's choice") -> dict:
    """The settings the screen's choice (a ``screen_choice.json``) adds to the recipe: the chosen candidate's keys
    beside ``from_workflow`` in ``grids/screen_dev.yaml``; ``{}`` when the recipe alone was chosen or the screen
    has not chosen yet."""
    row = (screen or {}).get("choice")
    if not row or row == RECIPE_ROW:
        return {}
    variants = load_workflow(SCREEN_GRID)["variants"]
    variant = row.removeprefix(RECIPE_ROW.split("+")[0] + "+")
    if variant == row or variant not in variants:
        raise ChoiceError(f"{source}: {row!r} is not a candidate of {repo_relative(SCREEN_GRID)}")
    options = {key: value for key, value in variants[variant].items() if key != "from_workflow"}
    unknown = sorted(set(options) - set(SCREEN_KEYS))
    if unknown:
        raise ChoiceError(f"{source}: {row!r} sets {unknown}, which the screen does not choose")
    return options


def model_kwargs_block(choice: dict, options: dict | None = None) -> str:
    """The YAML lines of ``task.model.kwargs`` (12-space indent) for ``choice`` and the screen's ``options``."""
    lines = [
        ("d_feat", 6),
        ("hidden_size", choice["hidden_size"]),
        ("num_layers", 2),
        ("dropout", choice["dropout"]),
        ("n_epochs", MAX_EPOCHS),
        ("lr", _yaml_float(choice["lr"])),
        ("early_stop", choice["early_stop"]),
        ("metric", "ic"),
        ("loss", choice["loss"]),
        ("weight_decay", choice["weight_decay"]),
        ("base_model", "LSTM"),
    ]
    if choice["hidden_size"] == PRETRAINED_HIDDEN:
        lines.append(("model_path", f'"{PRETRAINED}"'))
    lines += [
        ("keep_start", choice["keep_start"]),
        ("stock2concept", '"sw_membership.csv"   # point in time: qlib-hist concepts from-sw (as the search had)'),
        ("predefined_concepts", choice["predefined_concepts"]),
        ("hidden_concepts", choice["hidden_concepts"]),
        ("individual", choice["individual"]),
        ("hidden_topk", choice["hidden_topk"]),
    ]
    if choice["concept_weight"]:
        lines.append(("concept_weight", f'"{CONCEPT_WEIGHT}"'))
    lines += list((options or {}).items())
    lines += [("seed", 0), ("GPU", 0)]
    unused = set(_switched_off(choice).unused_options())
    return "".join(f"            {key}: {_yaml(value)}\n" for key, value in lines if key not in unused)


def _switched_off(choice: dict) -> HISTSettings:
    """Settings with the choice's module switches (what decides which options are read)."""
    switches = {key: choice[key] for key in ("predefined_concepts", "hidden_concepts", "individual")}
    return HISTSettings.from_kwargs(**switches)[0]


def _confirmed(choice: dict) -> str:
    """``; mean over seeds 0, 1, 2: 0.0779`` for a choice the search confirmed on more seeds, else nothing."""
    summary = choice.get("confirmed")
    if not summary:
        return ""
    return f"; mean over seeds {', '.join(map(str, summary['seeds']))}: {summary['mean']:.4f}"


def _screened(options: dict | None) -> str:
    """``,\n# with aux_horizons from benchmarks/results/screen_choice.json (...)`` where the screen added options."""
    if not options:
        return ""
    return (
        f",\n# with {', '.join(options)} from benchmarks/results/screen_choice.json (the screen's choice on valid over "
        "two windows)"
    )


def _yaml_float(value: float) -> str:
    """``value`` unrounded (Python's shortest repr) in a form every YAML loader reads as a float: YAML 1.1
    (PyYAML) reads ``1e-05`` as a string, so the mantissa gets a point (``1.0e-05``)."""
    text = repr(float(value))
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if exponent and "." not in mantissa else text


def _yaml(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def best_workflow(choice: dict, template: str, source: str = "the choice", options: dict | None = None) -> str:
    """The text of ``workflow_config_hist_best.yaml`` for ``choice`` (a ``search_choice.json``) and the screen's
    ``options`` (:func:`screen_options`), from ``template`` (the text of ``workflow_config_hist_Alpha360.yaml``)."""
    check_choice(choice, source)
    start = train_start(choice)
    needs = (
        "# Needs qlib's cn_data, the pretrained LSTM when hidden_size is 64, and a point-in-time membership table:\n"
        "# `qlib-hist concepts from-sw sw_industry_history.csv sw_membership.csv`.\n"
        if choice["predefined_concepts"]
        else "# Needs qlib's cn_data and the pretrained LSTM when hidden_size is 64; no concept table\n"
        "# (predefined_concepts is off).\n"
    )
    header = (
        "# HIST with the recipe the search chose on the valid segment (issue 28): qlib's HIST benchmark otherwise\n"
        "# (workflow_config_hist_Alpha360.yaml). Written by `python -m benchmarks.best_workflow` from\n"
        f"# benchmarks/results/search_choice.json (trial {choice.get('trial', '?')}, valid IC "
        f"{choice.get(METRIC, float('nan')):.4f}{_confirmed(choice)}){_screened(options)}; do not edit by hand.\n"
        f"{needs}"
        "# Run: qrun workflow_config_hist_best.yaml\n"
    )
    text = re.sub(r"\A(#[^\n]*\n)+", lambda _: header, template, count=1)
    model = re.compile(r"(\n    model:\n(?:        [^\n]*\n)*?        kwargs:\n)((?:            [^\n]*\n)+)")
    text, found = model.subn(lambda m: m.group(1) + model_kwargs_block(choice, options), text, count=1)
    old_start = WORKFLOW["task"]["dataset"]["kwargs"]["segments"]["train"][0]
    for pattern in (r"(\n    start_time: )", r"(\n    fit_start_time: )", r"(\n                train: \[)"):
        text, n = re.subn(pattern + re.escape(old_start), lambda m: m.group(1) + start, text, count=1)
        found += n
    if found != 4:
        raise ChoiceError(f"{repo_relative(WORKFLOW_YAML)}: its model kwargs or train dates are not where expected")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("benchmarks.best_workflow", __doc__)
    parser.add_argument("--choice", default=str(CHOICE_JSON), help="the search's choice (search --report writes it)")
    parser.add_argument("--screen", default=str(SCREEN_JSON), help="the screen's choice (benchmarks.screen writes it)")
    parser.add_argument("--out", default=str(BEST_YAML))
    args = parser.parse_args(argv)
    try:
        choice = json.loads(Path(args.choice).read_text(encoding="utf-8"))
        screen = json.loads(Path(args.screen).read_text(encoding="utf-8")) if Path(args.screen).exists() else None
        options = screen_options(screen, source=args.screen)
        text = best_workflow(choice, WORKFLOW_YAML.read_text(encoding="utf-8"), source=args.choice, options=options)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    atomic_write_text(Path(args.out), text)
    print(f"wrote {repo_relative(args.out)} from {repo_relative(args.choice)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

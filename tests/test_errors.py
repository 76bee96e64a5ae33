"""One error type: every error class of the package is a ``QlibHistError`` (a ``ValueError``), and ``qlib-hist``
turns only those (and ``OSError``) into one line and exit 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import qlib_hist
from qlib_hist import QlibHistError, cli

PACKAGE = Path(qlib_hist.__file__).parent
#: ``raise ValueError`` left in the package: a caller's programming slip, not a user's input (module, function)
INTERNAL_VALUE_ERRORS = {
    ("qlib_hist.training", "evaluate"),
    ("qlib_hist.concepts.membership", "for_rows"),
    ("qlib_hist.static_steps", "pad_day"),
    ("qlib_hist.network", "__init__"),
    ("qlib_hist.batched", "__init__"),  # members the settings already refuse (under 2, cuda_graphs)
    ("qlib_hist.training", "close_epoch"),  # a batched ensemble's valid predictions with weight averaging
}
#: exception classes of the package that are not about the user's input
INTERNAL_CLASSES = {"qlib_hist.concepts.legacy._RefusedGlobal"}  # raised and caught inside the unpickler


def package_modules() -> list:
    return ["qlib_hist", *sorted(m.name for m in pkgutil.walk_packages(qlib_hist.__path__, "qlib_hist."))]


def test_every_error_class_of_the_package_is_a_qlib_hist_error() -> None:
    found = {}
    for name in package_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{name}.{cls.__qualname__}"] = cls
    expected = {
        "qlib_hist.settings.SettingsError",
        "qlib_hist.batches.DataError",
        "qlib_hist.training.TrainingError",
        "qlib_hist.callbacks.CheckpointError",
        "qlib_hist.concepts.base.ConceptError",
        "qlib_hist.frame_store.FrameStoreError",
        "qlib_hist.qlib_edge.rolling.RollingError",
        "qlib_hist.errors.ConfigError",
        "qlib_hist.config_dates.ConfigDateError",
        "qlib_hist.config_dates.DateOutOfRange",
        "qlib_hist.pretrained.PretrainedError",
    }
    assert expected <= set(found)
    strays = [
        name for name, cls in found.items() if name not in INTERNAL_CLASSES and not issubclass(cls, QlibHistError)
    ]
    assert not strays, f"error classes that are not QlibHistError: {strays}"
    assert issubclass(QlibHistError, ValueError)  # `except ValueError` keeps catching them


def _value_errors(path: Path, module: str) -> list:
    """(module, enclosing function) of each ``raise ValueError(...)`` in ``path``."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call):
                if isinstance(child.exc.func, ast.Name) and child.exc.func.id == "ValueError":
                    found.append((module, function))
            visit(child, name)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_user_input_errors_are_not_bare_value_errors() -> None:
    raised = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        raised += _value_errors(path, module)
    assert set(raised) <= INTERNAL_VALUE_ERRORS, f"bare ValueErrors: raise a QlibHistError subclass: {raised}"


# ---------------------------------------------------------------------------------------------- the command line
@pytest.fixture
def failing_command(monkeypatch, tmp_path):
    """``qlib-hist concepts from-sw`` raising the exception it is given."""

    def run(error: BaseException) -> int:
        def command(args):
            raise error

        monkeypatch.setattr(cli, "cmd_from_sw", command)
        return cli.main(["concepts", "from-sw", str(tmp_path / "sw.csv"), str(tmp_path / "m.csv")])

    return run


@pytest.mark.parametrize(
    "error, line",
    [
        (QlibHistError("stock2concept x.npy: the file is empty"), "stock2concept x.npy: the file is empty"),
        (qlib_hist.settings.SettingsError("lr must be >= 0.0, got -1"), "lr must be >= 0.0, got -1"),
        (PermissionError(13, "Permission denied", "/x/out.csv"), "[Errno 13] Permission denied: '/x/out.csv'"),
        (FileNotFoundError(2, "No such file or directory", "sw.csv"), "[Errno 2] No such file or directory: 'sw.csv'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(failing_command, capsys, error, line):
    assert failing_command(error) == 2
    err = capsys.readouterr().err
    assert err == f"qlib-hist: error: {line}\n"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("a bug"),
        KeyError("a bug"),
        ValueError("a bug: a bare ValueError is not the user's"),
        TypeError("a bug"),
    ],
)
def test_other_exceptions_keep_their_traceback(failing_command, capsys, error):
    with pytest.raises(type(error), match="a bug"):
        failing_command(error)
    assert capsys.readouterr().err == ""

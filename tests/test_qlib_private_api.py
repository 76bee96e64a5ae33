"""qlib's private API that rolling retraining relies on is still there (``QLIB_PRIVATE_API`` in
``qlib_hist/qlib_edge/rolling.py``): a qlib release that renames or removes one of these names fails here, with
the name, rather than an hour into a rolling run.

The declared names are read from the module's source (``ast``), so the check runs even when the module itself no
longer imports under the installed qlib.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, Tuple

import pytest

import qlib_hist

ROLLING = Path(qlib_hist.__file__).parent / "qlib_edge" / "rolling.py"
#: what HISTRolling reads of the attributes qlib's ``Rolling.__init__`` sets
ROLLING_ATTRIBUTES = ("conf_path", "exp_name", "step", "train_start", "test_end", "task_ext_conf", "_rid")


def declared() -> Tuple[Dict[str, Tuple[str, ...]], str]:
    """``QLIB_PRIVATE_API`` and ``QLIB_TESTED`` as the module's source writes them."""
    values = {}
    for node in ast.parse(ROLLING.read_text(encoding="utf-8")).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id in ("QLIB_PRIVATE_API", "QLIB_TESTED"):
            values[target.id] = ast.literal_eval(node.value)
    return values["QLIB_PRIVATE_API"], values["QLIB_TESTED"]


def _owner(path: str) -> object:
    """``qlib.contrib.rolling.base.Rolling`` -> the class; ``qlib.model.trainer`` -> the module."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _missing(owner_path: str, name: str) -> str:
    import qlib

    _, tested = declared()
    return (
        f"pyqlib {qlib.__version__}: {owner_path} has no {name!r}, which qlib_hist's rolling (HISTRolling, "
        f"hist_task_train) relies on; it is tested with {tested} (setup.cfg): adapt qlib_hist/qlib_edge/rolling.py "
        "to this qlib or install a tested one"
    )


@pytest.mark.parametrize(
    "owner_path, name",
    [(owner, name) for owner, names in declared()[0].items() for name in names],
    ids=lambda value: str(value).rsplit(".", 1)[-1],
)
def test_qlib_still_has_the_private_name(owner_path, name):
    owner = _owner(owner_path)
    assert hasattr(owner, name), _missing(owner_path, name)
    assert callable(getattr(owner, name)), f"{owner_path}.{name} is no longer a function"


def test_rolling_declares_every_private_name_it_uses():
    """Each ``_name`` HISTRolling overrides from qlib's ``Rolling`` and each ``_name`` the module imports from
    qlib is in ``QLIB_PRIVATE_API`` (a new override or import must be declared, and so checked above)."""
    from qlib.contrib.rolling.base import Rolling

    from qlib_hist.qlib_edge.rolling import QLIB_PRIVATE_API, HISTRolling

    assert QLIB_PRIVATE_API == declared()[0]
    overridden = {
        name
        for name in vars(HISTRolling)
        if name.startswith("_") and not name.startswith("__") and hasattr(Rolling, name)
    }
    undeclared = overridden - set(QLIB_PRIVATE_API["qlib.contrib.rolling.base.Rolling"])
    assert not undeclared, f"HISTRolling overrides qlib's private {sorted(undeclared)}: declare them"
    imported = {
        (node.module, alias.name)
        for node in ast.walk(ast.parse(ROLLING.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qlib")
        for alias in node.names
        if alias.name.startswith("_")
    }
    undeclared_imports = {f"{m}.{n}" for m, n in imported if n not in QLIB_PRIVATE_API.get(m or "", ())}
    assert not undeclared_imports, f"rolling.py imports qlib's private {sorted(undeclared_imports)}: declare them"


def test_qlibs_rolling_still_sets_the_attributes_hist_rolling_reads(tmp_path):
    from qlib_hist.qlib_edge.rolling import HISTRolling

    rolling = HISTRolling(tmp_path / "workflow.yaml", step=5, test_end="2020-01-01")
    missing = [name for name in ROLLING_ATTRIBUTES if not hasattr(rolling, name)]
    assert not missing, _missing("qlib.contrib.rolling.base.Rolling.__init__", ", ".join(missing))
    assert rolling.step == 5 and rolling.conf_path == tmp_path / "workflow.yaml"


def test_the_tested_versions_are_declared_in_the_package_metadata():
    import configparser

    import qlib

    _, tested = declared()
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    requires = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    assert tested in requires, f"setup.cfg's install_requires should pin {tested}"
    low, high = (part.lstrip(">=<") for part in tested.split("pyqlib", 1)[1].split(","))
    version = tuple(int(x) for x in qlib.__version__.split(".")[:3] if x.isdigit())
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split("."))), (
        f"pyqlib {qlib.__version__} is outside the tested {tested}"
    )


def test_a_missing_name_is_reported_by_name(monkeypatch):
    from qlib.contrib.rolling.base import Rolling

    monkeypatch.delattr(Rolling, "_ens_rolling")
    with pytest.raises(AssertionError, match=r"Rolling has no '_ens_rolling'.*pyqlib>=0\.9\.6,<0\.10"):
        test_qlib_still_has_the_private_name("qlib.contrib.rolling.base.Rolling", "_ens_rolling")

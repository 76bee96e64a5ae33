"""qlib-hist: the HIST stock-forecasting model (Xu et al., 2021) as a qlib plugin.

Use ``module_path: qlib_hist`` and ``class: HIST`` in a qlib workflow YAML (and ``class: HISTExplainRecord``,
the qrun record of the explanations, under the same ``module_path``). ``import qlib_hist`` stays light: qlib loads
only when ``HIST`` or ``HISTExplainRecord`` is asked for (everything that imports qlib is in
:mod:`qlib_hist.qlib_edge`).
Every error the package raises about its user's input is a :class:`QlibHistError` (a ``ValueError``).
"""

from typing import Any

from .errors import QlibHistError
from .network import HISTModel, RNNRegressor
from .settings import ConceptSettings, HISTSettings, NetworkSettings, TrainSettings

__version__ = "0.8.3"
__all__ = [
    "HIST",
    "HISTExplainRecord",
    "HISTModel",
    "RNNRegressor",
    "HISTSettings",
    "NetworkSettings",
    "TrainSettings",
    "ConceptSettings",
    "QlibHistError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "HIST":
        from .qlib_edge.model import HIST

        return HIST
    if name == "HISTExplainRecord":  # `module_path: qlib_hist` in a YAML's record list
        from .qlib_edge.record import HISTExplainRecord

        return HISTExplainRecord
    raise AttributeError(f"module 'qlib_hist' has no attribute {name!r}")

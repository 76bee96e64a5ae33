"""qlib-hist: the HIST stock-forecasting model (Xu et al., 2021) as a qlib plugin.

Use ``module_path: qlib_hist`` and ``class: HIST`` in a qlib workflow YAML.
"""

from .network import HISTModel, RNNRegressor

__version__ = "0.1.0"
__all__ = ["HIST", "HISTModel", "RNNRegressor", "__version__"]


def __getattr__(name):  # keep `import qlib_hist` light: qlib loads only when HIST is asked for
    if name == "HIST":
        from .model import HIST

        return HIST
    raise AttributeError(f"module 'qlib_hist' has no attribute {name!r}")

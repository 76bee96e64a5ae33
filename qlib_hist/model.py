"""Where ``HIST`` lived in qlib-hist 0.1.0: kept so that models pickled by it (``qlib_hist.model.HIST``) load.

New code imports ``qlib_hist.HIST`` (or :mod:`qlib_hist.qlib_edge.model`).
"""

from .qlib_edge.model import HIST

__all__ = ["HIST"]

"""The one error type of qlib-hist: a :class:`QlibHistError` says the user's input (a setting, a file, a dataset, a
config, an argument) cannot be used, in one line that names it.

Every error class of the package derives from it (``SettingsError``, ``DataError``, ``ConceptError``,
``TrainingError``, ``CheckpointError``, ``FrameStoreError``, ``RollingError``, ``ConfigDateError``...), and it is a
``ValueError``, so ``except ValueError`` keeps working. ``qlib-hist`` prints a ``QlibHistError`` (or an ``OSError``)
as ``qlib-hist: error: ...`` and exits 2; any other exception is a bug and keeps its traceback. No imports: every
module can raise it.
"""

from __future__ import annotations


class QlibHistError(ValueError):
    """An input of the user's that qlib-hist cannot use; the message names it and what is wrong."""

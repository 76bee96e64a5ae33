"""The base error types of qlib-hist: a :class:`QlibHistError` says the user's input (a setting, a file, a dataset, a
config, an argument) cannot be used, in one line that names it.

Every error class of the package derives from it (``SettingsError``, ``DataError``, ``ConceptError``,
``TrainingError``, ``CheckpointError``, ``FrameStoreError``, ``RollingError``, :class:`ConfigError` and its
``ConfigDateError``...), and it is a ``ValueError``, so ``except ValueError`` keeps working. ``qlib-hist`` prints a
``QlibHistError`` (or an ``OSError``) as ``qlib-hist: error: ...`` and exits 2; any other exception is a bug and
keeps its traceback. No imports: every module can raise them.
"""

from __future__ import annotations


class QlibHistError(ValueError):
    """An input of the user's that qlib-hist cannot use; the message names it and what is wrong."""


class ConfigError(QlibHistError):
    """A config (a workflow YAML, a task) cannot be read or lacks what it needs; the message names the file or key.

    Raised by the edge's readers of workflow YAMLs and recorders, and the base of
    :class:`~qlib_hist.config_dates.ConfigDateError` (a date of a config that pandas cannot hold)."""

"""Atomic file output: every file the package writes appears whole or not at all.

A file is written beside its destination under a temporary name (``.<name>.<pid>.<random>.tmp``) and renamed onto
it only when the write succeeded (:func:`atomic_path`, :func:`atomic_dir`, :func:`atomic_write_bytes`,
:func:`atomic_write_text`); a write that fails names the file the caller asked for, never the temporary file
beside it, and the temporary files of a killed writer are removed by the next write (:func:`remove_stale_temps`).
:func:`check_writable` refuses a destination before any work is done. No qlib, no pandas.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, List, Optional, Union

#: a path as the package's functions take it: a string or a ``pathlib.Path`` (any ``os.PathLike``)
PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: Path) -> List[Path]:
    """Remove ``path``'s temporary files or folders (see :func:`atomic_path`) whose writer process is gone."""
    removed = []
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
                removed.append(tmp)
    return removed


def _naming(err: OSError, path: Union[Path, str]) -> OSError:
    """``err`` (about the temporary file, or naming no file) as the same error naming ``path``."""
    if err.errno is None or not err.strerror:
        return type(err)(f"cannot write {path}: {err}")
    return type(err)(err.errno, err.strerror, str(path))


def _in_temp(err: OSError, tmp: Path, path: Path) -> Optional[str]:
    """What ``err`` names inside the temporary ``tmp`` (the file, or a file of the folder), said of ``path``;
    None when it names no such file (an error about an input, say, is left as it is)."""
    for name in (err.filename, err.filename2):
        if isinstance(name, (str, os.PathLike)):
            text = os.fspath(name)
            if text == str(tmp):
                return str(path)
            if text.startswith(str(tmp) + os.sep):
                return str(path) + text[len(str(tmp)) :]
    return None


@contextlib.contextmanager
def _atomic(
    path: PathLike,
    make: Callable[[Path], Path],
    place: Callable[[Path, Path], None],
    discard: Callable[[Path], None],
) -> Iterator[Path]:
    """The write-beside-then-rename of :func:`atomic_path` and :func:`atomic_dir`: ``make(prefix path)`` makes the
    temporary entry, ``place(tmp, path)`` moves it onto ``path`` after the block, ``discard(tmp)`` removes it after
    any exception. An ``OSError`` about the temporary entry names ``path`` instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    try:
        tmp = make(path.parent / f".{path.name}.{os.getpid()}.")
    except OSError as err:
        raise _naming(err, path) from None
    try:
        try:
            yield tmp
        except OSError as err:
            named = _in_temp(err, tmp, path)
            if named is None:
                raise
            raise _naming(err, named) from None
        try:
            place(tmp, path)
        except OSError as err:
            if err.filename is not None and _in_temp(err, tmp, path) is None:
                raise  # about another file (one of an older entry being replaced), which it names already
            raise _naming(err, path) from None
    except BaseException:
        discard(tmp)
        raise


def _new_file(prefix: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=prefix.name, suffix=".tmp", dir=prefix.parent)
    os.close(fd)
    return Path(tmp)


def _place_file(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    os.replace(tmp, path)


def _remove_file(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def _new_dir(prefix: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix.name, suffix=".tmp", dir=prefix.parent))


def _place_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)  # its errors name the destination's own files
    os.replace(tmp, path)


def atomic_path(path: PathLike) -> ContextManager[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic on POSIX.
    On any exception the temporary file is removed and ``path`` is left untouched. Its name,
    ``.<name>.<pid>.<random>.tmp``, says whose it is: temporary files of ``path`` left by a writer that was killed
    (its process is gone) are removed by the next write to ``path``.

    An ``OSError`` about the temporary file (it cannot be made, written or renamed) is raised as the same error
    naming ``path``: ``[Errno 13] Permission denied: '/x/out.csv'``, not ``'/x/.out.csv.123.ab.tmp'``.
    """
    return _atomic(path, _new_file, _place_file, _remove_file)


def atomic_dir(path: PathLike) -> ContextManager[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an older entry is removed)."""
    return _atomic(path, _new_dir, _place_dir, lambda tmp: shutil.rmtree(tmp, ignore_errors=True))


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable(path: PathLike, what: str, folder: bool = False) -> Path:
    """Fail now, naming ``what`` and the user's ``path``, if a file (or, with ``folder``, a folder) cannot be written
    there; creates the missing parent folders, as the write itself would. Returns the expanded path."""
    path = Path(path).expanduser()
    target = path if folder else path.parent
    if path.is_dir() and not folder:
        raise OSError(f"{what} {path} is a folder: give a file name")
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as err:
        raise OSError(f"{what} {path}: cannot write there ({err.strerror or err})") from None
    return path


def npy_bytes(obj: Any) -> bytes:
    """``np.save`` output as bytes (a dict is pickled, as in qlib's ``csi300_stock_index.npy``)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    return buf.getvalue()


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))

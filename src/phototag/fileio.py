"""Atomic writes: a file or folder appears complete or not at all (temp sibling + rename).

Every output phototag writes (datasets, models, refined tags, prediction files, caches) goes through these, so an
interrupted run never leaves a half-written result that looks complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _temp_prefix(path: Path) -> str:
    """Temporary siblings are named ``.NAME.PID.*``, so a later run can tell whose writer died (kill -9, power cut)."""
    return f".{path.name}.{os.getpid()}."


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.PID.*`` siblings left by writers that no longer run (killed mid-write)."""
    try:
        siblings = list(path.parent.glob(f".{glob.escape(path.name)}.*.*"))
    except OSError:
        return
    for sibling in siblings:
        pid, _, rest = sibling.name[len(path.name) + 2 :].partition(".")
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if rest == "old" and not path.exists():
            # The writer died between moving the user's folder aside and moving the new one in: put it back.
            with contextlib.suppress(OSError):
                os.replace(sibling, path)
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                sibling.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


#: Errors that mean "this output cannot be written here" (disk full, file too large, read-only, no permission).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def _named(err: OSError, path: Path, what: str) -> OSError:
    """A write failure as an OSError naming the output and saying that nothing there changed; others unchanged."""
    if err.errno not in _WRITE_ERRNOS:
        return err
    reason = err.strerror or str(err)
    return type(err)(err.errno, f"Could not write the {what} '{path}' ({reason}); nothing there was changed.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the result the usual permissions instead."""
    mask = _umask()
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for child in path.rglob("*"):
            child.chmod((0o777 if child.is_dir() else 0o666) & ~mask)
    else:
        path.chmod(0o666 & ~mask)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, marker: str, what: str = "output") -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path``, on error it is removed.

    Args:
        path: The folder to create or replace.
        marker: File that identifies a folder of this kind (e.g. ``phototag_model.json``); an existing non-empty
            folder without it is refused rather than replaced.
        what: Name of the kind of folder, for the error message.

    Raises:
        FileExistsError: ``path`` is a non-empty folder that is not of this kind.
    """
    path = Path(path)
    if path.exists() and not (path / marker).exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"Refusing to write a {what} into '{path}': it exists and is not a phototag {what}. "
            "Choose an empty or new folder."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    except OSError as err:
        raise _named(err, path, what) from None
    try:
        yield tmp
        _make_readable(tmp)
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous folder
        elif path.exists():
            backup = path.with_name(f"{_temp_prefix(path)}old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(backup, path)  # put the user's folder back
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _named(err, path, what) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` via a temporary sibling file and a rename."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling file and a rename.

    Raises:
        OSError: The file cannot be written there (disk full, read-only, ...); the message names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    except OSError as err:
        raise _named(err, path, "file") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _make_readable(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _named(err, path, "file") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

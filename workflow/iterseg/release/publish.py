"""Publishing a step's finished outputs into a results folder, each by one rename.

``latest`` points at a results folder researchers read while the workflow runs; a step that
wrote there file by file would leave it half old, half new when killed (or when Snakemake
deletes a job's outputs before re-running it). So a step writes into a staging folder outside
the results folder and, once everything is done, renames each output into place: a folder is
swapped with its old version in one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it (two
renames elsewhere), a file replaced by ``rename(2)``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def staging_dir(preferred: Path, out: Path, name: str) -> Path:
    """Where to stage outputs for ``out``: ``preferred`` when on the same file system, else beside ``out``.

    A rename cannot cross file systems (procdata and results may be on different disks); the
    fallback ``<out's parent>/.<out's name>.<name>`` is still outside ``out`` itself.
    """
    out.mkdir(parents=True, exist_ok=True)
    preferred.parent.mkdir(parents=True, exist_ok=True)
    if _device(preferred.parent) == _device(out):
        return preferred
    return out.parent / f".{out.name}.{name}"


def _device(path: Path) -> int:
    return os.stat(path).st_dev


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; False where the system cannot (not Linux, old kernel, ...)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target`` (same file system), replacing what was there; ``new`` is consumed."""
    if not target.exists() and not target.is_symlink():
        os.rename(new, target)
        return
    if target.is_dir() and not target.is_symlink() and _exchange(new, target):
        shutil.rmtree(new)  # now the old version
        return
    old = new.with_name(new.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    os.rename(new, target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def publish(staging: Path, out: Path, names: Sequence[str]) -> None:
    """Move each of ``names`` from ``staging`` into ``out`` by rename, in order; then remove ``staging``.

    Name the file that indexes the others last (e.g. ``predictions.json``): readers that find it
    find what it lists.
    """
    for name in names:
        source, target = staging / name, out / name
        if source.is_dir():
            replace_dir(source, target)
        else:
            os.replace(source, target)
        logger.debug("published %s", target)
    shutil.rmtree(staging, ignore_errors=True)

"""File-system steps of the atomic writer, and full-disk errors."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil

from tflm import errors

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def is_no_space(err: BaseException) -> bool:
    """Whether `err` says the disk (or quota) is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err)


def no_space(directory: str, written: int) -> errors.InputError:
    """The error for a disk that filled up while writing in `directory`.

    Example:
    >>> "free at least" in str(no_space("/", 5_000_000))
    True
    """
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = 0
    need = max(written - free, 1 << 20)
    return errors.InputError(
        f"No space left on {directory} ({free / 1e6:.0f} MB free; "
        f"{written / 1e6:.0f} MB were written before it ran out): free at "
        f"least {need / 1e6:.0f} MB and rerun. Nothing was replaced; the "
        "partial files were removed."
    )


def tree_size(path: str) -> int:
    """Bytes in the files under `path` (0 if it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def renameat2(source: str, target: str, flags: int) -> bool:
    """Linux `renameat2`; False when unsupported or the target exists."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    result = function(
        _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EEXIST, errno.ENOTEMPTY):
        return False
    if code == errno.ENOENT and flags == _RENAME_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), target)


def exchange(a: str, b: str) -> bool:
    """Swaps two existing paths in one step; False if unsupported."""
    return renameat2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(source: str, target: str) -> bool:
    """Renames unless `target` exists; False (nothing moved) if it does."""
    if renameat2(source, target, _RENAME_NOREPLACE):
        return True
    if os.path.lexists(target):
        return False
    try:  # renameat2 is missing: a plain rename fails on a non-empty folder
        os.rename(source, target)
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    return True


def sync(path: str) -> None:
    """`fsync` of a file or folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(path: str) -> None:
    """Flushes every file and folder under `path` to disk."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                sync(file)
        sync(root)


def make_readable(directory: str) -> None:
    """Gives `directory` the mode a plain `mkdir` would (mkdtemp's is 0700),
    so that a server running as another user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)


def remove(path: str) -> None:
    """Deletes a file or a folder tree, if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)

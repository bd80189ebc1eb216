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


class NoSpaceError(errors.InputError):
    """The disk (or a quota) under `directory` is too full for a write.

    Args:
        directory: where the write goes.
        message: the one-line explanation.
    """

    def __init__(self, directory: str, message: str):
        super().__init__(message)
        self.directory = directory


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged user may still write under `directory` (0 if
    it cannot be read)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def megabytes(size: float) -> str:
    """`size` bytes in MB, with one decimal below 10 MB.

    Example:
    >>> megabytes(1_234_567), megabytes(123_456_789)
    ('1.2', '123')
    """
    return f"{size / 1e6:.1f}" if size < 1e7 else f"{size / 1e6:,.0f}"


def check_space(directory: str, needed: int) -> None:
    """Raises before a write of about `needed` bytes that cannot fit.

    Checking first matters where a writer cannot fail cleanly: HDF5 (Keras
    `save_weights`) crashes the process when the disk fills under it.

    Raises:
        NoSpaceError: fewer than `needed` bytes are free under `directory`.
    """
    free = free_bytes(directory)
    if free < needed:
        raise NoSpaceError(
            directory,
            f"No space left on {directory}: the write needs about "
            f"{megabytes(needed)} MB and {megabytes(free)} MB are free. Free "
            f"at least {megabytes(needed - free)} MB and rerun. Nothing was "
            "written.",
        )


def no_space(directory: str, written: int) -> NoSpaceError:
    """The error for a disk that filled up while writing in `directory`,
    after `written` bytes (since removed).

    Example:
    >>> "ran out after 5.0 MB" in str(no_space("/", 5_000_000))
    True
    """
    free = free_bytes(directory)
    return NoSpaceError(
        directory,
        f"No space left on {directory}: the write ran out after "
        f"{megabytes(written)} MB, so it needs more than the "
        f"{megabytes(free)} MB free there. Free more space and rerun. "
        "Nothing was replaced; the partial files were removed.",
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

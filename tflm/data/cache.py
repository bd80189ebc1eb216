"""The per-user cache folder, and files in it that are checked when read.

The cache is `$TFLM_CACHE_DIR`, else `$XDG_CACHE_HOME/tflm`, else
`~/.cache/tflm`: one per user, never a folder shared by all users. Folders
are created with mode 0700, and one that another user owns or that others
may write to is refused, because whoever can write there chooses what a
later run reads. What is read back is checked against SHA-256 digests
recorded when it was written (see `tflm.data.jsonl`).
"""

from __future__ import annotations

import hashlib
import os
import stat

from tflm import errors

_DIGESTS: dict[tuple, str] = {}


def default_cache_dir() -> str:
    """`$TFLM_CACHE_DIR`, else `$XDG_CACHE_HOME/tflm`, else `~/.cache/tflm`."""
    explicit = os.environ.get("TFLM_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "tflm")


def private_dir(root: str, *parts: str) -> str:
    """Creates (mode 0700) or checks folders only this user may write.

    Args:
        root: the cache folder, such as `default_cache_dir()`.
        *parts: a path of sub-folders inside it.

    Returns:
        The path of the innermost folder.

    Raises:
        InputError: `root` or a sub-folder is not a folder, belongs to
            another user, or is writable by its group or by everyone.
    """
    path = root
    for part in ("", *parts):
        path = os.path.join(path, part) if part else path
        os.makedirs(path, mode=0o700, exist_ok=True)
        check_private(path)
    return path


def check_private(path: str) -> None:
    """Raises `InputError` unless `path` is a folder only we may write."""
    info = os.lstat(path)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder (a link or a file)"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = (
            f"may be written by other users (mode {info.st_mode & 0o777:o})"
        )
    if problem:
        raise errors.InputError(
            f"the tflm cache folder {path} {problem}, so what it holds "
            f"cannot be trusted. Fix it (`chmod 700 {path}` if it is "
            "yours) or point TFLM_CACHE_DIR at a folder of your own."
        )


def file_digest(path: str) -> str:
    """The SHA-256 of a file's content, as hex.

    Within one process a file is hashed once while its identity and change
    times stay the same (`ctime` changes with every write, and no one can
    set it), so the several datasets of one run do not re-read it.
    """
    info = os.stat(path)
    key = (
        os.path.abspath(path),
        info.st_dev,
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[key]

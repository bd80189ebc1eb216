"""An exclusive, per-target lock for writers (and a whole training run)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

from tflm import errors

SUFFIX = "tflm-lock"

_held: dict[str, list] = {}  # real path -> [thread id, depth]
_guard = threading.Lock()


@contextlib.contextmanager
def lock(target: str | os.PathLike) -> Iterator[None]:
    """Holds the lock on writing `target`, for this thread.

    The lock is an `fcntl.flock` on `.NAME.tflm-lock` beside the target,
    deleted on release (the kernel releases it if the process dies). The
    thread that holds it may take it again.

    Raises:
        InputError: another process or thread holds it.
    """
    target = os.path.realpath(os.fspath(target))
    me = threading.get_ident()
    with _guard:
        held = _held.get(target)
        if held and held[0] != me:
            raise _busy(target, os.getpid())
        if held:
            held[1] += 1
    if held:
        try:
            yield
        finally:
            with _guard:
                held[1] -= 1
        return
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{name}.{SUFFIX}")
    fd = _acquire(path, target)
    with _guard:
        _held[target] = [me, 1]
    try:
        yield
    finally:
        with _guard:
            del _held[target]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: no one else holds it
        os.close(fd)


def clear_stale(target: str) -> None:
    """Deletes the lock file of `target` if no one holds it (its holder was
    killed)."""
    target = os.path.realpath(os.fspath(target))
    with _guard:
        if target in _held:
            return
    parent, name = os.path.split(target)
    path = os.path.join(parent, f".{name}.{SUFFIX}")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    except (BlockingIOError, FileNotFoundError):
        pass  # held by a live process, or already gone
    finally:
        os.close(fd)


def _acquire(path: str, target: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise _busy(target, holder or "unknown") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else its last holder deleted it as we opened it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _busy(target: str, holder) -> errors.InputError:
    return errors.InputError(
        f"{target} is being written by another tflm run (pid {holder}). "
        "Wait for it to finish, or name another folder."
    )

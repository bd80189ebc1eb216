"""Write a directory atomically; finish or undo writes that a kill cut."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator

from tflm import errors
from tflm.atomic import fs
from tflm.atomic import locking

logger = logging.getLogger(__name__)

TEMP = "tflm-tmp"
OLD = "tflm-old"
# Leftovers of another host (a shared file system) are swept after this.
STALE_SECONDS = 24 * 3600
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_LEFTOVER = re.compile(
    rf"^\.(?P<stem>.+)\.(?P<kind>{TEMP}|{OLD})-(?P<host>[0-9a-f]{{8}})-"
    r"(?P<pid>\d+)-[^-]*$"
)


def resolve(path: str | os.PathLike, what: str = "--out") -> str:
    """The real absolute path to write, through symbolic links.

    Raises:
        InputError: `path` is a link to nothing, or names a file.
    """
    path = os.path.abspath(os.fspath(path))
    real = os.path.realpath(path)
    if os.path.islink(path) and not os.path.exists(real):
        raise errors.InputError(
            f"{what} {path} is a symbolic link to {real}, which does not "
            "exist. Create that folder, or remove the link."
        )
    if os.path.exists(real) and not os.path.isdir(real):
        raise errors.InputError(
            f"{what} {path} is a file, not a folder. Name a folder."
        )
    return real


def write_directory(
    target: str | os.PathLike,
    write: Callable[[str], None],
    *,
    overwrite: bool = False,
    owned: Collection[str] | None = None,
    what: str = "--out",
) -> str:
    """Writes a directory atomically and returns its real path.

    Args:
        target: the directory; a symbolic link is followed.
        write: called with an empty temporary folder to fill.
        overwrite: replace an existing directory that holds any entry of
            `owned` (any entry when `owned` is None).
        owned: the entries the new directory supersedes; other entries of
            an existing one are kept. None replaces the directory whole.
        what: how the target is named in messages.

    Raises:
        InputError: the target exists and `overwrite` is False, is a file
            or a dangling link, another process writes it, or the disk is
            full (the old directory is then left as it was).
    """
    target = resolve(target, what)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    with locking.lock(target):
        sweep(parent, name, owned)
        clash = existing_entries(target, owned)
        if clash and not overwrite:
            raise errors.InputError(
                f"{what} {target} already holds {', '.join(clash[:3])}. Pass "
                "--overwrite (overwrite=True) to replace it, or name a new "
                "folder."
            )
        with staged(parent, name) as temp:
            write(temp)
            publish(temp, target, replace=True, owned=owned)
    return target


def existing_entries(target: str, owned: Collection[str] | None) -> list:
    """The entries of `target` a new write would replace, sorted."""
    if not os.path.isdir(target):
        return []
    entries = sorted(os.listdir(target))
    return [e for e in entries if owned is None or e in owned]


def write_file(
    target: str | os.PathLike,
    write: Callable[[str], None],
    *,
    overwrite: bool = False,
    what: str = "--out",
) -> str:
    """Writes one file atomically and returns its absolute path.

    `write(path)` fills a file inside a `staged` folder beside `target`,
    which is then renamed into place: a kill leaves the old file or the new
    one, and the next write sweeps the leftover.

    Raises:
        InputError: the target is a folder, exists without `overwrite`,
            another process writes it, or the disk is full.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.isdir(target):
        raise errors.InputError(
            f"{what} {target} is a folder; name the file to write."
        )
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    exists = errors.InputError(
        f"{what} {target} already exists. Pass --overwrite (overwrite=True) "
        "to replace it, or name a new file."
    )
    with locking.lock(target):
        sweep(parent, name, None)
        if os.path.lexists(target) and not overwrite:
            raise exists
        with staged(parent, name) as temp:
            path = os.path.join(temp, name)
            write(path)
            fs.sync(path)
            if overwrite:
                os.replace(path, target)
            elif not fs.rename_noreplace(path, target):
                raise exists
            fs.sync(parent)
            os.rmdir(temp)
    return target


@contextlib.contextmanager
def staged(parent: str, stem: str) -> Iterator[str]:
    """Yields a new hidden temporary folder in `parent`; removes it on error.

    An error for a full disk becomes an `InputError` (see `fs.no_space`).
    """
    owner = f"{_HOST}-{os.getpid()}"
    temp = tempfile.mkdtemp(prefix=f".{stem}.{TEMP}-{owner}-", dir=parent)
    try:
        yield temp
    except BaseException as err:
        written = fs.tree_size(temp)
        fs.remove(temp)
        if fs.is_no_space(err):
            raise fs.no_space(parent, written) from err
        raise


def publish(
    temp: str,
    target: str,
    *,
    replace: bool,
    owned: Collection[str] | None = None,
) -> bool:
    """Moves the finished `temp` to `target` in one step.

    Args:
        temp: a complete folder from `staged`.
        target: where it goes.
        replace: whether an existing `target` may be replaced; if not and
            it exists, nothing moves.
        owned: see `write_directory`; other entries of the old target are
            moved into the new one.

    Returns:
        Whether `temp` is now `target`.
    """
    fs.sync_tree(temp)
    fs.make_readable(temp)
    parent = os.path.dirname(target)
    if fs.rename_noreplace(temp, target):
        fs.sync(parent)
        return True
    if not replace:
        return False
    # The old directory is named `.NAME.tflm-old-*` until its entries that
    # are not `owned` have moved: if that fails, `sweep` finishes it later,
    # and `staged` never deletes it.
    old = temp.replace(f".{TEMP}-", f".{OLD}-", 1)
    if fs.exchange(temp, target):
        os.rename(temp, old)
    else:
        os.rename(target, old)
        os.rename(temp, target)
    fs.sync(parent)
    carry_over(old, target, owned)
    fs.remove(old)
    return True


def carry_over(old: str, new: str, owned: Collection[str] | None) -> None:
    """Moves the entries of `old` that are not `owned` into `new`."""
    if owned is None or not os.path.isdir(old):
        return
    for entry in os.listdir(old):
        if entry not in owned:
            _merge(os.path.join(old, entry), os.path.join(new, entry))


def _merge(source: str, target: str) -> None:
    """Moves `source` to `target`, merging folders; never overwrites."""
    if not os.path.lexists(target):
        os.rename(source, target)
    elif os.path.isdir(source) and os.path.isdir(target):
        for entry in os.listdir(source):
            _merge(os.path.join(source, entry), os.path.join(target, entry))


def sweep(parent: str, stem: str | None, owned: Collection[str] | None) -> None:
    """Finishes or undoes the writes of `parent/stem` that died midway.

    A directory renamed aside while the target is missing is restored;
    entries not `owned` are moved out of the other leftovers into the
    target, and the leftovers are deleted. Those of live processes are left
    alone. `stem=None` sweeps the leftovers of every name in `parent`.
    """
    if stem is not None:
        locking.clear_stale(os.path.join(parent, stem))
    found: dict[str, list] = {}
    for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        match = _LEFTOVER.match(entry)
        path = os.path.join(parent, entry)
        if match and stem in (None, match["stem"]) and _is_stale(match, path):
            found.setdefault(match["stem"], []).append((match["kind"], path))
    for name, leftovers in found.items():
        target = os.path.join(parent, name)
        olds = [path for kind, path in leftovers if kind == OLD]
        if olds and not os.path.lexists(target):
            logger.warning("Restoring %s from %s.", target, olds[-1])
            os.rename(olds[-1], target)
        for _, path in leftovers:
            if os.path.lexists(path):
                if os.path.isdir(target):
                    carry_over(path, target, owned)
                logger.info("Removing %s, left by a killed run.", path)
                fs.remove(path)


def _is_stale(match: re.Match, path: str) -> bool:
    """Whether the process that made a leftover is gone."""
    if match["host"] == _HOST:
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - os.lstat(path).st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False

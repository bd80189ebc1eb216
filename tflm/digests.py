"""SHA-256 of files and folders: the one place tflm hashes what it reads
(model directories' fingerprints, prepared data's sources and tokenizer).
Imports nothing of tflm."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection

_BLOCK = 1 << 22


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(
    path: str | os.PathLike, skip_dirs: Collection[str] = ()
) -> str:
    """SHA-256 over the relative names and contents of the files under
    `path`, in sorted order, leaving out folders named in `skip_dirs`."""
    path = os.fspath(path)
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                while block := f.read(_BLOCK):
                    digest.update(block)
    return digest.hexdigest()

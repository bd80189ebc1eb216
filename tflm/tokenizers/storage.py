"""Writing tokenizer directories crash-safely, and naming their files."""

from __future__ import annotations

import os
from typing import Any

from tflm import atomic
from tflm import errors
from tflm.tokenizers import base


def owned_files() -> tuple[str, ...]:
    """Every file name a tokenizer directory may hold, of any type."""
    names = {base.CONFIG_FILE}
    for cls in base.registered_types().values():
        names.update(cls.files)
    return tuple(sorted(names))


def save(
    tokenizer: base.Tokenizer,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> str:
    """Writes `tokenizer` to `directory` with the crash-safe writer.

    Other files in the folder (a user's notes) are kept.

    Args:
        tokenizer: the tokenizer.
        directory: a new or empty folder, or (with `overwrite=True`) a
            tokenizer directory to replace. A symbolic link is followed.
        overwrite: replace an existing tokenizer.

    Returns:
        The real path written.

    Raises:
        InputError: `directory` is a file, a non-empty folder that holds no
            tokenizer, a tokenizer directory without `overwrite`, or the
            disk is full.
    """
    directory = check_target(directory, overwrite=overwrite)
    return atomic.write_directory(
        directory,
        tokenizer.write_files,
        overwrite=overwrite,
        owned=owned_files(),
    )


def check_target(directory: str | os.PathLike, *, overwrite: bool) -> str:
    """The real path of `directory` if `save` may write there; call it
    before training a tokenizer, to fail before the work.

    Raises:
        InputError: see `save`.
    """
    directory = atomic.resolve(directory)
    if not os.path.isdir(directory) or not os.listdir(directory):
        return directory
    if not base.is_tokenizer_directory(directory):
        raise errors.InputError(
            f"--out {directory} is not empty and holds no tokenizer; name a "
            "new or empty folder, or a tokenizer folder to replace (with "
            "--overwrite)."
        )
    if not overwrite:
        raise errors.InputError(
            f"--out {directory} already holds a tokenizer. Pass --overwrite "
            "(overwrite=True) to replace it (a model's tokenizer/ must stay "
            "the one its weights were trained with), or name a new folder."
        )
    return directory


def asset_path(
    directory: str, config: dict[str, Any], key: str, default: str
) -> str:
    """The path of a file that `tokenizer.json` names under `key`.

    Raises:
        InputError: the name is not a file inside `directory` (no absolute
            paths, `..` or links out: a tokenizer, and an export of it,
            never reads files from elsewhere), or the file is missing.
    """
    name = config.get(key, default)
    source = os.path.join(directory, base.CONFIG_FILE)
    if not isinstance(name, str) or not name:
        raise errors.InputError(
            f"{source}: {key} must be a file name. Received: {key}={name!r}"
        )
    path = os.path.join(directory, name)
    inside = os.path.realpath(directory) + os.sep
    if os.path.isabs(name) or not os.path.realpath(path).startswith(inside):
        raise errors.InputError(
            f"{source}: {key}={name!r} points outside {directory}; a "
            "tokenizer reads only its own files. Copy the file into the "
            f"folder and set {key} to its name."
        )
    if not os.path.isfile(path):
        raise errors.InputError(
            f"{path} is missing ({source} names it as {key}). Restore it, "
            "or train or import the tokenizer again."
        )
    return path

"""Finding the user's text files: files, folders and glob patterns.

Folders are searched recursively for `.txt` and `.jsonl` files, and globs
are expanded; both skip what is not the user's text: hidden files and
folders (names starting with `.`, such as the `.NAME.tmp-*` folders a model
directory is written in), tflm model directories (a `config.json` in tflm's
format, or beside `model.weights.h5`, `tokenizer/tokenizer.json` or
`train/state.json`: their `logs/metrics.jsonl` is no corpus), tokenizer
directories (`tokenizer.json`) and SavedModel exports
(`saved_model.pb`). A file named directly is always read.

Every file must be UTF-8: one that is not is refused (`not_utf8`), naming
the line and byte offset of the first bad byte, never read with
replacement characters.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Iterable
from collections.abc import Sequence

from tflm import errors

logger = logging.getLogger(__name__)

EXTENSIONS = (".txt", ".jsonl")
# The files that mark a folder as written by tflm (or TF Serving's export).
MODEL_CONFIG = "config.json"
MODEL_PARTS = (
    "model.weights.h5",
    os.path.join("tokenizer", "tokenizer.json"),
    os.path.join("train", "state.json"),
)
MODEL_KEYS = ("format_version", "backbone", "tokenizer")
TOKENIZER_CONFIG = "tokenizer.json"
SAVED_MODEL = "saved_model.pb"
_MAGIC = re.compile(r"[*?[]")


def find_files(
    paths: str | os.PathLike | Sequence[str],
    exclude: Iterable[str | os.PathLike] = (),
) -> list[str]:
    """Expands files, directories and glob patterns into a list of files.

    Args:
        paths: one path or several. Directories are searched recursively for
            `.txt` and `.jsonl` files; patterns may use `*`, `?` and `**`.
            Both skip hidden names and tflm's own directories (see the
            module docstring); files named directly are always kept.
        exclude: directories whose files are never read, such as the model
            directory a run writes.

    Returns:
        Absolute file paths, sorted within each directory or pattern, with
        duplicates removed.

    Raises:
        InputError: no paths, or a path that yields no file.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise errors.InputError(
            "no data paths given; pass files, folders or globs."
        )
    excluded = [os.path.abspath(os.fspath(d)) for d in exclude]
    found: dict[str, None] = {}
    for path in map(os.fspath, paths):
        for name in _expand(path, excluded):
            found[os.path.abspath(name)] = None
    return list(found)


def not_utf8(path: str, line: int, offset: int) -> errors.InputError:
    """The error for a text or `.jsonl` file that is not UTF-8: one rule
    for every input file (replacing the bytes would train on text the
    user never wrote).

    Args:
        path: the file.
        line: the 1-based line of the first bad byte.
        offset: that byte's 0-based offset in the file.

    Example:
    >>> str(not_utf8("a.txt", 3, 17)).startswith("a.txt:3: not UTF-8")
    True
    """
    return errors.InputError(
        f"{path}:{line}: not UTF-8 text (the first bad byte is at byte "
        f"offset {offset}). Re-encode the file to UTF-8 from the encoding it "
        f"was written in, e.g. `iconv -f LATIN1 -t UTF-8 {path} > "
        "fixed`, and pass the new file."
    )


def skip_reason(directory: str) -> str | None:
    """Why files under `directory` are not corpus text, or `None`.

    Args:
        directory: a folder met while walking or globbing.

    Returns:
        `"hidden"`, `"a tflm model directory"`, `"a tokenizer directory"`,
        `"a SavedModel"`, or `None` for an ordinary folder.
    """
    if os.path.basename(os.path.normpath(directory)).startswith("."):
        return "hidden"
    return _marked(directory)


def _marked(directory: str) -> str | None:
    """`skip_reason` without the hidden-name rule."""
    if _is_model_dir(directory):
        return "a tflm model directory"
    if os.path.isfile(os.path.join(directory, TOKENIZER_CONFIG)):
        return "a tokenizer directory"
    if os.path.isfile(os.path.join(directory, SAVED_MODEL)):
        return "a SavedModel"
    return None


def _is_model_dir(directory: str) -> bool:
    config = os.path.join(directory, MODEL_CONFIG)
    if not os.path.isfile(config):
        return False
    if any(os.path.exists(os.path.join(directory, p)) for p in MODEL_PARTS):
        return True
    try:
        with open(config, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and all(k in content for k in MODEL_KEYS)


def _excluded(path: str, excluded: list[str]) -> bool:
    path = os.path.abspath(path)
    return any(
        os.path.commonpath([path, directory]) == directory
        for directory in excluded
    )


def _expand(path: str, excluded: list[str]) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        return _walk(path, excluded)
    names = []
    base = _literal_prefix(path)
    for name in sorted(glob.glob(path, recursive=True)):
        if os.path.isfile(name) and not _skipped_in_glob(name, base, excluded):
            names.append(name)
    if not names:
        raise errors.InputError(
            f"{path!r} matches no file; check the path (quote globs in the "
            "shell so that tflm expands them)."
        )
    return names


def _walk(top: str, excluded: list[str]) -> list[str]:
    # The folder named by the user is read even when hidden.
    reason = _marked(top)
    if _excluded(top, excluded):
        reason = "the output directory"
    names = []
    if reason is None:
        for root, dirs, found in os.walk(top):
            dirs[:] = [d for d in dirs if not _skip_dir(root, d, excluded)]
            names += [
                os.path.join(root, name)
                for name in found
                if name.endswith(EXTENSIONS) and not name.startswith(".")
            ]
    if not names:
        why = f" ({top} is {reason})" if reason else ""
        raise errors.InputError(
            f"{top} holds no .txt or .jsonl file{why}; put the text there "
            "or name the files directly."
        )
    return sorted(names)


def _skip_dir(root: str, name: str, excluded: list[str]) -> bool:
    directory = os.path.join(root, name)
    reason = skip_reason(directory)
    if reason is None and _excluded(directory, excluded):
        reason = "the output directory"
    if reason:
        logger.debug("Not reading %s as text: it is %s.", directory, reason)
    return reason is not None


def _literal_prefix(pattern: str) -> str:
    """The folder part of `pattern` before its first wildcard."""
    literal = []
    for part in pattern.split(os.sep)[:-1]:
        if _MAGIC.search(part):
            break
        literal.append(part)
    if literal == [""]:
        return os.sep
    return os.sep.join(literal) or "."


def _skipped_in_glob(name: str, base: str, excluded: list[str]) -> bool:
    """Whether a glob match lies in a folder a walk would skip.

    Hidden names are left to `glob`, which matches them only where the
    pattern asks for them.
    """
    if _excluded(name, excluded):
        logger.debug("Not reading %s: it is in the output directory.", name)
        return True
    base = os.path.abspath(base)
    rel = os.path.relpath(os.path.dirname(os.path.abspath(name)), base)
    directory = base
    for part in [] if rel == os.curdir else rel.split(os.sep):
        directory = os.path.join(directory, part)
        reason = _marked(directory)
        if reason:
            logger.debug("Not reading %s: %s is %s.", name, directory, reason)
            return True
    return False

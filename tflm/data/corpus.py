"""Finding the user's text files and reading them as documents.

Accepted inputs are files, directories (searched recursively for `.txt` and
`.jsonl`) and glob patterns. A `.jsonl` file has one JSON object per line
with the text in a named field; any other file is read as UTF-8 text.

A document is a whole file (`text_format="document"`), a paragraph between
blank lines (`"paragraph"`), or a line (`"line"`); a `.jsonl` record is
split the same way. Documents that are empty or only ASCII whitespace are
dropped.

Bad bytes: text that is not UTF-8 is decoded with U+FFFD replacement
characters, and a warning names the file and how many lines were affected.
Nothing is written next to the user's files (see `tflm.data.jsonl` for the
`.jsonl` cache).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_text

from tflm.data import jsonl

logger = logging.getLogger(__name__)

TEXT_FORMATS = ("document", "paragraph", "line")
EXTENSIONS = (".txt", ".jsonl")
# RE2's \s and this class agree: ASCII whitespace only.
_SPACE = r"[\t\n\f\r ]"
_PARAGRAPH_BREAK = rf"\n{_SPACE}*\n"
_CHUNK = 1 << 24
_RECORDS_PER_BATCH = 256


def find_files(paths: str | os.PathLike | Sequence[str]) -> list[str]:
    """Expands files, directories and glob patterns into a list of files.

    Args:
        paths: one path or several. Directories are searched recursively for
            `.txt` and `.jsonl` files; patterns may use `*`, `?` and `**`.

    Returns:
        Absolute file paths, sorted within each directory or pattern, with
        duplicates removed.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise ValueError("no data paths given; pass files, folders or globs.")
    found: dict[str, None] = {}
    for path in map(os.fspath, paths):
        for name in _expand(path):
            found[os.path.abspath(name)] = None
    return list(found)


def _expand(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        names = [
            os.path.join(root, name)
            for root, _, files in os.walk(path)
            for name in files
            if name.endswith(EXTENSIONS)
        ]
        if not names:
            raise FileNotFoundError(
                f"{path} holds no .txt or .jsonl file; put the text there or "
                "name the files directly."
            )
        return sorted(names)
    names = sorted(
        name for name in glob.glob(path, recursive=True) if os.path.isfile(name)
    )
    if not names:
        raise FileNotFoundError(
            f"{path!r} matches no file; check the path (quote globs in the "
            "shell so that tflm expands them)."
        )
    return names


def count_invalid_utf8_lines(path: str) -> int:
    """Number of lines of a text file that are not valid UTF-8."""
    bad = 0
    rest = b""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            chunk, rest = chunk[:cut], chunk[cut:]
            bad += _bad_lines(chunk)
    return bad + _bad_lines(rest)


def _bad_lines(chunk: bytes) -> int:
    try:
        chunk.decode("utf-8")
        return 0
    except UnicodeDecodeError:
        return sum(not _is_utf8(line) for line in chunk.split(b"\n"))


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def check_utf8(path: str) -> bool:
    """Logs a warning naming `path` and how many of its lines are not UTF-8.

    Returns:
        Whether any line was not UTF-8.
    """
    bad = count_invalid_utf8_lines(path)
    if bad:
        logger.warning(
            "%s: %d line(s) are not valid UTF-8; their bad bytes were "
            "replaced with U+FFFD. Convert the file to UTF-8 (for example "
            "`iconv -f GB18030 -t UTF-8`) to keep them.",
            path,
            bad,
        )
    return bool(bad)


def check_format(text_format: str) -> None:
    """Raises `ValueError` unless `text_format` is a known format."""
    if text_format not in TEXT_FORMATS:
        raise ValueError(
            f"text_format must be one of {TEXT_FORMATS}. "
            f"Received: text_format={text_format!r}"
        )


def iter_documents(
    files: Sequence[str],
    text_format: str = "document",
    jsonl_field: str = "text",
) -> Iterator[str]:
    """Yields documents in Python, split as `read_documents` splits them.

    Used to train tokenizers; the training pipeline uses `read_documents`.
    """
    check_format(text_format)
    for path in files:
        if path.endswith(".jsonl"):
            texts: Iterator[str] = jsonl.iter_jsonl(path, jsonl_field)
        else:
            check_utf8(path)
            with open(
                path, encoding="utf-8", errors="replace", newline=""
            ) as f:
                texts = iter([f.read()])
        for text in texts:
            yield from _split_python(text, text_format)


def sample_texts(
    files: Sequence[str], max_chars: int, jsonl_field: str = "text"
) -> list[str]:
    """The first `max_chars` characters of the corpus, as a list of texts."""
    texts: list[str] = []
    left = max_chars
    for path in files:
        if left <= 0:
            break
        if path.endswith(".jsonl"):
            for text in jsonl.iter_jsonl(path, jsonl_field):
                texts.append(text[:left])
                left -= len(texts[-1])
                if left <= 0:
                    break
        else:
            with open(
                path, encoding="utf-8", errors="replace", newline=""
            ) as f:
                texts.append(f.read(left))
            left -= len(texts[-1])
    return [text for text in texts if text]


def _split_python(text: str, text_format: str) -> Iterator[str]:
    if text_format == "paragraph":
        pieces = re.split(_PARAGRAPH_BREAK, text)
    elif text_format == "line":
        pieces = text.split("\n")
    else:
        pieces = [text]
    return (p for p in pieces if not re.fullmatch(f"{_SPACE}*", p))


def read_documents(
    files: Sequence[str],
    *,
    text_format: str = "document",
    jsonl_field: str = "text",
    cache_dir: str | None = None,
) -> tf.data.Dataset:
    """Reads files into a dataset of documents (string scalars), in order.

    Args:
        files: paths from `find_files`.
        text_format: `"document"`, `"paragraph"` or `"line"`.
        jsonl_field: the text field of `.jsonl` records.
        cache_dir: where `.jsonl` texts are cached as TFRecords.

    Returns:
        A `tf.data.Dataset` of string scalars: `.txt` documents first, then
        `.jsonl` ones, each group in file order.
    """
    return read_document_batches(
        files,
        text_format=text_format,
        jsonl_field=jsonl_field,
        cache_dir=cache_dir,
    ).unbatch()


def read_document_batches(
    files: Sequence[str],
    *,
    text_format: str = "document",
    jsonl_field: str = "text",
    cache_dir: str | None = None,
) -> tf.data.Dataset:
    """Like `read_documents`, but yields string vectors of documents.

    Each element holds the documents of one text file or of up to 256
    `.jsonl` records, so that later steps work on vectors, not scalars.
    """
    check_format(text_format)
    texts = [f for f in files if not f.endswith(".jsonl")]
    bad_utf8 = [check_utf8(f) for f in texts]
    cached = [
        jsonl.cache_jsonl(f, jsonl_field, cache_dir)
        for f in files
        if f.endswith(".jsonl")
    ]
    size = sum(os.path.getsize(f) for f in texts) + sum(n for _, n in cached)
    if not size:
        raise ValueError(
            f"the corpus is empty: {', '.join(files)} hold no text. "
            "Point the data paths at non-empty files."
        )
    parts = []
    if texts:
        parts.append(_read_texts(texts, bad_utf8))
    if cached:
        records = tf.data.TFRecordDataset([path for path, _ in cached])
        parts.append(records.batch(_RECORDS_PER_BATCH))
    docs = parts[0] if len(parts) == 1 else parts[0].concatenate(parts[1])
    return docs.map(
        lambda batch: split_texts(batch, text_format),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _read_texts(files: list[str], bad_utf8: list[bool]) -> tf.data.Dataset:
    def read(path, bad):
        text = tf.io.read_file(path)
        text = tf.cond(
            bad,
            lambda: tf.strings.unicode_transcode(
                text, "UTF-8", "UTF-8", errors="replace"
            ),
            lambda: text,
        )
        return tf.reshape(text, [1])

    return tf.data.Dataset.from_tensor_slices((files, bad_utf8)).map(
        read, num_parallel_calls=tf.data.AUTOTUNE
    )


def split_texts(texts: tf.Tensor, text_format: str) -> tf.Tensor:
    """Splits a string vector into a vector of non-blank documents."""
    if text_format == "paragraph":
        docs = tensorflow_text.regex_split(texts, _PARAGRAPH_BREAK).flat_values
    elif text_format == "line":
        docs = tf.strings.split(texts, "\n").flat_values
    else:
        docs = texts
    blank = tf.strings.regex_full_match(docs, f"{_SPACE}*")
    return tf.boolean_mask(docs, tf.logical_not(blank))

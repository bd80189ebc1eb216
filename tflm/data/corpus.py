"""Reading the user's text files as documents.

Files come from `tflm.data.files.find_files`. A `.jsonl` file has one JSON
object per line with the text in a named field; any other file is read as
UTF-8 text.

A document is a whole file (`text_format="document"`), a paragraph between
blank lines (`"paragraph"`), or a line (`"line"`); a `.jsonl` record is
split the same way. Documents that are empty or only ASCII whitespace are
dropped.

Bad bytes: a file that is not UTF-8 is refused (`tflm.data.files.not_utf8`
names the line and byte offset of the first bad byte), `.txt` and `.jsonl`
alike. Nothing is written next to the user's files (see `tflm.data.jsonl`
for the `.jsonl` cache).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterator
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_text

from tflm import errors
from tflm.data import files as files_lib
from tflm.data import jsonl

logger = logging.getLogger(__name__)

TEXT_FORMATS = ("document", "paragraph", "line")
# RE2's \s and this class agree: ASCII whitespace only.
_SPACE = r"[\t\n\f\r ]"
_PARAGRAPH_BREAK = rf"\n{_SPACE}*\n"
_CHUNK = 1 << 24
_RECORDS_PER_BATCH = 256


def find_invalid_utf8(path: str) -> tuple[int, int, int]:
    """Where a text file is not valid UTF-8.

    Returns:
        `(lines, line, offset)`: how many lines hold invalid bytes, and the
        1-based line and 0-based byte offset (in the file) of the first bad
        byte; `(0, 0, 0)` for a valid file.
    """
    bad, first = 0, (0, 0)
    rest, line, offset = b"", 1, 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_CHUNK)
            chunk = rest + block
            if not chunk:
                break
            # Whole lines only, until the end of the file.
            cut = chunk.rfind(b"\n") + 1 if block else len(chunk)
            chunk, rest = chunk[:cut], chunk[cut:]
            count, where = _bad_lines(chunk, line, offset)
            if count and not bad:
                first = where
            bad += count
            line += chunk.count(b"\n")
            offset += len(chunk)
    return bad, *first


def _bad_lines(chunk: bytes, line: int, offset: int):
    """Bad lines of `chunk` and where the first one is."""
    try:
        chunk.decode("utf-8")
        return 0, (0, 0)
    except UnicodeDecodeError:
        pass
    count, first = 0, None
    for number, text in enumerate(chunk.split(b"\n"), start=line):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as err:
            count += 1
            first = first or (number, offset + err.start)
        offset += len(text) + 1
    return count, first


def check_utf8(path: str) -> None:
    """Raises unless the text file `path` is UTF-8.

    A file is read once per process while its size and modification time
    stay the same (quickstart sizes its vocabulary, trains its tokenizer
    and trains the model from one file).

    Raises:
        InputError: naming the file, the line and the byte offset of the
            first bad byte, and how to re-encode it.
    """
    stat = os.stat(path)
    _check_utf8(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _check_utf8(path: str, size: int, mtime_ns: int) -> None:
    """`check_utf8` of one version of a file; an error is not cached."""
    del size, mtime_ns  # the cache's key
    bad, line, offset = find_invalid_utf8(path)
    if bad:
        raise files_lib.not_utf8(path, line, offset)


def check_format(text_format: str) -> None:
    """Raises `InputError` unless `text_format` is a known format."""
    if text_format not in TEXT_FORMATS:
        raise errors.InputError(
            f"text_format must be one of {TEXT_FORMATS}. "
            f"Received: text_format={text_format!r}"
        )


def iter_documents(
    files: Sequence[str],
    text_format: str = "document",
    jsonl_field: str = "text",
    cache_dir: str | None = None,
) -> Iterator[str]:
    """Documents in Python, split as `read_documents` splits them.

    Used to train tokenizers; the training pipeline uses `read_documents`.
    Every `.jsonl` line is checked before this returns, so a bad line is
    reported here (an `InputError` naming file and line), not from inside
    the consumer of the iterator (such as SentencePiece's trainer).

    Returns:
        An iterator of documents.
    """
    check_format(text_format)
    records = {
        path: jsonl.cache_jsonl(path, jsonl_field, cache_dir)[0]
        for path in files
        if path.endswith(".jsonl")
    }
    return _iter_documents(files, text_format, records)


def _iter_documents(files, text_format, records) -> Iterator[str]:
    for path in files:
        if path in records:
            texts: Iterator[str] = jsonl.read_cached(records[path])
        else:
            check_utf8(path)
            with open(path, encoding="utf-8", newline="") as f:
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
        files: paths from `tflm.data.files.find_files`.
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
    for path in texts:
        check_utf8(path)
    cached = [
        jsonl.cache_jsonl(f, jsonl_field, cache_dir)
        for f in files
        if f.endswith(".jsonl")
    ]
    size = sum(os.path.getsize(f) for f in texts) + sum(n for _, n in cached)
    if not size:
        raise errors.InputError(
            f"the corpus is empty: {', '.join(files)} hold no text. "
            "Point the data paths at non-empty files."
        )
    parts = []
    if texts:
        parts.append(_read_texts(texts))
    if cached:
        records = tf.data.TFRecordDataset([path for path, _ in cached])
        parts.append(records.batch(_RECORDS_PER_BATCH))
    docs = parts[0] if len(parts) == 1 else parts[0].concatenate(parts[1])
    return docs.map(
        lambda batch: split_texts(batch, text_format),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _read_texts(files: list[str]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(files).map(
        lambda path: tf.reshape(tf.io.read_file(path), [1]),
        num_parallel_calls=tf.data.AUTOTUNE,
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

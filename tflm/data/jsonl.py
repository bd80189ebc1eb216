"""Reading `.jsonl` text, and caching it as TFRecords for tf.data.

TensorFlow has no op that parses arbitrary JSON, so each `.jsonl` file is
read once in Python (validated line by line) and its texts are written, one
record per document, to a TFRecord file in the user's cache folder (see
`tflm.data.cache`), never beside the user's data. The pipeline then reads
the records in-graph.

A cache entry is found by the SHA-256 of the source's content and the field
name, so an edited file is never served stale, and the records are used
only when their own SHA-256 matches the one recorded when they were written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from tflm import errors
from tflm.data import cache
from tflm.data import files as files_lib

logger = logging.getLogger(__name__)

# Bumped when the cached records change meaning.
_CACHE_FORMAT = 3


def read_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `("FILE:LINE", object)` for each non-blank line of a `.jsonl`
    file: the one reader of `.jsonl` lines, for corpora and task examples.

    Raises:
        InputError: naming the file and line (and, for bytes that are not
            UTF-8, the byte offset) of a line that is not UTF-8, not JSON,
            nested too deeply, not a JSON object, or holds a string with a
            lone surrogate (`"\\ud800"`), which is no text.
    """
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                where = offset + err.start
                raise files_lib.not_utf8(path, number, where) from None
            offset += len(raw)
            if line.strip():
                where = f"{path}:{number}"
                yield where, _parse(line, where)


def _parse(line: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
        # A lone surrogate (`"\\ud800"`) parses but is no UTF-8 text.
        if "\\u" in line:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as err:
        problem = err.msg.removesuffix(" at")
        raise errors.InputError(
            f"{where}: not valid JSON ({problem}, column {err.colno}). "
            "Each line of a .jsonl file must be one JSON object; fix or "
            "remove the line."
        ) from None
    except RecursionError:
        raise errors.InputError(
            f"{where}: the JSON is nested too deeply to read. Each line "
            "must be one JSON object of text fields; fix or remove the line."
        ) from None
    except UnicodeEncodeError as err:
        code = ord(err.object[err.start])
        raise errors.InputError(
            f"{where}: a string holds the lone surrogate \\u{code:04x}, "
            "which is not text (a character cut in half when the file was "
            "made). Fix or remove the line."
        ) from None
    if not isinstance(record, dict):
        raise errors.InputError(
            f"{where}: a JSON {type(record).__name__}, not an object. Each "
            "line of a .jsonl file must be one JSON object."
        )
    return record


def iter_jsonl(path: str, field: str) -> Iterator[str]:
    """Yields the `field` text of each line of a `.jsonl` file.

    Blank lines are skipped.

    Raises:
        InputError: a bad line (see `read_records`), or one without a
            string `field` (the message lists the fields the object has).
    """
    for where, record in read_records(path):
        yield _field_text(record, field, where)


def _field_text(record: dict[str, Any], field: str, where: str) -> str:
    if field not in record:
        fields = ", ".join(map(repr, record)) or "none"
        raise errors.InputError(
            f"{where}: no {field!r} field (the record has: {fields}). Name "
            "the field that holds the text with jsonl_field= (CLI: "
            "--jsonl-field)."
        )
    if not isinstance(record[field], str):
        raise errors.InputError(
            f"{where}: field {field!r} is a {type(record[field]).__name__}, "
            "not a string."
        )
    return record[field]


def cache_jsonl(
    path: str, field: str, cache_dir: str | None = None
) -> tuple[str, int]:
    """Writes the texts of a `.jsonl` file to a cached TFRecord file.

    Every line is validated before the call returns.

    Args:
        path: the `.jsonl` file.
        field: the name of the text field.
        cache_dir: folder for the cache; see `cache.default_cache_dir`.

    Returns:
        The TFRecord path and the number of documents in it.

    Raises:
        InputError: a bad line (see `iter_jsonl`), or a cache folder that
            is not private (see `cache.private_dir`).
    """
    source = cache.file_digest(path)
    key = hashlib.sha256(
        f"{_CACHE_FORMAT}\0{source}\0{field}".encode()
    ).hexdigest()[:32]
    directory = cache.private_dir(
        cache_dir or cache.default_cache_dir(), "jsonl"
    )
    records = os.path.join(directory, key + ".tfrecord")
    meta_path = os.path.join(directory, key + ".json")
    meta = {"source_sha256": source, "field": field}
    count = _cached_count(meta_path, records, meta)
    if count is not None:
        return records, count
    count = _write_records(path, field, records)
    meta.update(
        source=path, documents=count, records_sha256=cache.file_digest(records)
    )
    _write_atomically(meta_path, json.dumps(meta).encode())
    logger.debug("cached %d documents of %s in %s", count, path, records)
    return records, count


def _cached_count(meta_path: str, records: str, expected: dict) -> int | None:
    """The document count of a verified cache entry, else `None`."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in expected.items()) and (
            cache.file_digest(records) == meta["records_sha256"]
        ):
            return int(meta["documents"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if os.path.exists(meta_path):
        logger.warning("Rebuilding %s: it does not match its source.", records)
    return None


def _write_records(path: str, field: str, records: str) -> int:
    fd, partial = tempfile.mkstemp(
        dir=os.path.dirname(records), suffix=".partial"
    )
    os.close(fd)
    count = 0
    try:
        with tf.io.TFRecordWriter(partial) as writer:
            for text in iter_jsonl(path, field):
                writer.write(text.encode("utf-8"))
                count += 1
        os.replace(partial, records)
    except BaseException:
        os.remove(partial)
        raise
    return count


def _write_atomically(path: str, content: bytes) -> None:
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(partial, path)
    except BaseException:
        os.remove(partial)
        raise


def read_cached(records: str) -> Iterator[str]:
    """Yields the texts of a TFRecord file written by `cache_jsonl`."""
    for record in tf.data.TFRecordDataset(records).as_numpy_iterator():
        yield record.decode("utf-8")

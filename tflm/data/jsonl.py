"""Reading `.jsonl` text, and caching it as TFRecords for tf.data.

TensorFlow has no op that parses arbitrary JSON, so each `.jsonl` file is
read once in Python (validated line by line) and its texts are written, one
record per document, to a TFRecord file under a cache folder outside the
user's data. The pipeline then reads the records in-graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator

import tensorflow as tf

logger = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """`$TFLM_CACHE_DIR`, else `tflm-cache` in the system's temp folder."""
    return os.environ.get("TFLM_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "tflm-cache"
    )


def iter_jsonl(path: str, field: str) -> Iterator[str]:
    """Yields the `field` text of each line of a `.jsonl` file.

    Blank lines are skipped; bytes that are not UTF-8 are replaced with
    U+FFFD and counted in a warning. Raises `ValueError` naming the file and
    line for a line that is not a JSON object with a string `field`.
    """
    bad = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                bad += 1
            if not line.strip():
                continue
            yield _json_text(line, field, f"{path}:{number}")
    if bad:
        logger.warning(
            "%s: %d line(s) are not valid UTF-8; their bad bytes were "
            "replaced with U+FFFD. Convert the file to UTF-8 to keep them.",
            path,
            bad,
        )


def _json_text(line: str, field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg}).") from None
    if not isinstance(record, dict) or field not in record:
        raise ValueError(
            f"{where}: no {field!r} field. Name the field that holds the text "
            "with jsonl_field= (CLI: --jsonl-field)."
        )
    if not isinstance(record[field], str):
        raise ValueError(
            f"{where}: field {field!r} is a {type(record[field]).__name__}, "
            "not a string."
        )
    return record[field]


def cache_jsonl(
    path: str, field: str, cache_dir: str | None = None
) -> tuple[str, int]:
    """Writes the texts of a `.jsonl` file to a cached TFRecord file.

    Args:
        path: the `.jsonl` file.
        field: the name of the text field.
        cache_dir: folder for the cache; see `default_cache_dir`.

    Returns:
        The TFRecord path and the number of documents in it.
    """
    stat = os.stat(path)
    key = hashlib.sha256(
        f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{field}".encode()
    ).hexdigest()[:32]
    directory = os.path.join(cache_dir or default_cache_dir(), "jsonl")
    records = os.path.join(directory, key + ".tfrecord")
    meta = os.path.join(directory, key + ".json")
    if os.path.isfile(meta) and os.path.isfile(records):
        with open(meta) as f:
            return records, int(json.load(f)["documents"])
    os.makedirs(directory, exist_ok=True)
    count = 0
    partial = f"{records}.{os.getpid()}.partial"
    try:
        with tf.io.TFRecordWriter(partial) as writer:
            for text in iter_jsonl(path, field):
                writer.write(text.encode("utf-8"))
                count += 1
    except BaseException:
        os.remove(partial)
        raise
    os.replace(partial, records)
    with open(f"{meta}.{os.getpid()}.partial", "w") as f:
        json.dump({"source": path, "field": field, "documents": count}, f)
    os.replace(f"{meta}.{os.getpid()}.partial", meta)
    logger.debug("cached %d documents of %s in %s", count, path, records)
    return records, count

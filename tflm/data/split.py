"""Training and validation splits of a corpus, decided by the corpus alone.

A split is made one of two ways:

- `"document"`: each document goes wholly to one side, by a stable hash of
  its content (FarmHash Fingerprint64), so a document keeps its side across
  runs, machines and file orders. Used when the corpus has many documents.
- `"tail"`: the last `validation_fraction` of each document's characters is
  held out, the rest trains (nanoGPT holds out the end of its one text the
  same way). Used when documents are too few for whole ones to make a fair
  validation split: one book, a few files, one long `.jsonl` record.

`choose_split` picks the way from the documents only (never from the
sequence length, batch size or tokenizer), so `tflm train` and a later
`tflm eval --split validation` hold out the same text. Both ways are
deterministic, and the two sides are disjoint and together the whole corpus.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.data import corpus

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "all")
SPLIT_MODES = ("auto", "document", "tail")
# A per-document split needs at least this many documents on each side.
MIN_DOCUMENTS = 8
_HASH_BUCKETS = 1 << 30
# `choose_split` decides from the documents in the first this many bytes.
_SCAN_BYTES = 64 << 20
_CHOICES: dict[tuple, str] = {}


def is_validation(docs: tf.Tensor, validation_fraction: float) -> tf.Tensor:
    """Whether documents belong to the validation split, by content hash.

    Args:
        docs: string tensor of documents, any shape.
        validation_fraction: share of documents, in `[0, 1)`, to hold out.

    Returns:
        A bool tensor shaped like `docs`.
    """
    buckets = tf.strings.to_hash_bucket_fast(docs, _HASH_BUCKETS)
    return buckets < int(validation_fraction * _HASH_BUCKETS)


def choose_split(
    doc_batches: tf.data.Dataset, validation_fraction: float
) -> tuple[str, str]:
    """How to split documents: `"document"` or `"tail"`, and why.

    Whole documents are held out when each side gets at least
    `MIN_DOCUMENTS` of them and the validation side holds between half and
    twice `validation_fraction` of the text; otherwise each document's tail.

    Args:
        doc_batches: a dataset of string vectors of documents.
        validation_fraction: the share to hold out, in `(0, 1)`.

    Returns:
        `(mode, reason)`: the mode, and a phrase saying why for the log.
    """
    val_docs, train_docs, val_bytes, all_bytes = _scan(
        doc_batches, validation_fraction
    )
    if min(val_docs, train_docs) < MIN_DOCUMENTS:
        total = val_docs + train_docs
        return "tail", (
            f"the text has only {total} document(s), too few to hold out "
            "whole ones"
        )
    share = val_bytes / max(all_bytes, 1)
    if not validation_fraction / 2 <= share <= 2 * validation_fraction:
        return "tail", (
            f"whole documents would hold out {share:.0%} of the text, not "
            f"about {validation_fraction:.0%}"
        )
    return "document", f"{val_docs} or more documents are held out whole"


def _scan(doc_batches, fraction) -> np.ndarray:
    """`[validation docs, training docs, validation bytes, all bytes]`."""

    def stats(docs):
        held = is_validation(docs, fraction)
        size = tf.cast(tf.strings.length(docs), tf.int64)
        return tf.stack(
            [
                tf.reduce_sum(tf.cast(held, tf.int64)),
                tf.reduce_sum(tf.cast(~held, tf.int64)),
                tf.reduce_sum(tf.where(held, size, 0)),
                tf.reduce_sum(size),
            ]
        )

    total = np.zeros(4, np.int64)
    for counts in doc_batches.map(stats).as_numpy_iterator():
        total += counts
        if total[3] >= _SCAN_BYTES:
            break
    return total


def resolve_split(
    files: Sequence[str],
    validation_fraction: float,
    *,
    text_format: str = "document",
    jsonl_field: str = "text",
    cache_dir: str | None = None,
) -> str:
    """`choose_split` for these files, once per process (logged at INFO).

    Returns:
        `"document"` or `"tail"`.
    """
    stats = tuple((os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files)
    key = (tuple(files), stats, validation_fraction, text_format, jsonl_field)
    if key not in _CHOICES:
        docs = corpus.read_document_batches(
            files,
            text_format=text_format,
            jsonl_field=jsonl_field,
            cache_dir=cache_dir,
        )
        mode, reason = choose_split(docs, validation_fraction)
        _CHOICES[key] = mode
        if mode == "tail":
            logger.info(
                "Validation: holding out the last %g%% of each document's "
                "characters, because %s.",
                100 * validation_fraction,
                reason,
            )
        else:
            logger.debug("Validation split by document: %s.", reason)
    return _CHOICES[key]


def select_split(
    doc_batches: tf.data.Dataset,
    split: str,
    validation_fraction: float,
    mode: str = "document",
) -> tf.data.Dataset:
    """Keeps the documents, or parts, of `split` from document vectors.

    Args:
        doc_batches: a dataset of string vectors of documents.
        split: `"train"`, `"validation"` or `"all"`.
        validation_fraction: the share held out.
        mode: `"document"` or `"tail"` (see the module docstring).

    Returns:
        A dataset of string vectors.
    """
    if split not in SPLITS:
        raise errors.InputError(
            f"split must be one of {SPLITS}. Received: split={split!r}"
        )
    if split == "all":
        return doc_batches
    keep = split == "validation"
    if mode == "tail":
        return doc_batches.map(lambda d: _tail(d, validation_fraction, keep))
    if mode != "document":
        raise errors.InputError(
            f"split_mode must be one of {SPLIT_MODES}. Received: "
            f"split_mode={mode!r}"
        )

    def select(docs):
        chosen = tf.equal(is_validation(docs, validation_fraction), keep)
        return tf.boolean_mask(docs, chosen)

    return doc_batches.map(select)


def _tail(docs: tf.Tensor, fraction: float, validation: bool) -> tf.Tensor:
    """The last `fraction` of each document's characters, or the rest."""
    length = tf.strings.length(docs, unit="UTF8_CHAR")
    held = tf.cast(tf.cast(length, tf.float64) * fraction, tf.int32)
    head = length - held
    if validation:
        parts = tf.strings.substr(docs, head, held, unit="UTF8_CHAR")
    else:
        parts = tf.strings.substr(docs, tf.zeros_like(head), head, "UTF8_CHAR")
    return tf.boolean_mask(parts, tf.strings.length(parts) > 0)


def split_documents(
    files: Sequence[str],
    split: str,
    validation_fraction: float,
    *,
    split_mode: str = "auto",
    text_format: str = "document",
    jsonl_field: str = "text",
    cache_dir: str | None = None,
) -> tf.data.Dataset:
    """The document vectors of one split of `files`.

    Args:
        files: paths from `find_files`.
        split: `"train"`, `"validation"` or `"all"`.
        validation_fraction: the share held out.
        split_mode: `"auto"` (see `resolve_split`), `"document"` or
            `"tail"`.
        text_format: what a document is (see `tflm.data.corpus`).
        jsonl_field: the text field of `.jsonl` records.
        cache_dir: where `.jsonl` texts are cached.

    Returns:
        A dataset of string vectors of documents (or of their parts).
    """
    kwargs = dict(
        text_format=text_format, jsonl_field=jsonl_field, cache_dir=cache_dir
    )
    if split != "all" and split_mode == "auto":
        split_mode = resolve_split(files, validation_fraction, **kwargs)
    docs = corpus.read_document_batches(files, **kwargs)
    return select_split(docs, split, validation_fraction, split_mode)

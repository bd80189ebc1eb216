"""The BPE model of a byte-level tokenizer in core TensorFlow ops.

Words (UTF-8 bytes) become byte ids, then merge by `gpt2_bpe_ops`'s merge
loop. With `ignore_merges` (Llama 3), a word that is itself a token of the
vocabulary is that one token, as in Hugging Face's BPE model. Exact string
lookups use sorted 64-bit fingerprints plus the strings to confirm a hit, all
constants, so a SavedModel holds no table resource.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.tokenizers import gpt2_bpe_ops as ops

# `to_hash_bucket_fast` takes Fingerprint64 modulo this.
_BUCKETS = np.iinfo(np.int64).max


class StringTable(NamedTuple):
    """Strings to int32 values: fingerprints sorted, keys and values in the
    same order."""

    hashes: np.ndarray
    keys: np.ndarray
    values: np.ndarray


def string_table(items: dict[bytes, int], source: str) -> StringTable:
    """A `StringTable` of `items`.

    Raises:
        InputError: two keys share a fingerprint (not seen in practice).
    """
    keys = list(items)
    with tf.init_scope():
        hashes = tf.strings.to_hash_bucket_fast(
            tf.constant(keys, tf.string, shape=[len(keys)]), _BUCKETS
        ).numpy()
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    if np.any(hashes[1:] == hashes[:-1]):
        raise errors.InputError(
            f"{source}: two tokens share a 64-bit fingerprint; tflm cannot "
            "look them up exactly."
        )
    return StringTable(
        hashes,
        np.array([keys[i] for i in order], dtype=object),
        np.array([items[keys[i]] for i in order], np.int32),
    )


def lookup(strings: tf.Tensor, table: StringTable):
    """`(found, values)` of string `[N]`; a value is -1 where not found."""
    if not len(table.keys):
        return tf.zeros_like(strings, tf.bool), tf.fill(tf.shape(strings), -1)
    hashes = tf.strings.to_hash_bucket_fast(strings, _BUCKETS)
    at = tf.searchsorted(tf.constant(table.hashes), hashes)
    at = tf.minimum(at, len(table.keys) - 1)
    keys = tf.constant(table.keys.tolist(), tf.string)
    found = tf.equal(tf.gather(keys, at), strings)
    values = tf.where(found, tf.gather(tf.constant(table.values), at), -1)
    return found, values


def token_bytes(token: str) -> bytes:
    """The bytes a token stands for, as Hugging Face's ByteLevel decoder
    gives them: each character mapped back to its byte, or, when one is not
    a byte character (an added token such as `"<｜end▁of▁sentence｜>"`),
    the token's own UTF-8."""
    to_byte = _to_byte()
    if all(c in to_byte for c in token):
        return bytes(to_byte[c] for c in token)
    return token.encode()


@functools.cache
def _to_byte() -> dict[str, int]:
    return {c: b for b, c in ops.bytes_to_unicode().items()}


def byte_ids(vocabulary: dict[str, int], source: str) -> np.ndarray:
    """Int32 `[256]`: the id of each byte's token.

    Raises:
        InputError: a byte has no token (not a byte-level vocabulary).
    """
    chars = ops.bytes_to_unicode()
    missing = [c for c in chars.values() if c not in vocabulary]
    if missing:
        raise errors.InputError(
            f"{source} lacks {len(missing)} of the 256 byte tokens (first: "
            f"{missing[0]!r}); it is not a byte-level BPE vocabulary."
        )
    return np.array([vocabulary[chars[b]] for b in range(256)], np.int32)


def whole_word_table(
    vocabulary: dict[str, int], skip: set[int], source: str
) -> StringTable:
    """The vocabulary's byte-character tokens by their bytes, for
    `ignore_merges`, less the ids in `skip` (special tokens: text never
    gives them)."""
    to_byte = _to_byte()
    items = {
        bytes(to_byte[c] for c in token): i
        for token, i in vocabulary.items()
        if token and i not in skip and all(c in to_byte for c in token)
    }
    return string_table(items, source)


def encode_words(
    words: tf.Tensor,
    byte_table: np.ndarray,
    merge_tables: tuple | None,
    vocabulary_size: int,
    whole_words: StringTable | None = None,
) -> tf.RaggedTensor:
    """BPE of string `[N]` (each a word's UTF-8 bytes): int32 `[N, None]`.

    Args:
        words: string `[N]`.
        byte_table: `byte_ids(...)`.
        merge_tables: `gpt2_bpe_ops.merge_tables(...)`, or `None` when
            there are no merges.
        vocabulary_size: the size `merge_tables` was built with.
        whole_words: `whole_word_table(...)` for `ignore_merges`, or `None`.
    """
    lengths = tf.strings.length(words, unit="BYTE")
    raw = tf.io.decode_raw(tf.strings.reduce_join(words), tf.uint8)
    ids = tf.gather(tf.constant(byte_table), tf.cast(raw, tf.int32))
    if whole_words is not None:
        ids, lengths = _whole_words(words, ids, lengths, whole_words)
    if merge_tables is not None:
        ids, lengths = ops.merge_words(
            ids, lengths, merge_tables, vocabulary_size
        )
    return tf.RaggedTensor.from_row_lengths(
        ids, tf.cast(lengths, tf.int64), validate=False
    )


def _whole_words(words, ids, lengths, table):
    """A word found in `table` becomes its one id (its other bytes go)."""
    found, word_ids = lookup(words, table)
    rows = tf.repeat(tf.range(tf.size(lengths)), lengths)
    starts = tf.cumsum(lengths, exclusive=True)
    first = tf.equal(tf.range(tf.size(ids)), tf.gather(starts, rows))
    whole = tf.gather(found, rows)
    ids = tf.where(whole, tf.gather(word_ids, rows), ids)
    ids = tf.boolean_mask(ids, first | ~whole)
    return ids, tf.where(found, 1, lengths)

"""Token ids from text pieces, and training examples from windows: the
steps shared by the in-memory pipeline (`pipeline`) and prepared shards
(`prepare`, `prepared`)."""

from __future__ import annotations

import tensorflow as tf

from tflm.tokenizers import base


def tokenize_pieces(
    texts: tf.Tensor,
    ends: tf.Tensor,
    tokenizer: base.Tokenizer,
    lines: bool = True,
) -> tf.Tensor:
    """The ids of consecutive pieces of text, `eos_id` after each piece
    that ends a document.

    Args:
        texts: string `[n]`, pieces of documents in order; a piece that
            does not end its document is cut where the tokenizer gives the
            same ids to the parts as to the whole (`tflm.data.prepare`).
        ends: bool `[n]`, whether each piece ends its document.
        tokenizer: the tokenizer.
        lines: tokenize line by line where that gives the same ids
            (`newline_is_boundary`); the texts are then cut into lines here.

    Returns:
        int32 `[m]`: the ids, concatenated.
    """
    if lines and tokenizer.newline_is_boundary:
        # Line by line: many short texts tokenize faster than a long one.
        lines = tf.strings.split(texts, "\n")
        lengths = lines.row_lengths()
        index = tf.ragged.range(lengths).flat_values
        last = tf.equal(index, tf.repeat(lengths - 1, lengths))
        texts = tf.strings.join([lines.flat_values, tf.where(last, "", "\n")])
        ends = tf.logical_and(last, tf.repeat(ends, lengths))
    return _tokenize_with_eos(texts, ends, tokenizer)


def _tokenize_with_eos(texts, ends, tokenizer) -> tf.Tensor:
    ids = tokenizer.tokenize(texts)
    ends = tf.cast(ends, tf.int64)
    eos = tf.fill([tf.reduce_sum(ends)], tokenizer.eos_id)
    eos = tf.RaggedTensor.from_row_lengths(eos, ends, validate=False)
    return tf.concat([ids, eos], axis=1).flat_values


def to_inputs_and_labels(windows: tf.Tensor):
    """Splits windows `[B, T + 1]` into `(x, y, sample_weight)`."""
    token_ids = windows[:, :-1]
    x = {
        "token_ids": token_ids,
        "padding_mask": tf.ones_like(token_ids, dtype=tf.bool),
    }
    y = windows[:, 1:]
    return x, y, tf.ones(tf.shape(y), tf.float32)

"""Token ids from text pieces, and training examples from windows: the
steps shared by the in-memory pipeline (`pipeline`) and prepared shards
(`prepare`, `prepared`)."""

from __future__ import annotations

import tensorflow as tf

from tflm.tokenizers import base


def split_lines(
    texts: tf.Tensor, ends: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pieces of text `[n]` cut into their lines, each keeping its newline,
    and which line ends a document (the last line of a piece that does).

    Tokenizers whose tokens never span a newline (`newline_is_boundary`)
    give the lines the ids of the whole, and many short texts tokenize
    faster than a long one.
    """
    lines = tf.strings.split(texts, "\n")
    lengths = lines.row_lengths()
    index = tf.ragged.range(lengths).flat_values
    last = tf.equal(index, tf.repeat(lengths - 1, lengths))
    texts = tf.strings.join([lines.flat_values, tf.where(last, "", "\n")])
    return texts, tf.logical_and(last, tf.repeat(ends, lengths))


def tokenize_pieces(
    texts: tf.Tensor, ends: tf.Tensor, tokenizer: base.Tokenizer
) -> tf.Tensor:
    """The ids of consecutive pieces of text, `eos_id` after each piece
    that ends a document.

    Args:
        texts: string `[n]`, pieces of documents in order; a piece that
            does not end its document is cut where the tokenizer gives the
            same ids to the parts as to the whole (`tflm.data.blocks`).
        ends: bool `[n]`, whether each piece ends its document.
        tokenizer: the tokenizer.

    Returns:
        int32 `[m]`: the ids, concatenated.
    """
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

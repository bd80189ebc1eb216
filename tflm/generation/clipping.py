"""Cutting generation inputs to the context before anything is made dense.

A request may hold one huge prompt beside thousands of empty ones. Padding
the tokenized batch to its longest row would make a `[B, longest]` tensor
(16 GiB for 4,096 rows and one 1 MiB prompt); these cut each row first, so
every tensor is at most `[B, context]`.
"""

from __future__ import annotations

import tensorflow as tf


def clip_rows(ragged, keep, from_end: bool):
    """Cuts each row of ragged `[B, None]` to at most `keep` values.

    Only the values kept are gathered, so nothing here is larger than the
    input or `B * keep` (no tensor is padded to the longest row).

    Args:
        ragged: a `tf.RaggedTensor` `[B, None]`.
        keep: int scalar or `[B]`, the most values each row keeps.
        from_end: keep each row's last values, else its first ones.

    Returns:
        A `tf.RaggedTensor` `[B, None]` with the same dtype.
    """
    starts, limits = ragged.row_starts(), ragged.row_limits()
    keep = tf.maximum(tf.cast(keep, limits.dtype), 0)
    kept = tf.minimum(limits - starts, keep)
    first = limits - kept if from_end else starts
    index = tf.ragged.range(first, first + kept)
    return index.with_flat_values(
        tf.gather(ragged.flat_values, index.flat_values)
    )


def clip_bytes(strings, keep, from_end: bool):
    """Cuts each string to at most `keep` bytes: its last or first ones."""
    keep = tf.maximum(tf.cast(keep, tf.int32), 0)
    keep = tf.broadcast_to(keep, tf.shape(strings))
    start = tf.zeros_like(keep)
    if from_end:
        start = tf.maximum(tf.strings.length(strings) - keep, 0)
    return tf.strings.substr(strings, start, keep, unit="BYTE")


def left_pad(ragged, room, start_id, width_fn=None):
    """Left-pads ragged ids `[B, None]`, keeping each row's last `room` ids.

    Rows are cut before anything is made dense, so the result, like every
    tensor made on the way, is at most `[B, max(room)]` (or `width_fn`'s
    width) whatever the rows' lengths. An empty row becomes `[start_id]`.

    Args:
        ragged: ids `[B, None]`.
        room: int scalar or `[B]`, the most ids each row keeps.
        start_id: the id an empty row starts from.
        width_fn: maps the longest kept row's length (int32 scalar) to the
            width `P` to pad to (a length bucket); `None` keeps it.

    Returns:
        `(ids [B, P], mask [B, P])` int32, `P` the longest kept row.
    """
    ragged = tf.cast(clip_rows(ragged, room, from_end=True), tf.int32)
    lengths = tf.cast(ragged.row_lengths(), tf.int32)
    kept = tf.maximum(lengths, 1)
    width = tf.maximum(tf.reduce_max(kept), 1)  # 1 for an empty batch
    if width_fn is not None:
        width = width_fn(width)
    dense = ragged.to_tensor(default_value=0)
    # One extra column so that the gather below has something to read even
    # when every row is empty.
    dense = tf.pad(dense, [[0, 0], [0, 1]])
    column = tf.range(width)[None, :]
    source = lengths[:, None] - width + column
    mask = column >= (width - kept)[:, None]
    ids = tf.gather(dense, tf.maximum(source, 0), batch_dims=1)
    ids = tf.where((lengths == 0)[:, None], start_id, ids)
    return tf.where(mask, ids, 0), tf.cast(mask, tf.int32)

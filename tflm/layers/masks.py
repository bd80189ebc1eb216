"""Attention masks as pure functions of shapes and positions."""

from __future__ import annotations

import keras


def causal_mask(query_length, key_length, offset=0):
    """Boolean `(T, S)` mask: query `t` sees keys `s <= offset + t`.

    Args:
        query_length: int or scalar tensor, `T`.
        key_length: int or scalar tensor, `S`.
        offset: int or scalar tensor, the key slot of the first query (the
            cache index when decoding with a cache).

    Returns:
        bool tensor `(T, S)`.

    Example:
    >>> causal_mask(2, 3, offset=1).numpy().astype(int).tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    query_pos = keras.ops.arange(query_length, dtype="int32") + offset
    key_pos = keras.ops.arange(key_length, dtype="int32")
    return keras.ops.greater_equal(
        keras.ops.expand_dims(query_pos, 1), keras.ops.expand_dims(key_pos, 0)
    )


def attention_mask(query_length, key_length, offset=0, key_padding_mask=None):
    """Causal mask combined with a key padding mask.

    Args:
        query_length: `T`.
        key_length: `S`.
        offset: key slot of the first query.
        key_padding_mask: optional `(B, S)`, true (or 1) where a key is real.

    Returns:
        bool tensor `(1, 1, T, S)` or `(B, 1, T, S)` when padding is given.
    """
    mask = causal_mask(query_length, key_length, offset)[None, None]
    if key_padding_mask is None:
        return mask
    keys = keras.ops.cast(key_padding_mask, "bool")[:, None, None, :]
    return keras.ops.logical_and(mask, keys)

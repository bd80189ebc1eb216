"""Text at the ends of the pipeline: prompts cut to the context, stop
strings matched on text.

Cutting: a request may hold one huge prompt beside thousands of empty ones.
Padding the tokenized batch to its longest row would make a `[B, longest]`
tensor; `clip_rows` and `clip_bytes` cut each row first, so every tensor is
at most `[B, context]`, and `left_pad` pads what is kept.

Stop strings, across token boundaries: after each step the loop
detokenizes each row's last `L + 1` tokens, `L` the longest stop string in
bytes (a token that makes text makes at least one byte, so a stop string
that ends in the newest token starts inside that window, and never in its
first token, whose text a tokenizer may change, e.g. SentencePiece drops a
leading space). A stop string found there ends in the newest token: one
found earlier would have stopped the row earlier. The cost is linear in the
output length. Matching compares bytes (core ops only), so it is exact
whatever the text.

`Incremental` detokenizes a growing id list for streaming.
"""

from __future__ import annotations

import numpy as np
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


def to_bytes(strings):
    """uint8 `[N, W]` (zero padded, `W` the longest string's length) and
    int32 lengths `[N]` of strings `[N]`."""
    pieces = tf.strings.bytes_split(strings)
    flat = tf.io.decode_raw(pieces.flat_values, tf.uint8)
    values = tf.reshape(flat, [-1])
    ragged = pieces.with_flat_values(values)
    lengths = tf.cast(ragged.row_lengths(), tf.int32)
    return ragged.to_tensor(default_value=0), lengths


def first_match(text, stop):
    """int32 `[B]`: the first byte where any stop string starts, or -1.

    Args:
        text: string `[B]`.
        stop: string `[B, K]`; empty strings are padding.
    """
    batch, k = tf.shape(stop)[0], tf.shape(stop)[1]
    t, t_len = to_bytes(text)
    s, s_len = to_bytes(tf.reshape(stop, [-1]))
    width = tf.shape(s)[1]
    s = tf.reshape(s, [batch, k, width])
    s_len = tf.reshape(s_len, [batch, k])
    text_width = tf.shape(t)[1]
    p = tf.range(text_width)
    q = tf.range(width)
    at = tf.minimum(p[:, None] + q[None, :], tf.maximum(text_width - 1, 0))
    # windows[b, p, q] = text byte p + q; [B, 1, Tw, Sw] vs [B, K, 1, Sw].
    t = tf.pad(t, [[0, 0], [0, 1]])  # something to read when text is empty
    windows = tf.gather(t, at, axis=1)
    same = tf.equal(windows[:, None], s[:, :, None])
    same |= q[None, None, None, :] >= s_len[:, :, None, None]
    hit = tf.reduce_all(same, axis=3)
    hit &= (s_len > 0)[:, :, None]
    hit &= p[None, None, :] + s_len[:, :, None] <= t_len[:, None, None]
    found = tf.reduce_any(hit, axis=1)  # [B, Tw]
    # A column to take the maximum over when every text is empty.
    found = tf.pad(found, [[0, 0], [0, 1]])
    first = tf.argmax(tf.cast(found, tf.int32), axis=1, output_type=tf.int32)
    return tf.where(tf.reduce_any(found, axis=1), first, -1)


def window_text(detokenize, tokens, num_tokens, window):
    """Each row's text of its last `window` tokens, and where it starts.

    Args:
        detokenize: ragged ids `[B, None]` -> string `[B]`.
        tokens: int32 `[B, M]`, the generated ids (a row's first
            `num_tokens`).
        num_tokens: int32 `[B]`.
        window: int32 scalar.

    Returns:
        `text` string `[B]`.
    """
    width = tf.shape(tokens)[1]
    start = tf.maximum(num_tokens - window, 0)
    index = start[:, None] + tf.range(window)[None, :]
    # A column to read when no row made a token (`width` 0).
    tokens = tf.pad(tokens, [[0, 0], [0, 1]])
    ids = tf.gather(tokens, tf.minimum(index, width), batch_dims=1)
    ragged = tf.RaggedTensor.from_tensor(ids, lengths=num_tokens - start)
    return detokenize(ragged)


def longest(stop):
    """int32 scalar: the longest stop string in bytes (0 if none)."""
    lengths = tf.reshape(tf.strings.length(stop), [-1])
    return tf.reduce_max(tf.concat([lengths, [0]], 0))


def text_stop(detokenize, stop):
    """The loop's `text_stop`: true where a stop string ended the text."""
    window = longest(stop) + 1

    def check(tokens, num_tokens):
        text = window_text(detokenize, tokens, num_tokens, window)
        found = first_match(text, stop) >= 0
        # The text ops lose the static shape; it is the rows'.
        return tf.reshape(found, tf.shape(num_tokens))

    return check


def cut(detokenize, text, tokens, num_tokens, stopped, stop):
    """`text` `[B]` cut where a stop string starts, on rows `stopped`.

    The stop string lies in the last window of the row's tokens, so only
    that window is searched; its place is counted from the end of the text,
    which the window and the whole text share.
    """
    window = longest(stop) + 1
    tail = window_text(detokenize, tokens, num_tokens, window)
    at = first_match(tail, stop)
    keep = tf.strings.length(text) - (tf.strings.length(tail) - at)
    keep = tf.where(stopped & (at >= 0), keep, tf.strings.length(text))
    return tf.strings.substr(text, tf.zeros_like(keep), keep)


class Incremental:
    """Text of a growing id list, detokenizing only what is new.

    Decodes the ids since the last point where the text was whole (`prefix`)
    twice, before and after the new ids, and keeps the difference: the
    tokenizer then sees the new ids in context (SentencePiece drops the
    leading space of the first piece it sees), and a character split across
    tokens waits for its last byte.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix = self.read = 0
        self.text = ""

    def _decode(self, ids):
        ids = tf.constant(np.asarray(ids, np.int32).reshape(-1), tf.int32)
        raw = self.tokenizer.detokenize(ids).numpy()
        return raw.decode("utf-8", "replace")

    def update(self, ids) -> str:
        if len(ids) > self.read:
            before = self._decode(ids[self.prefix : self.read])
            after = self._decode(ids[self.prefix :])
            if not after.endswith("\ufffd"):
                self.text += after[len(before) :]
                self.prefix, self.read = self.read, len(ids)
        return self.text

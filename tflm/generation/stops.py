"""Stop strings matched on text, across token boundaries, in the graph.

After each step the loop detokenizes each row's last `L + 1` tokens, `L`
the longest stop string in bytes (a token that makes text makes at least one
byte, so a stop string that ends in the newest token starts inside that
window, and never in its first token, whose text a tokenizer may change,
e.g. SentencePiece drops a leading space). A stop string found there ends in
the newest token: one found earlier would have stopped the row earlier. The
cost is linear in the output length. Matching compares bytes (core ops
only), so it is exact whatever the text.
"""

from __future__ import annotations

import tensorflow as tf


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
    ids = tf.gather(tokens, tf.minimum(index, width - 1), batch_dims=1)
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
        return first_match(text, stop) >= 0

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

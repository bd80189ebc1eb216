"""Logits processors with Hugging Face's semantics, per row, in the graph.

Each is a pure function of `[B, V]` float32 logits and `[B]` settings, and
leaves the logits bit for bit unchanged where its setting is off, so a call
that uses none of them gives what a loop without them gives. They run before
temperature, top-k and top-p, in Hugging Face's order: repetition penalty,
no-repeat n-grams, minimum new tokens.
"""

from __future__ import annotations

import tensorflow as tf

NEG_INF = float("-inf")


def _marked(ids, keep, vocabulary_size):
    """bool `[B, V]`: true at each row's ids `[B, N]` where `keep`.

    Dense shapes only (no boolean masks, whose sizes depend on the data):
    ids not kept, or out of range, mark an extra column that is dropped, so
    the same graph runs in the plain graph and under XLA with open shapes.
    """
    batch = tf.shape(ids)[0]
    keep &= (ids >= 0) & (ids < vocabulary_size)
    column = tf.where(keep, ids, vocabulary_size)
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(ids))
    marked = tf.tensor_scatter_nd_update(
        tf.zeros([batch, vocabulary_size + 1], tf.bool),
        tf.stack([rows, column], axis=-1),
        tf.ones(tf.shape(ids), tf.bool),
    )
    return marked[:, :vocabulary_size]


def seen_tokens(prompt_ids, prompt_mask, vocabulary_size):
    """bool `[B, V]`: the ids that occur in each row's (real) prompt."""
    keep = tf.cast(prompt_mask, tf.bool)
    return _marked(prompt_ids, keep, vocabulary_size)


def mark_seen(seen, token):
    """`seen` with each row's `token` `[B]` set."""
    batch = tf.shape(token)[0]
    index = tf.stack([tf.range(batch), token], axis=1)
    return tf.tensor_scatter_nd_update(seen, index, tf.ones([batch], tf.bool))


def repetition_penalty(logits, seen, penalty):
    """Seen tokens' logits: divided by `penalty` if > 0, else multiplied."""
    p = penalty[:, None]
    penalized = tf.where(logits > 0, logits / p, logits * p)
    return tf.where(seen & (p != 1.0), penalized, logits)


def no_repeat_ngram(logits, history, start, end, size):
    """Bans each token that would repeat an n-gram of the row's history.

    Args:
        logits: float32 `[B, V]`.
        history: int32 `[B, S]`; row `b`'s sequence is `history[b,
            start[b]:end[b]]` (prompt and generated ids, contiguous).
        start, end: int32 `[B]`.
        size: int32 `[B]`, the n-gram size (`0` is off).
    """
    batch, length = tf.shape(history)[0], tf.shape(history)[1]
    n = size[:, None]
    # Where each candidate n-gram starts.
    j = tf.broadcast_to(tf.range(length)[None, :], [batch, length])
    # The last n - 1 ids of each row, compared with every window.
    match = (n > 0) & (j >= start[:, None]) & (j + n <= end[:, None])
    match &= (end - start >= n[:, 0])[:, None]

    def body(k, match):
        here = tf.gather(history, tf.minimum(j + k, length - 1), batch_dims=1)
        last_at = tf.clip_by_value(end - n[:, 0] + 1 + k, 0, length - 1)
        last = tf.gather(history, last_at[:, None], batch_dims=1)
        return k + 1, match & ((k >= n - 1) | tf.equal(here, last))

    _, match = tf.while_loop(
        lambda k, _: k < tf.reduce_max(size) - 1, body, (0, match)
    )
    banned = tf.gather(
        history, tf.clip_by_value(j + n - 1, 0, length - 1), batch_dims=1
    )
    mask = _marked(banned, match, tf.shape(logits)[1])
    return tf.where(mask, NEG_INF, logits)


def min_new_tokens(logits, step, minimum, eos_ids, stop_ids):
    """Bans the end ids `[E]` and stop ids `[B, N]` (-1 pads) while `step <
    minimum` (per row)."""
    batch, vocab = tf.shape(logits)[0], tf.shape(logits)[1]
    ends = tf.tile(tf.cast(eos_ids, tf.int32)[None, :], [batch, 1])
    stops = tf.concat([ends, stop_ids], axis=1)
    keep = tf.broadcast_to((step < minimum)[:, None], tf.shape(stops))
    banned = _marked(stops, keep, vocab)
    return tf.where(banned, NEG_INF, logits)

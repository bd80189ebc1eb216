"""Token samplers: pure functions of logits with per-row settings.

Every setting is a `[B]` tensor so that one batch can mix requests:
`temperature == 0` is greedy, `top_k == 0` and `top_p >= 1` are off. Random
draws come from a counter-based hash of `(seed, step, token)`, so a row's
text depends only on its own seed and inputs, never on its batch neighbours,
and the same seed gives the same text in-process, in a SavedModel and under
TF Serving (core TensorFlow ops only).
"""

from __future__ import annotations

import tensorflow as tf

from tflm.generation import processors

_NEG_INF = -1e30


def _hash_uint32(x):
    """A 32-bit integer mixer (two multiply-xorshift rounds)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def prompt_hash(ids):
    """int32 `[B]`: a hash of each prompt's ids (ragged `[B, None]`).

    Mixed into each row's seed (`bitwise_xor`), it gives different prompts
    different streams under one seed, while a row's stream still depends
    only on its own seed and prompt, not on its batch neighbours.
    """
    joined = tf.strings.reduce_join(
        tf.strings.as_string(ids), axis=1, separator=" "
    )
    hashed = tf.strings.to_hash_bucket_fast(joined, 2**31 - 1)
    return tf.cast(hashed, tf.int32)


def uniform_noise(seed, step, vocabulary_size):
    """Uniform floats in (0, 1), `[B, V]`, a pure function of seed and step.

    Args:
        seed: int32 `[B]`.
        step: int32 scalar, the index of the token being drawn.
        vocabulary_size: int or scalar tensor `V`.
    """
    seed = tf.cast(seed, tf.uint32)
    row = _hash_uint32(
        seed * tf.constant(0x9E3779B9, tf.uint32) + tf.cast(step, tf.uint32)
    )
    token = tf.range(vocabulary_size, dtype=tf.int32)
    bits = _hash_uint32(
        tf.bitwise.bitwise_xor(
            row[:, None], _hash_uint32(tf.cast(token, tf.uint32))[None, :]
        )
    )
    mantissa = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32)
    return (mantissa + 0.5) * (1.0 / (1 << 24))


def top_k_mask(logits, top_k):
    """Keeps each row's `top_k` largest logits (`0` keeps all)."""
    vocab = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    kmax = tf.reduce_max(k)
    values = tf.math.top_k(logits, k=kmax, sorted=True).values
    threshold = tf.gather(values, k - 1, batch_dims=1)
    return tf.where(logits >= threshold[:, None], logits, _NEG_INF)


def top_p_mask(logits, top_p):
    """Keeps the smallest set of tokens whose probability reaches `top_p`.

    A token is kept when the probability of the tokens strictly more likely
    than it is below `top_p`; `top_p >= 1` keeps all.
    """
    probs = tf.nn.softmax(logits, axis=-1)
    sorted_probs = tf.sort(probs, axis=-1, direction="DESCENDING")
    before = tf.cumsum(sorted_probs, axis=-1, exclusive=True)
    kept = tf.where(before < top_p[:, None], sorted_probs, 2.0)
    threshold = tf.reduce_min(kept, axis=-1)
    keep = (probs >= threshold[:, None]) | (top_p[:, None] >= 1.0)
    return tf.where(keep, logits, _NEG_INF)


def sample(logits, temperature, top_k, top_p, seed, step):
    """Draws one token per row: `[B, V]` float32 logits → int32 `[B]`.

    Order as in common practice: temperature, then top-k, then top-p, then a
    Gumbel-max draw. Rows with `temperature == 0` take the argmax.
    """
    logits = tf.cast(logits, tf.float32)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

    def draw():
        safe_t = tf.where(temperature > 0, temperature, 1.0)
        scaled = logits / safe_t[:, None]
        scaled = tf.cond(
            tf.reduce_any(top_k > 0),
            lambda: top_k_mask(scaled, top_k),
            lambda: scaled,
        )
        scaled = tf.cond(
            tf.reduce_any(top_p < 1.0),
            lambda: top_p_mask(scaled, top_p),
            lambda: scaled,
        )
        noise = uniform_noise(seed, step, tf.shape(logits)[-1])
        gumbel = -tf.math.log(-tf.math.log(noise))
        drawn = tf.argmax(scaled + gumbel, axis=-1, output_type=tf.int32)
        return tf.where(temperature > 0, drawn, greedy)

    return tf.cond(tf.reduce_any(temperature > 0), draw, lambda: greedy)


def next_token(logits, seen, const, tokens, step):
    """int32 `[B]`: each row's next token.

    Runs the logits processors (`tflm.generation.processors`), each under
    a `tf.cond` that skips it when no row uses it, then `sample`.

    Args:
        logits: `[B, V]`.
        seen: bool `[B, V]`, for the repetition penalty.
        const: the loop's `Constants` (settings and prompts).
        tokens: int32 `[B, M]`, the ids generated so far.
        step: int32 scalar, the index of the token being chosen.
    """
    s = const.settings
    logits = tf.cast(logits, tf.float32)
    penalty = s.repetition_penalty
    logits = tf.cond(
        tf.reduce_any(penalty != 1.0),
        lambda: processors.repetition_penalty(logits, seen, penalty),
        lambda: logits,
    )
    size = s.no_repeat_ngram_size
    logits = tf.cond(
        tf.reduce_any(size > 0),
        lambda: _no_repeat(logits, const, tokens, step, size),
        lambda: logits,
    )
    logits = tf.cond(
        tf.reduce_any(step < s.min_new_tokens),
        lambda: processors.min_new_tokens(
            logits, step, s.min_new_tokens, s.eos_ids, s.stop_ids
        ),
        lambda: logits,
    )
    return sample(logits, s.temperature, s.top_k, s.top_p, s.seed, step)


def _no_repeat(logits, const, tokens, step, size):
    prompt_len = tf.shape(const.prompt_ids)[1]
    history = tf.concat([const.prompt_ids, tokens], axis=1)
    real = tf.reduce_sum(tf.cast(const.prompt_mask, tf.int32), axis=1)
    start = prompt_len - real
    end = tf.fill(tf.shape(start), prompt_len + step)
    return processors.no_repeat_ngram(logits, history, start, end, size)

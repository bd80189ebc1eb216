"""Beam search: the second decode loop, over the sampling loop's
`Decoding`, `LoopSettings`, `prefill` and `LoopOutput`.

Semantics are Hugging Face `generate`'s (`num_beams`, `length_penalty`,
`early_stopping` True/False): each step keeps the `2 * num_beams` best
continuations of all beams of a prompt; those among the first `num_beams`
that end (end-of-text, or the prompt's last allowed token) join the prompt's
`num_beams` best finished hypotheses with score `sum of log-probs /
length ** length_penalty` (length counts the new tokens, the end-of-text
token included); the best `num_beams` that did not end run on. A prompt is
done when no running beam can beat its worst finished hypothesis (HF's
heuristic: the best running sum over the current length), with
`early_stopping` as soon as it has `num_beams` of them, or at its length
limit. Logits processors and sampling do not apply (temperature must be 0).

The KV cache rows are reordered with `tf.gather` on the batch axis, a core
op, so this runs in the plain graph under TF Serving and under XLA alike.
Prompts are prefilled once and the cache repeated to the beams.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from tflm.generation import loop

_NEG = -1e9  # HF's "impossible" running score


class Beams(NamedTuple):
    """The beam settings of a batch.

    Fields:
        num_beams: int32 scalar `>= 1`, the same for every prompt.
        num_return_sequences: int32 scalar in `[1, num_beams]`.
        length_penalty: float32 `[B]`.
        early_stopping: bool `[B]`.
    """

    num_beams: tf.Tensor
    num_return_sequences: tf.Tensor
    length_penalty: tf.Tensor
    early_stopping: tf.Tensor


class BeamState(NamedTuple):
    """What a beam step advances; `K` is `num_beams`, `W` the new-token
    width `S - P`.

    Fields:
        step: int32 scalar.
        cache: the KV cache of the `B * K` running beams.
        logits: float32 `[B * K, V]`.
        running: int32 `[B, K, W]`, the running beams' ids.
        running_score: float32 `[B, K]`, their log-prob sums.
        finished: int32 `[B, K, W]`, the best finished hypotheses.
        score: float32 `[B, K]`, their scores (`-inf` for none).
        length: int32 `[B, K]`, their lengths (end-of-text excluded).
        eos: bool `[B, K]`, whether each ended with end-of-text.
        ok: bool `[B, K]`, whether each slot holds a hypothesis.
        improvable: bool `[B]`, a running beam may still beat the worst.
        done: bool `[B]`.
    """

    step: tf.Tensor
    cache: list
    logits: tf.Tensor
    running: tf.Tensor
    running_score: tf.Tensor
    finished: tf.Tensor
    score: tf.Tensor
    length: tf.Tensor
    eos: tf.Tensor
    ok: tf.Tensor
    improvable: tf.Tensor
    done: tf.Tensor


class BeamOutput(NamedTuple):
    """The best beams of every prompt, `R = B * num_return_sequences` rows,
    best first per prompt.

    Fields:
        out: `loop.LoopOutput` of the `R` rows.
        score: float32 `[R]`, sum of log-probs / length ** length_penalty.
        prompt_index: int32 `[R]`.
    """

    out: loop.LoopOutput
    score: tf.Tensor
    prompt_index: tf.Tensor


def _gather(x, index):
    """`x [B, K, ...]` rows `index [B, J]` -> `[B, J, ...]`."""
    return tf.gather(x, index, batch_dims=1)


def _start(state: loop.LoopState, const: loop.Constants, num_beams):
    """The prefilled rows, each repeated to its `num_beams`."""
    batch = tf.shape(const.prompt_ids)[0]
    rows = tf.repeat(tf.range(batch), num_beams)
    width = tf.shape(state.tokens)[1]
    first = tf.one_hot(0, num_beams, 0.0, _NEG)
    empty = tf.fill([batch, num_beams, width], const.settings.pad_id)
    return BeamState(
        step=tf.constant(0),
        cache=[tf.gather(c, rows, axis=1) for c in state.cache],
        logits=tf.gather(state.logits, rows),
        running=empty,
        running_score=tf.tile(first[None], [batch, 1]),
        finished=empty,
        score=tf.fill([batch, num_beams], float("-inf")),
        length=tf.zeros([batch, num_beams], tf.int32),
        eos=tf.zeros([batch, num_beams], tf.bool),
        ok=tf.zeros([batch, num_beams], tf.bool),
        improvable=tf.ones([batch], tf.bool),
        done=const.limit <= 0,
    )


def _choose(state: BeamState, nb):
    """Top `2 * num_beams` continuations: `(sums, parents, tokens, seqs)`."""
    logits = tf.cast(state.logits, tf.float32)
    vocab = tf.shape(logits)[-1]
    logp = tf.reshape(tf.nn.log_softmax(logits), [-1, nb, vocab])
    logp += state.running_score[:, :, None]
    flat = tf.reshape(logp, [-1, nb * vocab])
    sums, index = tf.math.top_k(flat, 2 * nb)
    parent, token = index // vocab, index % vocab
    seqs = _gather(state.running, parent)
    column = tf.equal(tf.range(tf.shape(seqs)[2]), state.step)[None, None, :]
    seqs = tf.where(column, token[:, :, None], seqs)
    return sums, parent, token, seqs


class _Rows(NamedTuple):
    """The beam rows' constants: `[B * K]` repeats of the prompts'."""

    slot_mask: tf.Tensor
    next_position: tf.Tensor


def _step(decoding, const, beams, rows, state):
    i, nb = state.step, beams.num_beams
    sums, parent, token, seqs = _choose(state, nb)
    eos_ids = const.settings.eos_ids
    is_eos = tf.reduce_any(tf.equal(token[..., None], eos_ids), axis=-1)
    hits = is_eos | (i + 1 >= const.limit)[:, None]
    # The best `num_beams` that did not end run on.
    run_sums, pick = tf.math.top_k(sums + tf.cast(hits, tf.float32) * _NEG, nb)
    new_parent, new_token = _gather(parent, pick), _gather(token, pick)
    # The first `num_beams` that ended join the finished hypotheses.
    length = tf.cast(i + 1, tf.float32)
    lp = beams.length_penalty[:, None]
    scores = sums / tf.pow(length, lp)
    full = tf.reduce_all(state.ok, axis=1) & beams.early_stopping
    joins = hits & (tf.range(2 * nb) < nb)[None, :]
    joins &= (~full & state.improvable & ~state.done)[:, None]
    merged = tf.concat([state.score, tf.where(joins, scores, -1e30)], 1)
    best, keep = tf.math.top_k(merged, nb)
    new_len = tf.fill(tf.shape(token), i + 1) - tf.cast(is_eos, tf.int32)
    ok = _gather(tf.concat([state.ok, joins], 1), keep)
    all_ok = tf.reduce_all(ok, axis=1)
    best_running = run_sums[:, 0] / tf.pow(length, beams.length_penalty)
    worst = tf.where(all_ok, tf.reduce_min(best, axis=1), _NEG)
    improvable = state.improvable & (best_running > worst)
    done = state.done | ~improvable | (all_ok & beams.early_stopping)
    done |= i + 1 >= const.limit
    batch = tf.shape(token)[0]
    order = tf.reshape(new_parent + tf.range(batch)[:, None] * nb, [-1])
    cache = [tf.gather(c, order, axis=1) for c in state.cache]
    hidden, cache = decoding.forward(
        tf.reshape(new_token, [-1, 1]),
        cache,
        const.prompt_length + i,
        rows.slot_mask,
        (rows.next_position + i)[:, None],
    )
    return BeamState(
        step=i + 1,
        cache=cache,
        logits=decoding.to_logits(hidden[:, 0]),
        running=_gather(seqs, pick),
        running_score=run_sums,
        finished=_gather(tf.concat([state.finished, seqs], 1), keep),
        score=best,
        length=_gather(tf.concat([state.length, new_len], 1), keep),
        eos=_gather(tf.concat([state.eos, is_eos & joins], 1), keep),
        ok=ok,
        improvable=improvable,
        done=done,
    )


def _outputs(state: BeamState, k, pad_id) -> BeamOutput:
    """The best `k` finished beams of every prompt."""
    ok = state.ok[:, :k]
    width = tf.shape(state.finished)[2]
    num_tokens = tf.reshape(tf.where(ok, state.length[:, :k], 0), [-1])
    tokens = tf.reshape(state.finished[:, :k], [-1, width])
    real = tf.range(width)[None, :] < num_tokens[:, None]
    tokens = tf.where(real, tokens, pad_id)
    eos = tf.reshape(state.eos[:, :k], [-1])
    out = loop.LoopOutput(
        token_ids=tokens[:, : tf.reduce_max(num_tokens)],
        num_tokens=num_tokens,
        stop_reason=tf.where(eos, loop.STOP_EOS, loop.STOP_LENGTH),
    )
    return BeamOutput(
        out=out,
        score=tf.reshape(tf.where(ok, state.score[:, :k], 0.0), [-1]),
        prompt_index=tf.repeat(tf.range(tf.shape(ok)[0]), k),
    )


def generate(
    decoding: loop.Decoding,
    cache,
    prompt_ids,
    prompt_mask,
    settings: loop.LoopSettings,
    beams: Beams,
) -> BeamOutput:
    """Beam search for `B` prompts; returns the best beams of each.

    Args:
        decoding: a `loop.Decoding`.
        cache: the empty cache for `B` rows (repeated to the beams here).
        prompt_ids, prompt_mask: `[B, P]`, left-padded.
        settings: `loop.LoopSettings` (`max_new_tokens`, `eos_ids`,
            `pad_id`); sampling settings are not read.
        beams: `Beams`.
    """
    pre, const = loop.prefill(
        decoding, cache, prompt_ids, prompt_mask, settings
    )
    nb = beams.num_beams
    beams = beams._replace(
        length_penalty=tf.cast(beams.length_penalty, tf.float32),
        early_stopping=tf.cast(beams.early_stopping, tf.bool),
    )
    rows = _Rows(
        slot_mask=tf.repeat(const.slot_mask, nb, axis=0),
        next_position=tf.repeat(const.next_position, nb, axis=0),
    )
    state = _start(pre, const, nb)

    def cond(state):
        return (state.step < const.steps) & ~tf.reduce_all(state.done)

    def body(state):
        return (_step(decoding, const, beams, rows, state),)

    (state,) = tf.while_loop(cond, body, (state,))
    return _outputs(state, beams.num_return_sequences, settings.pad_id)

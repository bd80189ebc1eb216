"""Beam search over the decode loop's prefill, forward step and KV cache.

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

import contextlib

import tensorflow as tf

from tflm import graph
from tflm.generation import loop
from tflm.layers import matvec

_NEG = -1e9  # HF's "impossible" running score


def _gather(x, index):
    """`x [B, K, ...]` rows `index [B, J]` -> `[B, J, ...]`."""
    return tf.gather(x, index, batch_dims=1)


def _start(forward, to_logits, cache, ids, mask, settings, num_beams):
    """Prefill `B` prompts, then repeat every row to its `num_beams`."""
    state = loop.prefill(forward, to_logits, cache, ids, mask, settings)
    batch = tf.shape(ids)[0]
    rows = tf.repeat(tf.range(batch), num_beams)
    width = tf.shape(state["tokens"])[1]
    first = tf.one_hot(0, num_beams, 0.0, _NEG)
    pad = state["settings"]["pad_id"]
    empty = tf.fill([batch, num_beams, width], pad)
    return {
        "step": tf.constant(0),
        "cache": [tf.gather(c, rows, axis=1) for c in state["cache"]],
        "logits": tf.gather(state["logits"], rows),
        "slot_mask": tf.gather(state["slot_mask"], rows),
        "next_position": tf.gather(state["next_position"], rows),
        "running": empty,
        "running_score": tf.tile(first[None], [batch, 1]),
        "finished": empty,
        "score": tf.fill([batch, num_beams], float("-inf")),
        "length": tf.zeros([batch, num_beams], tf.int32),
        "eos": tf.zeros([batch, num_beams], tf.bool),
        "ok": tf.zeros([batch, num_beams], tf.bool),
        "improvable": tf.ones([batch], tf.bool),
        "done": state["limit"] <= 0,
    }, state


def _choose(state, const, i):
    """Top `2 * num_beams` continuations: `(sums, parents, tokens, seqs)`."""
    nb = const["num_beams"]
    logits = tf.cast(state["logits"], tf.float32)
    vocab = tf.shape(logits)[-1]
    logp = tf.reshape(tf.nn.log_softmax(logits), [-1, nb, vocab])
    logp += state["running_score"][:, :, None]
    flat = tf.reshape(logp, [-1, nb * vocab])
    sums, index = tf.math.top_k(flat, 2 * nb)
    parent, token = index // vocab, index % vocab
    seqs = _gather(state["running"], parent)
    column = tf.equal(tf.range(tf.shape(seqs)[2]), i)[None, None, :]
    seqs = tf.where(column, token[:, :, None], seqs)
    return sums, parent, token, seqs


def _step(forward, to_logits, const, state):
    i, nb = state["step"], const["num_beams"]
    sums, parent, token, seqs = _choose(state, const, i)
    is_eos = tf.equal(token, const["eos_id"])
    hits = is_eos | (i + 1 >= const["limit"])[:, None]
    # The best `num_beams` that did not end run on.
    run_sums, pick = tf.math.top_k(sums + tf.cast(hits, tf.float32) * _NEG, nb)
    new_parent, new_token = _gather(parent, pick), _gather(token, pick)
    # The first `num_beams` that ended join the finished hypotheses.
    length = tf.cast(i + 1, tf.float32)
    lp = const["length_penalty"][:, None]
    scores = sums / tf.pow(length, lp)
    full = tf.reduce_all(state["ok"], axis=1) & const["early_stopping"]
    joins = hits & (tf.range(2 * nb) < nb)[None, :]
    joins &= (~full & state["improvable"] & ~state["done"])[:, None]
    merged = tf.concat([state["score"], tf.where(joins, scores, -1e30)], 1)
    best, keep = tf.math.top_k(merged, nb)
    new_len = tf.fill(tf.shape(token), i + 1) - tf.cast(is_eos, tf.int32)
    finished = {
        "finished": _gather(tf.concat([state["finished"], seqs], 1), keep),
        "length": _gather(tf.concat([state["length"], new_len], 1), keep),
        "eos": _gather(tf.concat([state["eos"], is_eos & joins], 1), keep),
        "ok": _gather(tf.concat([state["ok"], joins], 1), keep),
    }
    all_ok = tf.reduce_all(finished["ok"], axis=1)
    best_running = run_sums[:, 0] / tf.pow(length, const["length_penalty"])
    worst = tf.where(all_ok, tf.reduce_min(best, axis=1), _NEG)
    improvable = state["improvable"] & (best_running > worst)
    done = state["done"] | ~improvable | (all_ok & const["early_stopping"])
    done |= i + 1 >= const["limit"]
    batch = tf.shape(token)[0]
    rows = tf.reshape(new_parent + tf.range(batch)[:, None] * nb, [-1])
    cache = [tf.gather(c, rows, axis=1) for c in state["cache"]]
    hidden, cache = forward(
        tf.reshape(new_token, [-1, 1]),
        cache,
        const["prompt_length"] + i,
        state["slot_mask"],
        (state["next_position"] + i)[:, None],
    )
    return {
        **state,
        **finished,
        "step": i + 1,
        "cache": cache,
        "logits": to_logits(hidden[:, 0]),
        "running": _gather(seqs, pick),
        "running_score": run_sums,
        "score": best,
        "improvable": improvable,
        "done": done,
    }


def _outputs(state, const, num_return_sequences):
    """The best `num_return_sequences` finished beams of every prompt."""
    k = num_return_sequences
    ok = state["ok"][:, :k]
    width = tf.shape(state["finished"])[2]
    num_tokens = tf.reshape(tf.where(ok, state["length"][:, :k], 0), [-1])
    tokens = tf.reshape(state["finished"][:, :k], [-1, width])
    real = tf.range(width)[None, :] < num_tokens[:, None]
    tokens = tf.where(real, tokens, const["pad_id"])
    eos = tf.reshape(state["eos"][:, :k], [-1])
    return {
        "token_ids": tokens[:, : tf.reduce_max(num_tokens)],
        "num_tokens": num_tokens,
        "stop_reason": tf.where(eos, loop.STOP_EOS, loop.STOP_LENGTH),
        "score": tf.reshape(tf.where(ok, state["score"][:, :k], 0.0), [-1]),
        "prompt_index": tf.repeat(tf.range(tf.shape(ok)[0]), k),
    }


def generate(
    forward,
    to_logits,
    cache,
    prompt_ids,
    prompt_mask,
    settings,
    num_beams,
    length_penalty,
    early_stopping,
    num_return_sequences,
    layout: str | None = None,
):
    """Beam search for `B` prompts; returns the best beams of each.

    Args:
        forward, to_logits: as for `loop.prefill`.
        cache: the empty cache for `B` rows (repeated to the beams here).
        prompt_ids, prompt_mask: `[B, P]`, left-padded.
        settings: `loop.prefill`'s settings (`max_new_tokens`, `eos_id`,
            `pad_id`, ...); sampling settings are not read.
        num_beams: int32 scalar `>= 1`.
        length_penalty: float32 `[B]`.
        early_stopping: bool `[B]`.
        num_return_sequences: int32 scalar in `[1, num_beams]`.
        layout: the loop's `tflm.layers.matvec.decode_layout` backend
            (`"xla"` or `"graph"`), or `None` for the stored layouts.

    Returns:
        Dict of `[B * num_return_sequences]` rows, best first per prompt:
        `token_ids` `[R, M]`, `num_tokens`, `stop_reason` (index into
        `loop.STOP_REASONS`), `score` float32, `prompt_index`.
    """
    state, pre = _start(
        forward, to_logits, cache, prompt_ids, prompt_mask, settings, num_beams
    )
    const = {
        "num_beams": num_beams,
        "eos_id": pre["settings"]["eos_id"],
        "pad_id": pre["settings"]["pad_id"],
        "limit": pre["limit"],
        "prompt_length": pre["prompt_length"],
        "length_penalty": tf.cast(length_penalty, tf.float32),
        "early_stopping": tf.cast(early_stopping, tf.bool),
    }

    def cond(state):
        return (state["step"] < pre["steps"]) & ~tf.reduce_all(state["done"])

    def body(state):
        new = _step(forward, to_logits, const, state)
        tf.nest.map_structure(lambda n, o: n.set_shape(o.shape), new, state)
        return (new,)

    mode = matvec.decode_layout(layout) if layout else contextlib.nullcontext()
    with mode, graph.reads_hoisted():  # weights read once, before the loop
        (state,) = tf.while_loop(cond, body, (state,))
    return _outputs(state, const, num_return_sequences)

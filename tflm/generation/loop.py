"""The decode loop: the only generation algorithm in tflm.

Prefill the (left-padded) prompts in one forward pass that fills a
preallocated KV cache, then a `tf.while_loop` of single-token steps. It is
plain TensorFlow (no XLA-only ops, no Python per token), so the same code
runs in `CausalLM.generate`, under `jit_compile=True`, and inside an
exported SavedModel under TF Serving.

The loop imports no model: it takes two callables,

    forward(token_ids, cache, cache_index, padding_mask, position_ids)
        -> (hidden [B, T, D], cache)
    to_logits(hidden [B, D]) -> float32 logits [B, V]

and `cache`, a list of tensors `(2, B, K, S, H)` that `forward` updates.
The decoding strategy (`samplers.Sampling` by default) chooses each token
from the logits and keeps its own state. An optional `text_stop(tokens,
num_tokens) -> bool [B]` ends a row on text (stop strings; it needs the
plain graph, for it detokenizes). `generate` runs everything in one call;
`prefill`, `decode` and `finish` split it so that a caller can stream
tokens a few steps at a time.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from tflm import graph
from tflm.generation import samplers
from tflm.layers import kv_cache
from tflm.layers import matvec

# Why each row stopped (the exported signature maps these to strings).
STOP_LENGTH, STOP_EOS, STOP_TOKEN, STOP_STRING = 0, 1, 2, 3
STOP_REASONS = ("length", "eos", "stop_token", "stop_string")


def _stopped_by(token, eos_id, stop_ids):
    """int32 `[B]`: `STOP_EOS`, `STOP_TOKEN` or 0 (keep going)."""
    is_eos = tf.equal(token, eos_id)
    if stop_ids.shape.rank == 1:  # shared by every row
        stop_ids = stop_ids[None, :]
    is_stop = tf.reduce_any(tf.equal(token[:, None], stop_ids), axis=1)
    return tf.where(is_eos, STOP_EOS, tf.where(is_stop, STOP_TOKEN, 0))


def prefill(
    forward,
    to_logits,
    cache,
    prompt_ids,
    prompt_mask,
    settings,
    strategy=None,
):
    """Runs the prompts once and returns the loop state.

    Args:
        forward, to_logits: see the module docstring.
        cache: the empty cache, `S` slots long; `S - P` bounds new tokens.
        prompt_ids: int32 `[B, P]`, left-padded, `P >= 1`.
        prompt_mask: int32 or bool `[B, P]`, true on real tokens.
        settings: dict of per-row `[B]` tensors `max_new_tokens` (int32),
            `temperature` (float32, 0 = greedy), `top_k` (int32, 0 = off),
            `top_p` (float32, 1 = off), `seed` (int32); plus `eos_id` (int32
            scalar, -1 for none), `stop_ids` (int32 `[N]` or per row
            `[B, N]`, -1 pads) and `pad_id` (int32 scalar, written after a
            row stopped); and what the strategy reads (for `Sampling`:
            `min_new_tokens`, `repetition_penalty`, `no_repeat_ngram_size`,
            each optional).
        strategy: the decoding strategy; `samplers.Sampling()` if `None`.

    Returns:
        The state dict that `decode` advances and `finish` reads.
    """
    prompt_mask = tf.cast(prompt_mask, tf.int32)
    batch, prompt_len = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    cache_len = tf.shape(cache[0])[3]
    # Unwritten slots lie in the future of every query, so the causal mask
    # hides them: the key mask only needs to hide the prompts' left padding.
    slot_mask = tf.concat(
        [prompt_mask, tf.ones([batch, cache_len - prompt_len], tf.int32)], 1
    )
    positions = tf.maximum(tf.cumsum(prompt_mask, axis=1) - 1, 0)
    hidden, cache = forward(prompt_ids, cache, 0, slot_mask, positions)
    max_new = tf.maximum(tf.cast(settings["max_new_tokens"], tf.int32), 0)
    steps = tf.maximum(
        tf.minimum(tf.reduce_max(max_new), cache_len - prompt_len), 0
    )
    limit = tf.minimum(max_new, steps)
    pad_id = tf.cast(settings["pad_id"], tf.int32)
    logits = to_logits(hidden[:, -1])
    strategy = strategy or samplers.Sampling()
    own = strategy.init(prompt_ids, prompt_mask, settings, tf.shape(logits)[-1])
    return {
        "step": tf.constant(0),
        "logits": logits,
        "strategy": own,
        "cache": cache,
        "done": limit <= 0,
        "num_tokens": tf.zeros([batch], tf.int32),
        "stop_reason": tf.fill([batch], STOP_LENGTH),
        "tokens": tf.fill([batch, cache_len - prompt_len], pad_id),
        # Constant through the loop:
        "slot_mask": slot_mask,
        "next_position": tf.reduce_sum(prompt_mask, axis=1),
        "prompt_length": prompt_len,
        "limit": limit,
        "steps": steps,
        "settings": {**settings, "pad_id": pad_id},
    }


def _step(forward, to_logits, strategy, text_stop, state):
    s = state["settings"]
    i, done = state["step"], state["done"]
    token = strategy.next_token(state["logits"], state)
    stop = _stopped_by(token, s["eos_id"], s["stop_ids"])
    emit = tf.logical_and(tf.logical_not(done), tf.equal(stop, 0))
    batch = tf.shape(token)[0]
    tokens = tf.tensor_scatter_nd_update(
        state["tokens"],
        tf.stack([tf.range(batch), tf.fill([batch], i)], axis=1),
        tf.where(emit, token, s["pad_id"]),
    )
    num_tokens = state["num_tokens"] + tf.cast(emit, tf.int32)
    if text_stop is not None:
        on_text = emit & text_stop(tokens, num_tokens)
        stop = tf.where(on_text, STOP_STRING, stop)
    hidden, cache = forward(
        token[:, None],
        state["cache"],
        state["prompt_length"] + i,
        state["slot_mask"],
        (state["next_position"] + i)[:, None],
    )
    return {
        **state,
        "step": i + 1,
        "logits": to_logits(hidden[:, 0]),
        "strategy": strategy.update(state["strategy"], token),
        "cache": cache,
        "done": done | (stop > 0) | (num_tokens >= state["limit"]),
        "num_tokens": num_tokens,
        "stop_reason": tf.where(done, state["stop_reason"], stop),
        "tokens": tokens,
    }


def decode(
    forward,
    to_logits,
    state,
    max_steps=None,
    strategy=None,
    text_stop=None,
    in_place: bool = False,
    layout: str | None = None,
):
    """Advances `state` until every row stopped, or by `max_steps` steps.

    `strategy` must be the one `prefill` got (`None` for the default).
    `in_place=True` (the plain graph only: XLA has no kernel for it) copies
    the cache once and then writes each step's keys and values into that
    copy in place, instead of a scatter that copies the whole cache at
    every step (`tflm.layers.kv_cache`). Weights are read once, before the
    loop (`tflm.graph.reads_hoisted`). `layout` is the loop's
    `tflm.layers.matvec.decode_layout` backend (`"xla"` or `"graph"`), or
    `None` for the stored layouts.
    """
    strategy = strategy or samplers.Sampling()
    end = state["steps"]
    if max_steps is not None:
        end = tf.minimum(end, state["step"] + max_steps)

    def cond(state):
        return tf.logical_and(
            state["step"] < end, tf.logical_not(tf.reduce_all(state["done"]))
        )

    def body(state):
        new = _step(forward, to_logits, strategy, text_stop, state)
        # Shapes the step lost (a stop check's text ops) are the same.
        tf.nest.map_structure(lambda n, o: n.set_shape(o.shape), new, state)
        return (new,)

    mode = contextlib.nullcontext()
    if in_place:
        state = {**state, "cache": kv_cache.owned_copy(state["cache"])}
        mode = kv_cache.writes_in_place()
    shapes = (
        matvec.decode_layout(layout) if layout else contextlib.nullcontext()
    )
    with mode, shapes, graph.reads_hoisted():
        (state,) = tf.while_loop(cond, body, (state,))
    return state


def finished(state):
    """Scalar bool: every row has stopped."""
    return tf.logical_or(
        tf.reduce_all(state["done"]), state["step"] >= state["steps"]
    )


def finish(state, trim: bool = True):
    """The outputs: `token_ids` int32 `[B, M]` (padded), `num_tokens` int32
    `[B]`, `stop_reason` int32 `[B]` (index into `STOP_REASONS`). A stop
    token is not part of the output; the token that completed a stop string
    is.

    With `trim=False`, `M` is the static `S - P` (what XLA needs); else the
    longest row's length.
    """
    num_tokens = state["num_tokens"]
    tokens = state["tokens"]
    if trim:
        tokens = tokens[:, : tf.reduce_max(num_tokens)]
    return {
        "token_ids": tokens,
        "num_tokens": num_tokens,
        "stop_reason": state["stop_reason"],
    }


def generate(
    forward,
    to_logits,
    cache,
    prompt_ids,
    prompt_mask,
    settings,
    strategy=None,
    text_stop=None,
    trim: bool = True,
    in_place: bool = False,
):
    """Prefill, decode to the end, and return `finish`'s outputs
    (`in_place`: see `decode`)."""
    strategy = strategy or samplers.Sampling()
    state = prefill(
        forward, to_logits, cache, prompt_ids, prompt_mask, settings, strategy
    )
    state = decode(
        forward, to_logits, state, None, strategy, text_stop, in_place
    )
    return finish(state, trim)

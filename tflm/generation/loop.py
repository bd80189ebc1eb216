"""The sampling decode loop, and the types both decode loops share.

Prefill the (left-padded) prompts in one forward pass that fills a
preallocated KV cache, then a `tf.while_loop` of single-token steps. It is
plain TensorFlow (no XLA-only ops, no Python per token), so the same code
runs in `CausalLM.generate`, under `jit_compile=True`, and inside an
exported SavedModel under TF Serving.

The loop imports no model: it takes a `Decoding` (what
`CausalLM.decoding(layout)` builds from a decode plan: the cached forward
pass, the head, the cache factory). Beam search (`tflm.generation.beam`)
is a second loop over the same `Decoding`, `LoopSettings`, `prefill` and
`LoopOutput`: its state is a table of hypotheses per prompt and its cache
is reordered at every step, which a sampling step must not pay for.
An optional `text_stop(tokens, num_tokens) -> bool [B]` ends a row on text
(stop strings; it detokenizes, so it needs the plain graph). `generate`
runs everything in one call; `prefill`, `decode` and `finish` split it so
that a caller can stream tokens a few steps at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from tflm.generation import processors
from tflm.generation import samplers
from tflm.generation import spec

# Why each row stopped (the exported signatures map these to strings).
STOP_LENGTH, STOP_EOS, STOP_TOKEN, STOP_STRING = 0, 1, 2, 3
STOP_REASONS = ("length", "eos", "stop_token", "stop_string")


class Decoding(NamedTuple):
    """What a decode loop calls (`CausalLM.decoding` builds it in a trace).

    Fields:
        forward: `(token_ids [B, T], cache, cache_index, padding_mask
            [B, S], position_ids [B, T]) -> (hidden [B, T, D], cache)`;
            writes the cache by scatter (prefill, beam steps).
        step: the same, for a loop body whose cache `own` copied (it may
            write in place).
        to_logits: hidden `[B, D]` -> float32 logits `[B, V]`.
        init_cache: `(batch, length) -> cache`, a list of zero tensors
            `(2, B, K, S, H)`.
        own: `cache -> cache` that `step` may write into.
    """

    forward: Callable
    step: Callable
    to_logits: Callable
    init_cache: Callable
    own: Callable


class LoopSettings(NamedTuple):
    """The loop's per-row settings, `[B]` each unless said.

    Fields:
        max_new_tokens: int32, the new tokens a row may make.
        temperature: float32, 0 is greedy.
        top_k: int32, 0 is off.
        top_p: float32, 1 is off.
        seed: int32.
        min_new_tokens: int32; end and stop ids are banned before it.
        repetition_penalty: float32, 1 is off.
        no_repeat_ngram_size: int32, 0 is off.
        eos_ids: int32 `[E]`, the ids that end a reply (none: `[]`).
        stop_ids: int32 `[B, N]`, -1 pads.
        pad_id: int32 scalar, written after a row stopped.
    """

    max_new_tokens: tf.Tensor
    temperature: tf.Tensor
    top_k: tf.Tensor
    top_p: tf.Tensor
    seed: tf.Tensor
    min_new_tokens: tf.Tensor
    repetition_penalty: tf.Tensor
    no_repeat_ngram_size: tf.Tensor
    eos_ids: tf.Tensor
    stop_ids: tf.Tensor
    pad_id: tf.Tensor

    @classmethod
    def make(
        cls, max_new_tokens, *, eos_ids=(), pad_id=0, stop_ids=None, **rows
    ):
        """Settings for `[B]` rows: the processors off and greedy, except
        where `rows` (per-row values by field name) says otherwise.

        Example:
        >>> s = LoopSettings.make([4, 2], temperature=[0.0, 0.7])
        >>> s.top_p.numpy().tolist(), s.stop_ids.shape.as_list()
        ([1.0, 1.0], [2, 0])
        """
        new = tf.cast(max_new_tokens, tf.int32)
        batch = tf.shape(new)[0]
        unknown = set(rows) - set(PER_ROW)
        if unknown:
            raise TypeError(f"Unknown loop settings: {sorted(unknown)}.")
        # The request's defaults (`tflm.generation.spec`).
        values = spec.fill_defaults(rows, batch)
        values = {name: values[name] for name in PER_ROW}
        if stop_ids is None:
            stop_ids = tf.fill([batch, 0], -1)
        stop_ids = tf.cast(stop_ids, tf.int32)
        if stop_ids.shape.rank == 1:  # shared by every row
            stop_ids = tf.tile(stop_ids[None], [batch, 1])
        return cls(
            max_new_tokens=new,
            eos_ids=tf.reshape(tf.constant(eos_ids, tf.int32), [-1]),
            stop_ids=stop_ids,
            pad_id=tf.constant(pad_id, tf.int32),
            **values,
        )


# The fields that a request's settings give row by row, as they are.
PER_ROW = tuple(
    f
    for f in LoopSettings._fields
    if f in spec.BY_NAME and f != "max_new_tokens"
)


class Constants(NamedTuple):
    """What the loop reads but never changes.

    Fields:
        settings: `LoopSettings` of the `B` rows.
        prompt_ids, prompt_mask: int32 `[B, P]`, the left-padded prompts.
        slot_mask: int32 `[B, S]`, true on the cache slots a key may be
            read from (all but the prompts' left padding).
        next_position: int32 `[B]`, each row's first new position.
        prompt_length: int32 scalar, `P`.
        limit: int32 `[B]`, the new tokens each row may make.
        steps: int32 scalar, the most steps the loop runs.
    """

    settings: LoopSettings
    prompt_ids: tf.Tensor
    prompt_mask: tf.Tensor
    slot_mask: tf.Tensor
    next_position: tf.Tensor
    prompt_length: tf.Tensor
    limit: tf.Tensor
    steps: tf.Tensor


class LoopState(NamedTuple):
    """What a sampling step advances.

    Fields:
        step: int32 scalar, steps taken.
        logits: float32 `[B, V]`, for the next token.
        cache: the KV cache, a list of `(2, B, K, S, H)`.
        seen: bool `[B, V]`, ids each row has seen (repetition penalty).
        done: bool `[B]`.
        num_tokens: int32 `[B]`, tokens emitted.
        stop_reason: int32 `[B]`, an index into `STOP_REASONS`.
        tokens: int32 `[B, S - P]`, the emitted ids, `pad_id` after.
    """

    step: tf.Tensor
    logits: tf.Tensor
    cache: list
    seen: tf.Tensor
    done: tf.Tensor
    num_tokens: tf.Tensor
    stop_reason: tf.Tensor
    tokens: tf.Tensor


class LoopOutput(NamedTuple):
    """A loop's result.

    Fields:
        token_ids: int32 `[B, M]`, padded with `pad_id`.
        num_tokens: int32 `[B]`, how many are real.
        stop_reason: int32 `[B]`, an index into `STOP_REASONS`.
    """

    token_ids: tf.Tensor
    num_tokens: tf.Tensor
    stop_reason: tf.Tensor


def _stopped_by(token, eos_ids, stop_ids):
    """int32 `[B]`: `STOP_EOS`, `STOP_TOKEN` or 0 (keep going)."""
    is_eos = tf.reduce_any(tf.equal(token[:, None], eos_ids[None, :]), 1)
    is_stop = tf.reduce_any(tf.equal(token[:, None], stop_ids), axis=1)
    return tf.where(is_eos, STOP_EOS, tf.where(is_stop, STOP_TOKEN, 0))


def positions(mask):
    """int32 positions counting only real tokens (`mask` int32 `[B, T]`):
    each left-padded row gets the positions it would have alone."""
    return tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)


def prefill(decoding: Decoding, cache, prompt_ids, prompt_mask, settings):
    """Runs the prompts once; returns `(LoopState, Constants)`.

    Args:
        decoding: a `Decoding`.
        cache: the empty cache, `S` slots long; `S - P` bounds new tokens.
        prompt_ids: int32 `[B, P]`, left-padded, `P >= 1`.
        prompt_mask: int32 or bool `[B, P]`, true on real tokens.
        settings: `LoopSettings`.
    """
    prompt_mask = tf.cast(prompt_mask, tf.int32)
    batch, prompt_len = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    cache_len = tf.shape(cache[0])[3]
    # Unwritten slots lie in the future of every query, so the causal mask
    # hides them: the key mask only needs to hide the prompts' left padding.
    slot_mask = tf.concat(
        [prompt_mask, tf.ones([batch, cache_len - prompt_len], tf.int32)], 1
    )
    hidden, cache = decoding.forward(
        prompt_ids, cache, 0, slot_mask, positions(prompt_mask)
    )
    max_new = tf.maximum(settings.max_new_tokens, 0)
    steps = tf.maximum(
        tf.minimum(tf.reduce_max(max_new), cache_len - prompt_len), 0
    )
    limit = tf.minimum(max_new, steps)
    logits = decoding.to_logits(hidden[:, -1])
    const = Constants(
        settings=settings,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        slot_mask=slot_mask,
        next_position=tf.reduce_sum(prompt_mask, axis=1),
        prompt_length=prompt_len,
        limit=limit,
        steps=steps,
    )
    state = LoopState(
        step=tf.constant(0),
        logits=logits,
        cache=cache,
        seen=processors.seen_tokens(
            prompt_ids, prompt_mask, tf.shape(logits)[-1]
        ),
        done=limit <= 0,
        num_tokens=tf.zeros([batch], tf.int32),
        stop_reason=tf.fill([batch], STOP_LENGTH),
        tokens=tf.fill([batch, cache_len - prompt_len], settings.pad_id),
    )
    return state, const


def _step(decoding, const, text_stop, state):
    s, i, done = const.settings, state.step, state.done
    token = samplers.next_token(
        state.logits, state.seen, const, state.tokens, i
    )
    stop = _stopped_by(token, s.eos_ids, s.stop_ids)
    emit = tf.logical_and(tf.logical_not(done), tf.equal(stop, 0))
    batch = tf.shape(token)[0]
    tokens = tf.tensor_scatter_nd_update(
        state.tokens,
        tf.stack([tf.range(batch), tf.fill([batch], i)], axis=1),
        tf.where(emit, token, s.pad_id),
    )
    num_tokens = state.num_tokens + tf.cast(emit, tf.int32)
    if text_stop is not None:
        on_text = emit & text_stop(tokens, num_tokens)
        stop = tf.where(on_text, STOP_STRING, stop)
    hidden, cache = decoding.step(
        token[:, None],
        state.cache,
        const.prompt_length + i,
        const.slot_mask,
        (const.next_position + i)[:, None],
    )
    return LoopState(
        step=i + 1,
        logits=decoding.to_logits(hidden[:, 0]),
        cache=cache,
        seen=processors.mark_seen(state.seen, token),
        done=done | (stop > 0) | (num_tokens >= const.limit),
        num_tokens=num_tokens,
        stop_reason=tf.where(done, state.stop_reason, stop),
        tokens=tokens,
    )


def decode(
    decoding: Decoding,
    state: LoopState,
    const: Constants,
    max_steps=None,
    text_stop=None,
) -> LoopState:
    """Advances `state` until every row stopped, or by `max_steps` steps.

    The loop owns a copy of the cache (`decoding.own`), which its steps may
    write in place.
    """
    end = const.steps
    if max_steps is not None:
        end = tf.minimum(end, state.step + max_steps)

    def cond(state):
        return tf.logical_and(
            state.step < end, tf.logical_not(tf.reduce_all(state.done))
        )

    def body(state):
        return (_step(decoding, const, text_stop, state),)

    state = state._replace(cache=decoding.own(state.cache))
    (state,) = tf.while_loop(cond, body, (state,))
    return state


def finished(state: LoopState, const: Constants):
    """Scalar bool: every row has stopped."""
    return tf.logical_or(tf.reduce_all(state.done), state.step >= const.steps)


def finish(state: LoopState, trim: bool = True) -> LoopOutput:
    """The outputs. A stop token is not part of them; the token that
    completed a stop string is.

    With `trim=False`, `M` is the static `S - P` (what XLA needs); else the
    longest row's length.
    """
    tokens = state.tokens
    if trim:
        tokens = tokens[:, : tf.reduce_max(state.num_tokens)]
    return LoopOutput(tokens, state.num_tokens, state.stop_reason)


def generate(
    decoding: Decoding,
    cache,
    prompt_ids,
    prompt_mask,
    settings: LoopSettings,
    text_stop=None,
    trim: bool = True,
) -> LoopOutput:
    """Prefill, decode to the end, and return `finish`'s outputs."""
    state, const = prefill(decoding, cache, prompt_ids, prompt_mask, settings)
    state = decode(decoding, state, const, None, text_stop)
    return finish(state, trim)

"""`CausalLM.generate` and `CausalLM.stream`: Python glue around the loop.

Prompts are tokenized, left-padded to a length bucket (powers of two) and
run through `tflm.generation.loop` inside one `tf.function` per
`(batch, prompt bucket, cache length)`, so calls with similar prompts reuse
one trace. A prompt that does not fit the context beside `max_new_tokens` is
truncated from the left, with a warning.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.generation import loop

logger = logging.getLogger("tflm")

MIN_BUCKET = 8
MAX_STOP_IDS = 16


def bucket(length: int, cap: int) -> int:
    """The smallest power of two `>= length` (at least `MIN_BUCKET`), capped."""
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return min(size, cap)


def _per_row(value, batch, name, dtype):
    array = np.asarray(value)
    if dtype == np.int32 and np.issubdtype(array.dtype, np.integer):
        if (array < -(2**31)).any() or (array >= 2**31).any():
            raise errors.InputError(
                f"{name} must fit in 32 bits. Received: {name}={value}."
            )
    array = array.astype(dtype)
    if array.ndim == 0:
        array = np.full([batch], array, dtype=dtype)
    if array.shape != (batch,):
        raise errors.InputError(
            f"{name} must be a scalar or one value per prompt. Received: "
            f"{name} of shape {array.shape} for {batch} prompts."
        )
    return array


def check_settings(max_new_tokens, temperature, top_k, top_p, context):
    """Validates per-row sampler settings (numpy arrays); raises ValueError."""
    if (max_new_tokens < 0).any() or (max_new_tokens >= context).any():
        raise errors.InputError(
            f"max_new_tokens must be in [0, {context - 1}] (the context is "
            f"{context} tokens and a prompt needs at least one). Received: "
            f"max_new_tokens={max_new_tokens.tolist()}."
        )
    if (temperature < 0).any() or not np.isfinite(temperature).all():
        raise errors.InputError(
            "temperature must be >= 0 (0 means greedy). Received: "
            f"temperature={temperature.tolist()}."
        )
    if (top_k < 0).any():
        raise errors.InputError(
            "top_k must be >= 0 (0 means off). Received: "
            f"top_k={top_k.tolist()}."
        )
    if ((top_p <= 0) | (top_p > 1) | ~np.isfinite(top_p)).any():
        raise errors.InputError(
            "top_p must be in (0, 1] (1 means off). Received: "
            f"top_p={top_p.tolist()}."
        )


class Generator:
    """Compiled generation for one `CausalLM` (and optional tokenizer).

    Args:
        model: a `tflm.models.CausalLM`.
        jit_compile: compile the whole loop with XLA (faster on CPU and GPU;
            exports never use this path).
    """

    def __init__(self, model, jit_compile: bool = True):
        self.model = model
        self.jit_compile = jit_compile
        self.trace_count = 0
        self._generate_fn = tf.function(
            self._generate_graph, jit_compile=jit_compile
        )
        self._prefill_fn = tf.function(self._prefill_graph)
        self._decode_fn = tf.function(self._decode_graph)

    # Graph functions -----------------------------------------------------
    def _forward(self, token_ids, cache, cache_index, padding_mask, positions):
        return self.model.backbone.call_with_cache(
            token_ids, cache, cache_index, padding_mask, positions
        )

    def _to_logits(self, hidden):
        return self.model.logits_from_hidden(hidden)

    def _prefill_graph(self, ids, mask, settings, cache_length):
        self.trace_count += 1
        cache = self.model.backbone.init_cache(tf.shape(ids)[0], cache_length)
        return loop.prefill(
            self._forward, self._to_logits, cache, ids, mask, settings
        )

    def _generate_graph(self, ids, mask, settings, cache_length):
        state = self._prefill_graph(ids, mask, settings, cache_length)
        state = loop.decode(self._forward, self._to_logits, state)
        return loop.finish(state, trim=False)

    def _decode_graph(self, state, max_steps):
        state = loop.decode(self._forward, self._to_logits, state, max_steps)
        return state, loop.finish(state, trim=False)

    # Python side ----------------------------------------------------------
    def prepare(
        self,
        rows,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        stop_ids,
        eos_id,
        pad_id,
    ):
        """Left-pads id lists and builds the tensors the graph takes."""
        batch = len(rows)
        context = self.model.backbone.max_sequence_length
        settings = {
            "max_new_tokens": _per_row(
                max_new_tokens, batch, "max_new_tokens", np.int32
            ),
            "temperature": _per_row(
                temperature, batch, "temperature", np.float32
            ),
            "top_k": _per_row(top_k, batch, "top_k", np.int32),
            "top_p": _per_row(top_p, batch, "top_p", np.float32),
            "seed": _per_row(seed, batch, "seed", np.int32),
        }
        check_settings(
            settings["max_new_tokens"],
            settings["temperature"],
            settings["top_k"],
            settings["top_p"],
            context,
        )
        # Each row keeps what fits beside its own max_new_tokens; positions
        # are per row, so the shared cache may hold more than one context.
        rows = [
            self._fit(row, context - int(new))
            for row, new in zip(rows, settings["max_new_tokens"], strict=True)
        ]
        longest_new = int(settings["max_new_tokens"].max())
        prompt_len = bucket(max(len(r) for r in rows), context)
        ids = np.full([batch, prompt_len], pad_id, np.int32)
        mask = np.zeros([batch, prompt_len], np.int32)
        for i, row in enumerate(rows):
            if row:
                ids[i, -len(row) :] = row
                mask[i, -len(row) :] = 1
        cache_length = bucket(prompt_len + max(longest_new, 1), 2 * context)
        settings = {k: tf.constant(v) for k, v in settings.items()}
        settings["eos_id"] = tf.constant(eos_id, tf.int32)
        if len(stop_ids) > MAX_STOP_IDS:
            raise errors.InputError(
                f"At most {MAX_STOP_IDS} stop ids are supported. Received: "
                f"{len(stop_ids)}."
            )
        # Padded with -1 (never a token) so that the trace does not depend
        # on how many stop ids a call gives.
        padded = list(stop_ids) + [-1] * (MAX_STOP_IDS - len(stop_ids))
        settings["stop_ids"] = tf.constant(padded, tf.int32)
        settings["pad_id"] = tf.constant(pad_id, tf.int32)
        return tf.constant(ids), tf.constant(mask), settings, cache_length

    @staticmethod
    def _fit(row, room):
        if len(row) > room:
            logger.warning(
                "Prompt of %d tokens truncated from the left to %d so that "
                "it fits the context beside max_new_tokens.",
                len(row),
                room,
            )
            return list(row[len(row) - room :])
        return list(row)

    def run(self, ids, mask, settings, cache_length):
        """Whole generation: numpy `token_ids`, `num_tokens`, `stop_reason`."""
        out = self._generate_fn(ids, mask, settings, cache_length)
        out = {k: v.numpy() for k, v in out.items()}
        out["token_ids"] = out["token_ids"][
            :, : max(out["num_tokens"].max(), 0)
        ]
        return out

    def stream(self, ids, mask, settings, cache_length, chunk: int = 1):
        """Yields numpy `(token_ids, num_tokens)` after every `chunk` steps."""
        state = self._prefill_fn(ids, mask, settings, cache_length)
        chunk = tf.constant(chunk)
        while True:
            state, out = self._decode_fn(state, chunk)
            yield out["token_ids"].numpy(), out["num_tokens"].numpy()
            if bool(loop.finished(state)):
                return

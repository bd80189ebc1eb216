"""Python arguments of `generate` and `stream`, checked and turned into
the pipeline's inputs.

Prompts are strings, token ids, or conversations (`{"role", "content"}`
turns, for a model with a template); settings are checked against
`tflm.generation.spec` (the rules the exported signatures check in their
graph), and bad ones raise `InputError`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.generation import spec
from tflm.generation import templating

logger = logging.getLogger("tflm")


def need_tokenizer(generator):
    if generator.pipeline.tokenizer is None:
        raise errors.InputError(
            "Text prompts and stop strings need a tokenizer: load the model "
            "with `CausalLM.from_preset(model_dir)`, set `model.tokenizer`, "
            "pass `tokenizer=`, or give token ids instead of strings."
        )


def _prompts(prompts, generator):
    """`(strings [B], ragged ids or (role, content), single, is_text)`."""
    if isinstance(prompts, Sequence) and not isinstance(prompts, str):
        first = prompts[0] if prompts else None
        if templating.is_turn(first) or (
            isinstance(first, Sequence)
            and not isinstance(first, str)
            and first
            and templating.is_turn(first[0])
        ):
            need_tokenizer(generator)
            turns, single = templating.batch(
                prompts, generator.pipeline.template
            )
            return turns, single, True
    if isinstance(prompts, tf.Tensor):
        prompts = prompts.numpy()
        if prompts.dtype == object:
            prompts = [p.decode("utf-8") for p in prompts.reshape(-1)]
    if isinstance(prompts, str):
        prompts, single = [prompts], True
    elif isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        prompts, single = [prompts.tolist()], True
    elif (
        isinstance(prompts, Sequence)
        and prompts
        and all(isinstance(p, (int, np.integer)) for p in prompts)
    ):
        prompts, single = [list(prompts)], True
    else:
        prompts, single = list(prompts), False
    if prompts and all(isinstance(p, str) for p in prompts):
        need_tokenizer(generator)
        return tf.constant(prompts, tf.string), single, True
    rows = [np.asarray(p, np.int64).reshape(-1).tolist() for p in prompts]
    if any(not r for r in rows):
        raise errors.InputError(
            "A prompt of token ids is empty. Give at least one id (e.g. the "
            "end-of-text id to start a new document)."
        )
    vocab = generator.pipeline.vocabulary_size
    if any(not 0 <= i < vocab for r in rows for i in r):
        raise errors.InputError(f"Token ids must be in [0, {vocab}).")
    ragged = tf.ragged.constant(rows, tf.int32, ragged_rank=1)
    if not rows:
        ragged = tf.RaggedTensor.from_row_lengths(
            tf.zeros([0], tf.int32), tf.zeros([0], tf.int64)
        )
    return ragged, single, False


def _per_row(value, batch, name, dtype):
    array = np.asarray(value)
    if dtype == tf.int32:
        if not np.issubdtype(array.dtype, np.integer):
            raise errors.InputError(
                f"{name} must be an int. Received: {name}={value!r}."
            )
        if (array < -(2**31)).any() or (array >= 2**31).any():
            raise errors.InputError(
                f"{name} must fit in 32 bits. Received: {name}={value}."
            )
    array = array.astype(dtype.as_numpy_dtype)
    if array.ndim == 0:
        array = np.full([batch], array)
    if array.shape != (batch,):
        raise errors.InputError(
            f"{name} must be a scalar or one value per prompt. Received: "
            f"{name} of shape {array.shape} for {batch} prompts."
        )
    return tf.constant(array, dtype)


def _values(given: dict, batch: int, context: int, num_beams: int) -> dict:
    unknown = sorted(set(given) - set(spec.BY_NAME))
    if unknown:
        raise TypeError(
            f"generate got unexpected keyword arguments {unknown}; the "
            f"settings are {sorted(spec.BY_NAME)}, the beam settings "
            f"{sorted(spec.BEAM_BY_NAME)} and stop."
        )
    values = {}
    for s in spec.SPEC:
        value = given.get(s.name)
        if value is None:
            value = s.default
        values[s.name] = _per_row(value, batch, s.name, s.dtype)
    spec.check(values, context, num_beams)
    return values


def _stops(stop, batch, generator):
    """`(strings [B, MAX_STOP_STRINGS], ids [B, MAX_STOP_IDS], strings)`."""
    stop = [stop] if isinstance(stop, (str, int)) else list(stop or [])
    strings = [s for s in stop if isinstance(s, str)]
    ids = [int(s) for s in stop if not isinstance(s, str)]
    if strings:
        need_tokenizer(generator)
    limit = spec.MAX_STOP_STRINGS
    if len(strings) > limit:
        raise errors.InputError(
            f"At most {limit} stop strings are supported. Received: "
            f"{len(strings)}."
        )
    for s in strings:
        size = len(s.encode("utf-8"))
        if not 0 < size <= spec.MAX_STOP_BYTES:
            raise errors.InputError(
                "A stop string must be 1 to "
                f"{spec.MAX_STOP_BYTES} bytes of UTF-8. Received: "
                f"{errors.shorten(s)}."
            )
    if len(ids) > spec.MAX_STOP_IDS:
        raise errors.InputError(
            f"At most {spec.MAX_STOP_IDS} stop ids are supported. "
            f"Received: {len(ids)}."
        )
    padded = strings + [""] * (limit - len(strings))
    id_row = ids + [-1] * (spec.MAX_STOP_IDS - len(ids))
    return (
        tf.constant([padded] * batch, tf.string, [batch, limit]),
        tf.constant([id_row] * batch, tf.int32, [batch, len(id_row)]),
        strings,
    )


def pop_beams(kw: dict):
    """The beam settings popped from `kw`, checked; `None` unless
    `num_beams > 1`."""
    given = {k: kw.pop(k) for k in spec.BEAM_BY_NAME if k in kw}
    values = {s.name: s.default for s in spec.BEAM_SPEC}
    values.update({k: v for k, v in given.items() if v is not None})
    if not spec.check_beams(values, kw):
        return None
    nrs = kw.get("num_return_sequences")
    return {**values, "num_return_sequences": 1 if nrs is None else int(nrs)}


def setup(generator, prompts, settings, num_beams: int = 1):
    """`(Prepared, single, is_text, stop strings)` of a call's arguments
    (`num_beams`: beam search's, checked against the size caps too)."""
    stop = settings.pop("stop", None)
    inputs, single, is_text = _prompts(prompts, generator)
    if isinstance(inputs, tuple):
        batch = int(inputs[0].shape[0])
    else:
        batch = int(inputs.shape[0] if is_text else inputs.nrows())
    context = generator.pipeline.context
    values = _values(settings, batch, context, num_beams)
    stop, stop_ids, strings = _stops(stop, batch, generator)
    try:
        prepared = generator.prepare(inputs, values, stop, stop_ids)
    except tf.errors.InvalidArgumentError as e:
        if spec.CELLS_RULE not in e.message:
            raise
        raise errors.InputError(_assertion(e.message)) from None
    if num_beams > 1:  # the rows are repeated into beams after `prepare`
        ok, message = spec.cells_check(
            int(prepared.ids.shape[0]) * num_beams,
            int(prepared.ids.shape[1])
            + int(np.max(prepared.settings.max_new_tokens.numpy(), initial=1)),
            "prompt rows * num_beams",
        )
        if not bool(ok):
            raise errors.InputError(message + ".")
    warn_context(prepared, generator.pipeline.context)
    return prepared, single, is_text, strings


def _assertion(message: str) -> str:
    """The text of an in-graph assert's message (`... [text] ...`)."""
    start = message.find("[") + 1
    return message[start : message.find("]", start)] + "."


def warn_context(prepared, context: int) -> None:
    """A warning where the context changed a request: new tokens capped
    beside a prompt, or a prompt that alone filled the context cut; each
    once per process and context (`tflm generate` calls in batches)."""
    if bool(tf.reduce_any(prepared.truncated)):
        _warn_once(
            f"A prompt fills the model's context ({context} tokens); it was "
            f"cut from the left to its last {context - 1} tokens."
        )
    elif bool(tf.reduce_any(prepared.capped)):
        _warn_once(
            f"Prompt + new tokens exceed the model's context ({context} "
            "tokens): the prompt is kept whole and its new tokens are capped "
            "at the room it leaves."
        )


@functools.lru_cache(maxsize=64)
def _warn_once(message: str) -> None:
    logger.warning(message)

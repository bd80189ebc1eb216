"""The user-facing `generate` and `stream` (what `CausalLM` calls).

Prompts are strings (tokenized in the graph by the generator's tokenizer)
or token ids. An empty string prompt starts from the end-of-text id, which
is what the model saw before every document in training. Output follows
input: strings for strings, lists of ids for ids; a single prompt with one
return sequence gives a single result, else a flat list, prompt by prompt
(`num_return_sequences` items each). A prompt may also be a conversation,
a list of `{"role", "content"}` turns (or a list of them), for a model with
a template; a model with a template renders text prompts into it too, and
the output is the reply only (id prompts are taken as they are). Settings
are checked here against `tflm.generation.settings` (the spec the exported
signatures check in their graph) and bad ones raise `InputError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.generation import beam_settings
from tflm.generation import conversations
from tflm.generation import settings as settings_lib

logger = logging.getLogger("tflm")


def _prompts(prompts, generator):
    """`(strings [B], ragged ids or (role, content), single, is_text)`."""
    if isinstance(prompts, Sequence) and not isinstance(prompts, str):
        first = prompts[0] if prompts else None
        if conversations.is_turn(first) or (
            isinstance(first, Sequence)
            and not isinstance(first, str)
            and first
            and conversations.is_turn(first[0])
        ):
            need_tokenizer(generator)
            turns, single = conversations.batch(prompts, generator)
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
    vocab = generator.vocabulary_size
    if any(not 0 <= i < vocab for r in rows for i in r):
        raise errors.InputError(f"Token ids must be in [0, {vocab}).")
    ragged = tf.ragged.constant(rows, tf.int32, ragged_rank=1)
    if not rows:
        ragged = tf.RaggedTensor.from_row_lengths(
            tf.zeros([0], tf.int32), tf.zeros([0], tf.int64)
        )
    return ragged, single, False


def need_tokenizer(generator):
    if generator.tokenizer is None:
        raise errors.InputError(
            "Text prompts and stop strings need a tokenizer: load the model "
            "with `CausalLM.from_preset(model_dir)`, set `model.tokenizer`, "
            "pass `tokenizer=`, or give token ids instead of strings."
        )


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


def _values(given: dict, batch: int) -> dict:
    unknown = sorted(set(given) - set(settings_lib.BY_NAME))
    if unknown:
        raise TypeError(
            f"generate got unexpected keyword arguments {unknown}; the "
            f"settings are {sorted(settings_lib.BY_NAME)} and stop."
        )
    values = {}
    for spec in settings_lib.SPEC:
        value = given.get(spec.name)
        if value is None:
            value = spec.default
        values[spec.name] = _per_row(value, batch, spec.name, spec.dtype)
    settings_lib.check(values)
    return values


def _stops(stop, batch, generator):
    """`(strings [B, MAX_STOP_STRINGS], ids [B, MAX_STOP_IDS], strings)`."""
    stop = [stop] if isinstance(stop, (str, int)) else list(stop or [])
    strings = [s for s in stop if isinstance(s, str)]
    ids = [int(s) for s in stop if not isinstance(s, str)]
    if strings:
        need_tokenizer(generator)
    limit = settings_lib.MAX_STOP_STRINGS
    if len(strings) > limit:
        raise errors.InputError(
            f"At most {limit} stop strings are supported. Received: "
            f"{len(strings)}."
        )
    for s in strings:
        size = len(s.encode("utf-8"))
        if not 0 < size <= settings_lib.MAX_STOP_BYTES:
            raise errors.InputError(
                "A stop string must be 1 to "
                f"{settings_lib.MAX_STOP_BYTES} bytes. Received: {s!r}."
            )
    if len(ids) > settings_lib.MAX_STOP_IDS:
        raise errors.InputError(
            f"At most {settings_lib.MAX_STOP_IDS} stop ids are supported. "
            f"Received: {len(ids)}."
        )
    padded = strings + [""] * (limit - len(strings))
    id_row = ids + [-1] * (settings_lib.MAX_STOP_IDS - len(ids))
    return (
        tf.constant([padded] * batch, tf.string, [batch, limit]),
        tf.constant([id_row] * batch, tf.int32, [batch, len(id_row)]),
        strings,
    )


def _setup(generator, prompts, settings):
    stop = settings.pop("stop", None)
    inputs, single, is_text = _prompts(prompts, generator)
    if isinstance(inputs, tuple):
        batch = int(inputs[0].shape[0])
    else:
        batch = int(inputs.shape[0] if is_text else inputs.nrows())
    values = _values(settings, batch)
    stop, stop_ids, strings = _stops(stop, batch, generator)
    prepared = generator.prepare(inputs, values, stop, stop_ids)
    if bool(tf.reduce_any(prepared["truncated"])):
        logger.warning(
            "A prompt was truncated from the left so that it fits the "
            "context (%d tokens) beside its new tokens.",
            generator.context,
        )
    return prepared, single, is_text, strings


def generate(
    generator, prompts, max_new_tokens=None, *, return_details=False, **kw
):
    """Continues each prompt; see `CausalLM.generate` for the arguments."""
    beams = beam_settings.pop_beam_settings(kw)
    if beams is not None:
        beam_settings.check_beam_compatible(kw)
        kw["num_return_sequences"] = 1  # beam search returns several
    prepared, single, is_text, strings = _setup(
        generator, prompts, {"max_new_tokens": max_new_tokens, **kw}
    )
    if not single and int(tf.shape(prepared["ids"])[0]) == 0:
        return [] if not return_details else {"outputs": []}
    if beams is None:
        out = generator.run(prepared, bool(strings))
    else:
        batch = int(tf.shape(prepared["ids"])[0])
        out = generator.run_beam(prepared, beam_settings.batched(beams, batch))
        prepared = {**prepared, "prompt_index": out["index"]}
    counts = out["num_tokens"].numpy().tolist()
    ids = [
        row[:n].tolist()
        for row, n in zip(out["token_ids"].numpy(), counts, strict=True)
    ]
    outputs = ids
    if is_text:
        outputs = [t.decode("utf-8", "replace") for t in out["text"].numpy()]
    one = single and len(outputs) == 1
    if not return_details:
        return outputs[0] if one else outputs
    return {
        "outputs": outputs[0] if one else outputs,
        "token_ids": ids,
        "num_tokens": counts,
        "stop_reason": [r.decode() for r in out["stop_reason"].numpy()],
        "prompt_index": prepared["prompt_index"].numpy().tolist(),
        **({} if beams is None else {"score": out["score"].numpy().tolist()}),
    }


def stream(
    generator, prompt, max_new_tokens=None, *, chunk: int = 1, **kw
) -> Iterator[str]:
    """Yields pieces of one prompt's continuation as they are produced.

    Runs the plain graph: joined, the pieces equal `generate` with the same
    settings. Text is detokenized incrementally (each token a bounded number
    of times: linear in the output), pieces end on whole characters, and
    text that may begin a stop string waits until it is known not to.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise errors.InputError(
            f"chunk must be an int >= 1. Received: {chunk!r}."
        )
    one_chat = isinstance(prompt, Sequence) and all(
        map(conversations.is_turn, prompt)
    )
    if (
        not (isinstance(prompt, str) or (one_chat and prompt))
        or generator.tokenizer is None
    ):
        raise errors.InputError(
            "stream takes one text prompt or one conversation and needs a "
            "tokenizer."
        )
    if beam_settings.pop_beam_settings(kw) is not None:
        raise errors.InputError(
            "stream does not support beam search; use generate with "
            "num_beams > 1."
        )
    if kw.get("num_return_sequences", 1) != 1:
        raise errors.InputError(
            "stream makes one sequence. Received: num_return_sequences="
            f"{kw['num_return_sequences']}; use generate for several."
        )
    prepared, _, _, strings = _setup(
        generator, prompt, {"max_new_tokens": max_new_tokens, **kw}
    )
    hold = max((len(s) for s in strings), default=1) - 1
    text = _Incremental(generator.tokenizer)
    sent, out = "", None
    for out, finished in generator.steps(prepared, bool(strings), chunk):
        if finished:
            break  # the rest comes from `finish`, cut at a stop string
        n = int(out["num_tokens"][0])
        ready = text.update(out["token_ids"][0, :n].numpy())
        ready = ready[: len(ready) - hold] if hold else ready
        if len(ready) > len(sent):
            yield ready[len(sent) :]
            sent = ready
    final = generator.finish(out, bool(strings), prepared)["text"][0]
    final = final.numpy().decode("utf-8", "replace")
    if len(final) > len(sent):
        yield final[len(sent) :]


class _Incremental:
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

"""The one front end around the decode loop: `prepare` and `finish`.

`CausalLM.generate`/`stream` and every exported signature run `prepare ->
loop -> finish` over these functions, in the graph, so in-process and served
generation cannot drift. `prepare` tokenizes (cutting rows to the context
before anything is dense: no tensor is larger than `[B, context]`), resolves
the length settings (see `tflm.generation.settings`), repeats each prompt
`num_return_sequences` times (copy `j` samples with `seed + j`), cuts each
prompt from the left to fit beside its new tokens, and left-pads; with
`bucket=True` (in-process) the prompt width and cache length are rounded up
to powers of two so that similar calls reuse one trace. `finish`
detokenizes, cuts text at stop strings and names the stop reasons. A model
with a template (`tflm.generation.templating`) has its text prompts and
conversations rendered into it first, so the output is the reply only.
"""

from __future__ import annotations

import tensorflow as tf

from tflm.generation import clipping
from tflm.generation import loop
from tflm.generation import settings as settings_lib
from tflm.generation import stops
from tflm.generation import templating

MIN_BUCKET = 8
STOP_REASONS = tf.constant(loop.STOP_REASONS)
# The loop's per-row settings, besides the length.
LOOP_SETTINGS = (
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "min_new_tokens",
    "repetition_penalty",
    "no_repeat_ngram_size",
)


def bucket(length, cap):
    """The smallest power of two `>= length` (at least `MIN_BUCKET`), capped.

    Works on ints and on int32 scalar tensors alike.
    """
    if isinstance(length, int):
        size = MIN_BUCKET
        while size < length:
            size *= 2
        return min(size, cap)
    size = tf.while_loop(
        lambda s: s < length, lambda s: s * 2, [tf.constant(MIN_BUCKET)]
    )[0]
    return tf.minimum(size, cap)


def tokenize(tokenizer, text, context: int):
    """Each text's last `context` ids and its full length in ids.

    The byte tokenizer makes one id per byte, so cutting the bytes first is
    exact and bounds the work by `context` bytes a row. Other tokenizers see
    the whole text (a token can depend on text far from it); only their ids
    are cut.

    Returns:
        `(ragged int32 [B, None], lengths int32 [B])`.
    """
    if getattr(tokenizer, "one_id_per_byte", False):
        lengths = tf.strings.length(text)
        text = clipping.clip_bytes(text, context, from_end=True)
        ragged = tokenizer.tokenize(text)
    else:
        ragged = tokenizer.tokenize(text)
        lengths = tf.cast(ragged.row_lengths(), tf.int32)
    ragged = clipping.clip_rows(ragged, context, from_end=True)
    return tf.cast(ragged, tf.int32), tf.cast(lengths, tf.int32)


def tokenize_turns(tokenizer, template, role, content, context: int):
    """`tokenize` for conversations `[B, M]` under the model's template
    (`tflm.generation.templating`): each row's last `context` ids and its
    full length."""
    ragged = templating.render(template, tokenizer, role, content)
    lengths = tf.cast(ragged.row_lengths(), tf.int32)
    return clipping.clip_rows(ragged, context, from_end=True), lengths


def tokenize_prompts(tokenizer, template, text, context: int):
    """`tokenize`, or with a template each prompt as the conversation
    `[user: prompt]`."""
    if template is None:
        return tokenize(tokenizer, text, context)
    role, content = templating.prompt_turns(text)
    return tokenize_turns(tokenizer, template, role, content, context)


def prepare(ragged, lengths, values, stop, stop_ids, config):
    """The loop's inputs from ids; see the module docstring.

    Args:
        ragged: int32 `[B, None]` prompt ids (at most `context` a row).
        lengths: int32 `[B]`, each prompt's length before any cut.
        values: every setting of `settings.SPEC`, `[B]` each.
        stop: string `[B, K]` stop strings ("" pads), or `None`.
        stop_ids: int32 `[B, N]` stop ids (-1 pads).
        config: dict with `context`, `start_id`, `eos_id`, `pad_id` (ints)
            and `bucket` (bool).

    Returns:
        A dict: `ids`, `mask` `[R, P]`, `cache_length` (int32 scalar),
        `settings` (the loop's), `stop` `[R, K]` or `None`, `prompt_index`
        `[R]` and `truncated` `[R]` (bool), `R = B * num_return_sequences`.
    """
    context = config["context"]
    batch = tf.shape(lengths)[0]
    n = tf.cond(batch > 0, lambda: values["num_return_sequences"][0], lambda: 1)
    new = settings_lib.max_new_tokens(values, tf.maximum(lengths, 1), context)
    index = tf.repeat(tf.range(batch), n)
    rows = {k: tf.gather(v, index) for k, v in values.items()}
    rows["seed"] += tf.tile(tf.range(n), [batch])
    new = tf.gather(new, index)
    room = context - new
    width_fn = None
    if config["bucket"]:
        width_fn = lambda w: bucket(w, context)  # noqa: E731
    ids, mask = clipping.left_pad(
        tf.gather(ragged, index), room, config["start_id"], width_fn
    )
    cache_length = tf.shape(ids)[1] + tf.maximum(tf.reduce_max(new), 1)
    if config["bucket"]:
        cache_length = bucket(cache_length, 2 * context)
    loop_settings = {k: rows[k] for k in LOOP_SETTINGS}
    loop_settings.update(
        max_new_tokens=new,
        eos_id=tf.constant(config["eos_id"], tf.int32),
        stop_ids=tf.gather(stop_ids, index),
        pad_id=tf.constant(config["pad_id"], tf.int32),
    )
    return {
        "ids": ids,
        "mask": mask,
        "cache_length": cache_length,
        "settings": loop_settings,
        "stop": None if stop is None else tf.gather(stop, index),
        "prompt_index": index,
        "truncated": tf.gather(lengths, index) > room,
    }


def text_stop(detokenize, stop):
    """The loop's `text_stop` for stop strings `[R, K]`, or `None`."""
    if stop is None:
        return None
    check = stops.text_stop(detokenize, stop)

    def maybe(tokens, num_tokens):
        return tf.cond(
            stops.longest(stop) > 0,
            lambda: check(tokens, num_tokens),
            lambda: tf.zeros_like(num_tokens, tf.bool),
        )

    return maybe


def finish(detokenize, out, stop):
    """The outputs: `text`, `token_ids`, `num_tokens`, `stop_reason`.

    Args:
        detokenize: ragged ids -> string `[R]`, or `None` (ids only).
        out: `loop.finish`'s outputs.
        stop: the stop strings `prepare` returned, or `None`.
    """
    result = {
        "token_ids": out["token_ids"],
        "num_tokens": out["num_tokens"],
        "stop_reason": tf.gather(STOP_REASONS, out["stop_reason"]),
    }
    if detokenize is None:
        return result
    ragged = tf.RaggedTensor.from_tensor(
        out["token_ids"], lengths=out["num_tokens"]
    )
    text = detokenize(ragged)
    if stop is not None:
        stopped = tf.equal(out["stop_reason"], loop.STOP_STRING)
        text = stops.cut(
            detokenize,
            text,
            out["token_ids"],
            out["num_tokens"],
            stopped,
            stop,
        )
    return {"text": text, **result}

"""The model's chat template in generation: checks, conversations from
Python, and the graph rendering of `tflm.tokenizers.template_render`.

A fine-tuned or imported model directory records its template
(`config.json["template"]`); generation then prompts the model the way it
was trained. A single prompt is the conversation `[user: prompt]`. Only
core string and ragged ops: the exported signatures run it under TF
Serving. `batch` turns Python conversations (`{"role", "content"}` turns)
into role and content strings `[B, M]`, checked.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from tflm import errors
from tflm.tokenizers import template_render
from tflm.tokenizers import templates


def end_ids(template, tokenizer) -> list[int]:
    """The ids that end an assistant turn in `template` (`<|im_end|>`,
    `<|eot_id|>`), besides the tokenizer's end id."""
    if template is None or tokenizer is None:
        return []
    return [
        templates.token_id(tokenizer, token)
        for token in templates.end_tokens(template)
    ]


def last_check(role):
    """An assert that no conversation ends with an assistant turn."""
    real = tf.not_equal(role, templates.PADDING)
    position = tf.range(tf.shape(role)[1])[None, :]
    last = tf.reduce_max(tf.where(real, position, -1), axis=1)
    ends = tf.gather(role, tf.maximum(last, 0), batch_dims=1)
    bad = (last >= 0) & tf.equal(ends, "assistant")
    message = "role: the last turn must be system or user, not assistant"
    return tf.debugging.Assert(~tf.reduce_any(bad), [message])


def turns_check(role):
    """An assert that every conversation has a turn (a row whose roles are
    all padding would be answered from the template alone)."""
    real = tf.reduce_any(tf.not_equal(role, templates.PADDING), axis=1)
    message = 'role: every conversation needs a turn (not only "" roles)'
    return tf.debugging.Assert(tf.reduce_all(real), [message])


def prompt_turns(prompt):
    """A prompt `[B]` as the conversations `[user: prompt]`: role and
    content `[B, 1]`."""
    content = tf.reshape(prompt, [-1, 1])
    return tf.fill(tf.shape(content), "user"), content


def is_turn(item) -> bool:
    return isinstance(item, Mapping)


def batch(prompts, template):
    """`((role, content) [B, M], single)` of one or more conversations."""
    single = bool(prompts) and is_turn(prompts[0])
    conversations = [list(prompts)] if single else [list(c) for c in prompts]
    if template is None:
        raise errors.InputError(
            "Conversations need a model with a chat template (a model "
            "directory written by `tflm finetune` or `tflm import`); this "
            "model has none. Give text prompts instead."
        )
    for conversation in conversations:
        if not conversation:
            raise errors.InputError(
                "A conversation to reply to needs at least one turn. "
                "Received: an empty conversation."
            )
        template_render.check_conversation(template, conversation, False)
    return template_render.as_tensors(conversations), single

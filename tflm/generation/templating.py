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

PADDING = templates.PADDING


def check(template) -> dict | None:
    """`template` as generation uses it, or `None` when there is none.

    Raises:
        InputError: a template that this tflm cannot apply.
    """
    return templates.check(template)


def end_ids(template, tokenizer) -> list[int]:
    """The ids that end an assistant turn in `template` (`<|im_end|>`,
    `<|eot_id|>`), besides the tokenizer's end id."""
    if template is None or tokenizer is None:
        return []
    return [
        templates.token_id(tokenizer, token)
        for token in templates.end_tokens(template)
    ]


def role_check(template, role):
    """An assert that every role is one the template has, or padding."""
    return template_render.role_check(template, role)


def last_check(role):
    """An assert that no conversation ends with an assistant turn."""
    real = tf.not_equal(role, PADDING)
    position = tf.range(tf.shape(role)[1])[None, :]
    last = tf.reduce_max(tf.where(real, position, -1), axis=1)
    ends = tf.gather(role, tf.maximum(last, 0), batch_dims=1)
    bad = (last >= 0) & tf.equal(ends, "assistant")
    message = "role: the last turn must be system or user, not assistant"
    return tf.debugging.Assert(~tf.reduce_any(bad), [message])


def render(template: dict, tokenizer, role, content):
    """Prompt ids of conversations `[B, M]` (role and content strings, ""
    roles pad): int32 ragged `[B, None]`, as `template_render.
    encode_prompt` makes them."""
    ids, _ = template_render.render(template, tokenizer, role, content)
    return ids


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
            "directory written by `tflm finetune`); this model has none. "
            "Give text prompts instead."
        )
    for conversation in conversations:
        _check_turns(conversation)
        template_render.check_roles(template, conversation)
    width = max([len(c) for c in conversations] + [1])
    role, content = [], []
    for conversation in conversations:
        pad = [""] * (width - len(conversation))
        role.append([t["role"] for t in conversation] + pad)
        content.append([t["content"] for t in conversation] + pad)
    shape = [len(conversations), width]
    return (
        tf.constant(role, tf.string, shape),
        tf.constant(content, tf.string, shape),
    ), single


def _check_turns(conversation) -> None:
    for turn in conversation:
        if (
            not is_turn(turn)
            or turn.get("role") not in templates.ROLES
            or not isinstance(turn.get("content"), str)
        ):
            raise errors.InputError(
                'A conversation is a list of {"role", "content"} turns, '
                f"role one of {', '.join(templates.ROLES)} and content a "
                f"string. Received: {turn!r}."
            )
    if conversation and conversation[-1]["role"] == "assistant":
        raise errors.InputError(
            "A conversation to reply to must end with a user or system "
            "turn. Received: a last turn with role='assistant'."
        )

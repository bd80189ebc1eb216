"""The model's template, applied in the graph (what `tflm.tokenizers.templates`
does in Python, id for id).

A fine-tuned model directory records its template (`config.json
["template"]`); generation then prompts the model the way it was trained.
`render` takes a batch of conversations as role and content strings
`[B, M]` (an empty role pads) and builds each row's prompt ids: the start id,
then the pieces of `templates.segments` (every non-reply stretch, with the
assistant header that opens the next reply, is one tokenized piece; each
earlier reply is another, followed by the end id), ending with the header
of the reply to write. A single prompt is the conversation `[user: prompt]`.
Only core string and ragged ops: the exported signatures run it under TF
Serving. `batch` turns Python conversations (`{"role", "content"}` turns)
into those strings, checked.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from tflm import errors
from tflm.generation import text as text_lib
from tflm.tokenizers import templates

PADDING = ""  # The role of a padding cell.


def check(template) -> dict | None:
    """`template` as generation uses it, or `None` when there is none.

    Raises:
        InputError: a template that this tflm cannot apply.
    """
    if template is None:
        return None
    if not isinstance(template, Mapping) or template.get("name") != (
        templates.NAME
    ):
        name = template.get("name") if isinstance(template, Mapping) else None
        raise errors.InputError(
            f"Unknown prompt template {name!r} in the model's config.json; "
            f"this tflm applies {templates.NAME!r}. Upgrade tflm."
        )
    headers = template.get("headers", {})
    if sorted(headers) != sorted(templates.ROLES):
        raise errors.InputError(
            "The model's template needs a header for each role "
            f"({', '.join(templates.ROLES)}). Received: {sorted(headers)}."
        )
    return dict(template)


def role_check(role):
    """An assert that every role is a known one or padding."""
    known = tf.zeros_like(role, tf.bool)
    for name in (*templates.ROLES, PADDING):
        known |= tf.equal(role, name)
    message = (
        "role must be one of " + ", ".join(templates.ROLES) + ' or "" (padding)'
    )
    return tf.debugging.Assert(tf.reduce_all(known), [message])


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
    """Prompt ids of conversations, as `templates.encode_prompt` makes them.

    Args:
        template: a checked template (`check`).
        tokenizer: the model's tokenizer.
        role: string `[B, M]`: system, user, assistant or "" (padding).
        content: string `[B, M]`.

    Returns:
        int32 ragged `[B, None]`.
    """
    headers, turn_end = template["headers"], template["turn_end"]
    assistant = tf.equal(role, "assistant")
    header = tf.fill(tf.shape(role), "")
    for name in templates.ROLES:
        header = tf.where(tf.equal(role, name), headers[name], header)
    real = tf.not_equal(role, PADDING)
    body = tf.where(assistant | ~real, "", content + turn_end)
    reply = tf.where(assistant, content, "")
    after = tf.where(assistant, turn_end, "")
    # Piece 2c gathers the text before reply c, piece 2c + 1 is reply c.
    replies_before = tf.cumsum(tf.cast(assistant, tf.int32), 1, exclusive=True)
    piece = 2 * replies_before
    batch, turns = tf.shape(role)[0], tf.shape(role)[1]
    replies = tf.reduce_sum(tf.cast(assistant, tf.int32), axis=1)
    fragments = tf.stack([header + body, reply, after], axis=2)
    ids = tf.stack([piece, piece + 1, piece + 2], axis=2)
    opening = tf.fill([batch, 1], headers["assistant"])  # the new reply's
    fragments = tf.concat([tf.reshape(fragments, [batch, -1]), opening], 1)
    ids = tf.concat([tf.reshape(ids, [batch, -1]), 2 * replies[:, None]], 1)
    width = 2 * turns + 1  # pieces a row can have
    segment = ids + tf.range(batch)[:, None] * width
    text = tf.strings.unsorted_segment_join(
        tf.reshape(fragments, [-1]), tf.reshape(segment, [-1]), batch * width
    )
    return _assemble(template, tokenizer, text, replies, batch, width)


def _assemble(template, tokenizer, text, replies, batch, width):
    """The ids of the pieces `text` `[B * width]`, end ids after replies."""
    tokens = tf.cast(tokenizer.tokenize(text), tf.int32)
    index = tf.tile(tf.range(width), [batch])
    used = index <= 2 * tf.repeat(replies, width)
    # Pieces past a row's last reply are empty text; drop whatever ids a
    # tokenizer might give them.
    tokens = text_lib.clip_rows(
        tokens, tf.where(used, 2**30, 0), from_end=False
    )
    if template.get("eos_after_assistant", True):
        is_reply = used & (index % 2 == 1)
        end = tf.RaggedTensor.from_row_lengths(
            tf.fill(
                [tf.reduce_sum(tf.cast(is_reply, tf.int32))], tokenizer.eos_id
            ),
            tf.cast(is_reply, tokens.row_splits.dtype),
        )
        tokens = tf.concat([tokens, tf.cast(end, tf.int32)], axis=1)
    rows = tf.RaggedTensor.from_uniform_row_length(
        tokens, tf.cast(width, tokens.row_splits.dtype)
    )
    rows = rows.merge_dims(1, 2)
    if template.get("bos", True):
        start = tf.fill([batch, 1], tf.constant(tokenizer.bos_id, tf.int32))
        rows = tf.concat([start, rows], axis=1)
    return rows


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

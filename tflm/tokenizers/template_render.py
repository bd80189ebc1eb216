"""A chat template (`templates.Format`) applied in the graph.

Each turn of role and content strings `[B, M]` becomes a fixed number of
cells (the role's parts before its content, the content, the parts after),
each a text or one control token id; rows of cells are cut into pieces at
every control token (and, in training or for tflm's own format, around each
reply), each piece's text is tokenized once, and the pieces' ids are
joined. Only core string and ragged ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.tokenizers import templates

_NONE = -1  # The id of a text cell.


def _trim(content):
    ws = templates.TRIM
    return tf.strings.regex_replace(content, f"^[{ws}]+|[{ws}]+$", "")


def _part(tokenizer, part):
    """`(text, id)` of one part."""
    if isinstance(part, templates.Special):
        return "", templates.token_id(tokenizer, part.token)
    return part, _NONE


def _by_role(form, which, index, tokenizer, role):
    """Text and id `[B, M]` of part `index` of each turn's `which` parts."""
    text = tf.fill(tf.shape(role), "")
    ids = tf.fill(tf.shape(role), _NONE)
    for name in templates.ROLES:
        parts = getattr(form, which)[name]
        if index < len(parts):
            value, token = _part(tokenizer, parts[index])
            here = tf.equal(role, name)
            text = tf.where(here, value, text)
            ids = tf.where(here, token, ids)
    return text, ids


def _cells(template, tokenizer, role, content, prompt: bool):
    """`(text, ids, reply, loss)` `[B, C]`: the conversation's cells."""
    form = templates.FORMATS[template["name"]]
    real = tf.not_equal(role, templates.PADDING)
    content = tf.where(real, content, "")  # a padding turn renders nothing
    system = template.get("default_system")
    if system:
        # The first real turn of each row (none: an empty conversation).
        first = tf.argmax(tf.cast(tf.pad(real, [[0, 0], [0, 1]]), tf.int32), 1)
        first_role = tf.gather(
            tf.pad(role, [[0, 0], [0, 1]], constant_values=""),
            first,
            batch_dims=1,
        )
        missing = tf.not_equal(first_role, "system")[:, None]
        role = tf.concat([tf.where(missing, "system", ""), role], 1)
        content = tf.concat([tf.where(missing, system, ""), content], 1)
    if form.trim:
        content = _trim(content)
    assistant = tf.equal(role, "assistant")
    zeros = tf.zeros_like(assistant)
    columns = []  # (text, ids, reply, loss), each [B, M]
    for which in ("before", "after"):
        width = max(len(getattr(form, which)[r]) for r in templates.ROLES)
        if which == "after":
            columns.append(
                (content, tf.fill(tf.shape(role), _NONE), assistant, assistant)
            )
        for index in range(width):
            text, ids = _by_role(form, which, index, tokenizer, role)
            ends = assistant & (index == 0) if which == "after" else zeros
            columns.append((text, ids, zeros, ends))
    batch, turns = tf.shape(role)[0], tf.shape(role)[1]
    cells = [
        tf.reshape(tf.stack(list(field), axis=2), [batch, turns * len(field)])
        for field in zip(*columns, strict=True)
    ]
    edges = [form.start] + ([form.generation] if prompt else [])
    for place, parts in zip((0, 1), edges, strict=False):
        if not parts:
            continue
        made = [_part(tokenizer, p) for p in parts]
        extra = [
            tf.tile(tf.constant([[m[0] for m in made]]), [batch, 1]),
            tf.tile(tf.constant([[m[1] for m in made]], tf.int32), [batch, 1]),
            tf.zeros([batch, len(made)], tf.bool),
            tf.zeros([batch, len(made)], tf.bool),
        ]
        cells = [
            tf.concat([e, c] if place == 0 else [c, e], 1)
            for c, e in zip(cells, extra, strict=True)
        ]
    return cells


def _tokenize(tokenizer, texts, width):
    """Ids of the pieces `texts` `[B * width]`. A SentencePiece tokenizer
    that, like Hugging Face's, puts no space before text that follows a
    control token (`tokenize_after_special`) gets every piece but a row's
    first that way."""
    after = getattr(tokenizer, "tokenize_after_special", None)
    if after is None:
        return tf.cast(tokenizer.tokenize(texts), tf.int32)
    first = tf.equal(tf.range(tf.size(texts)) % width, 0)
    head = tokenizer.tokenize(tf.where(first, texts, ""))
    rest = after(tf.where(first, "", texts))
    return tf.cast(tf.concat([head, rest], axis=1), tf.int32)


def _rows_of(ragged):
    """The row of each value of ragged `[N, None]`, by binary search: a
    ragged mask or broadcast, `tf.repeat` and `value_rowids` make a dense
    `[N, longest row]` tensor (25 GB for 4096 rows beside a 1 MiB prompt)."""
    splits = ragged.row_splits
    position = tf.range(splits[-1], dtype=splits.dtype)
    return tf.searchsorted(splits[1:], position, side="right")


def render(template, tokenizer, role, content, prompt: bool = True):
    """Ids (and loss weights) of conversations in `template`.

    Args:
        template: a checked `config.json["template"]` record.
        tokenizer: the model's tokenizer.
        role: string `[B, M]`: system, user, assistant or "" (padding).
        content: string `[B, M]`.
        prompt: the conversations end before a reply: add the generation
            prompt. Else they end with a reply (training examples), and
            each reply is a piece of its own.

    Returns:
        `(ids, loss)`: int32 and float32 ragged `[B, None]`; `loss` is 1 on
        each reply's ids and the control token that ends it.
    """
    form = templates.FORMATS[template["name"]]
    text, ids, reply, loss = _cells(template, tokenizer, role, content, prompt)
    batch, width = tf.shape(text)[0], tf.shape(text)[1]
    special = ids >= 0
    before = tf.pad(special, [[0, 0], [1, 0]])[:, :-1]
    new = special | before
    if not prompt or not form.joined:
        was = tf.pad(reply, [[0, 0], [1, 0]])[:, :-1]
        new |= reply | tf.not_equal(reply, was)
    new = tf.concat([tf.ones([batch, 1], tf.bool), new[:, 1:]], 1)
    piece = tf.cumsum(tf.cast(new, tf.int32), axis=1) - 1
    segment = tf.reshape(piece + tf.range(batch)[:, None] * width, [-1])
    count = batch * width
    texts = tf.strings.unsorted_segment_join(
        tf.reshape(text, [-1]), segment, count
    )
    tokens = _tokenize(tokenizer, texts, width)
    # Empty pieces make no ids.
    lengths = tokens.row_lengths()
    nonempty = tf.not_equal(texts, "")
    tokens = tf.RaggedTensor.from_row_lengths(
        tf.boolean_mask(tokens.values, tf.gather(nonempty, _rows_of(tokens))),
        tf.where(nonempty, lengths, tf.zeros_like(lengths)),
    )
    piece_id = tf.math.unsorted_segment_max(
        tf.reshape(ids, [-1]), segment, count
    )
    has_id = piece_id >= 0
    token = tf.RaggedTensor.from_row_lengths(
        tf.boolean_mask(piece_id, has_id),
        tf.cast(has_id, tokens.row_splits.dtype),
    )
    pieces = tf.concat([tokens, token], axis=1)
    weight = tf.math.unsorted_segment_max(
        tf.cast(tf.reshape(loss, [-1]), tf.float32), segment, count
    )
    weights = pieces.with_values(tf.gather(weight, _rows_of(pieces)))
    splits = tf.cast(width, pieces.row_splits.dtype)

    def rows(ragged):
        return tf.RaggedTensor.from_uniform_row_length(
            ragged, splits
        ).merge_dims(1, 2)

    return rows(pieces), rows(weights)


def role_check(template, role):
    """Asserts that every role is known (or padding) and allowed."""
    form = templates.FORMATS[template["name"]]
    roles = [r for r in templates.ROLES if form.system or r != "system"]
    known = tf.zeros_like(role, tf.bool)
    for name in (*roles, templates.PADDING):
        known |= tf.equal(role, name)
    message = "role must be one of " + ", ".join(roles) + ' or "" (padding)'
    if not form.system:
        message += f" (the {template['name']} template has no system role)"
    return tf.debugging.Assert(tf.reduce_all(known), [message])


def as_tensors(conversations: Sequence[Sequence[Mapping]]):
    """Role and content strings `[N, M]` of conversations, padded with
    empty roles (`M` at least 1)."""
    width = max([len(c) for c in conversations] + [1])
    role, content = [], []
    for conversation in conversations:
        pad = [templates.PADDING] * (width - len(conversation))
        role.append([m["role"] for m in conversation] + pad)
        content.append([m["content"] for m in conversation] + pad)
    shape = [len(conversations), width]
    return (
        tf.constant(role, tf.string, shape),
        tf.constant(content, tf.string, shape),
    )


def check_conversation(template, messages, reply: bool) -> None:
    """InputError unless `messages` is a list of `{"role", "content"}`
    turns with roles the template has, ending with a reply (`reply`) or
    not."""
    form = templates.FORMATS[template["name"]]
    roles = [r for r in templates.ROLES if form.system or r != "system"]
    for turn in messages:
        if (
            not isinstance(turn, Mapping)
            or turn.get("role") not in templates.ROLES
            or not isinstance(turn.get("content"), str)
        ):
            raise errors.InputError(
                'A conversation is a list of {"role", "content"} turns, '
                f"role one of {', '.join(roles)} and content a string. "
                f"Received: {turn!r}."
            )
        if turn["role"] not in roles:
            raise errors.InputError(
                f"The {template['name']} chat template has no "
                f"{turn['role']} role; put the instructions in the first "
                "user turn."
            )
    ends = bool(messages) and messages[-1]["role"] == "assistant"
    if reply and not ends:
        raise errors.InputError(
            "A training conversation must end with the assistant's reply."
        )
    if not reply and ends:
        raise errors.InputError(
            "A conversation to reply to must end with a user or system "
            "turn. Received: a last turn with role='assistant'."
        )


# Conversations rendered per graph call by `encode_many`.
BATCH = 256


def encode_many(conversations, tokenizer, template=None):
    """`encode` of each conversation, rendered `BATCH` at a time."""
    template = template or templates.TEMPLATE
    out = []
    for start in range(0, len(conversations), BATCH):
        chunk = conversations[start : start + BATCH]
        for messages in chunk:
            check_conversation(template, messages, reply=True)
        ids, loss = render(
            template, tokenizer, *as_tensors(chunk), prompt=False
        )
        for row_ids, row_loss in zip(
            ids.to_list(), loss.to_list(), strict=True
        ):
            row_ids = np.asarray(row_ids, np.int32)
            row_loss = np.asarray(row_loss, np.float32)
            # What follows the last reply's end token (ChatML's newline) is
            # not trained on: the example ends there.
            end = len(row_ids)
            if row_loss.any():
                end = int(np.flatnonzero(row_loss)[-1]) + 1
            out.append((row_ids[:end], row_loss[:end]))
    return out


def encode(messages, tokenizer, template=None):
    """`(ids, loss)` int32 and float32 `[L]` of a conversation ending with
    a reply (a training example), up to the control token that ends it."""
    return encode_many([messages], tokenizer, template)[0]


def encode_prompts(conversations, tokenizer, template=None) -> list:
    """`encode_prompt` of each conversation, rendered `BATCH` at a time."""
    template = template or templates.TEMPLATE
    out = []
    for start in range(0, len(conversations), BATCH):
        chunk = conversations[start : start + BATCH]
        for messages in chunk:
            check_conversation(template, messages, reply=False)
        ids, _ = render(template, tokenizer, *as_tensors(chunk))
        out += [np.asarray(row, np.int32) for row in ids.to_list()]
    return out


def encode_prompt(messages, tokenizer, template=None) -> np.ndarray:
    """The ids a model is prompted with for the next reply."""
    return encode_prompts([messages], tokenizer, template)[0]

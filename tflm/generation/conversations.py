"""Conversations as prompts: `{"role", "content"}` turns, checked and
padded into the role and content strings `[B, M]` that
`tflm.generation.templating` renders (as the exported `chat` signature
takes them)."""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from tflm import errors
from tflm.data import templates


def is_turn(item) -> bool:
    return isinstance(item, Mapping)


def batch(prompts, generator):
    """`((role, content) [B, M], single)` of one or more conversations."""
    single = bool(prompts) and is_turn(prompts[0])
    conversations = [list(prompts)] if single else [list(c) for c in prompts]
    if generator.template is None:
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

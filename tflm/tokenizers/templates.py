"""The one template that turns task examples into token ids.

Every fine-tuned model is trained on, and must be prompted with, the same
rendering. A conversation is a list of `{"role", "content"}` turns (roles
`system`, `user`, `assistant`); a prompt/completion example is the
conversation `[user: prompt, assistant: completion]`. Rendered, with the
tokenizer's special ids in angle brackets:

    <bos>### System:\\n{system}\\n
    ### User:\\n{prompt}\\n
    ### Assistant:\\n{reply}<eos>
    ### User:\\n...

The headers are plain text, so any tokenizer (bytes, SentencePiece, GPT-2's
BPE, which has no chat tokens) renders them; the only special ids are the
start id once at the beginning and the end id after each assistant reply,
which is what makes a model stop. Each non-assistant segment (the headers
and the other turns) is tokenized as one piece and each reply as another,
exactly as at serving time, where the prompt is tokenized and the reply is
generated. The loss is taken on the reply ids and their end id only.

`TEMPLATE` is what a model directory records (`config.json["template"]`),
so that generation can render prompts the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tflm.tokenizers import base

NAME = "tflm-chat-v1"
ROLES = ("system", "user", "assistant")
HEADERS = {
    "system": "### System:\n",
    "user": "### User:\n",
    "assistant": "### Assistant:\n",
}
TURN_END = "\n"
TEMPLATE = {
    "name": NAME,
    "headers": HEADERS,
    "turn_end": TURN_END,
    "bos": True,
    "eos_after_assistant": True,
}


def render_prompt(messages: Sequence[dict]) -> str:
    """The text before a reply: every turn rendered, then the assistant
    header. `messages` must not end with an assistant turn."""
    return _render_turns(messages) + HEADERS["assistant"]


def prompt_messages(prompt: str) -> list[dict]:
    """The conversation of a single prompt."""
    return [{"role": "user", "content": prompt}]


def _render_turns(messages: Sequence[dict]) -> str:
    return "".join(
        HEADERS[m["role"]] + m["content"] + TURN_END for m in messages
    )


def segments(messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """`(text, is_reply)` pieces of a conversation ending with a reply.

    Non-reply text between two replies is one piece (it starts with the
    newline that ends the previous reply).
    """
    pieces: list[tuple[str, bool]] = []
    pending = ""
    for message in messages:
        if message["role"] == "assistant":
            pieces.append((pending + HEADERS["assistant"], False))
            pieces.append((message["content"], True))
            pending = TURN_END
        else:
            pending += HEADERS[message["role"]] + message["content"] + TURN_END
    return pieces


def encode(
    messages: Sequence[dict], tokenizer: base.Tokenizer
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a conversation and the loss mask over them.

    Returns:
        `(ids, mask)`, int32 and float32 `[L]`: `mask` is 1 on each reply's
        ids and on the end id after it, 0 elsewhere.
    """
    pieces = segments(messages)
    texts = [text for text, _ in pieces]
    tokenized = tokenizer.tokenize(texts).to_list() if texts else []
    ids, mask = [tokenizer.bos_id], [0.0]
    for (_, is_reply), piece in zip(pieces, tokenized, strict=True):
        ids.extend(piece)
        mask.extend([1.0 if is_reply else 0.0] * len(piece))
        if is_reply:
            ids.append(tokenizer.eos_id)
            mask.append(1.0)
    return np.asarray(ids, np.int32), np.asarray(mask, np.float32)


def encode_prompt(
    messages: Sequence[dict], tokenizer: base.Tokenizer
) -> np.ndarray:
    """The ids a model is prompted with for the next reply: those of
    `encode` up to the reply it should write."""
    if messages and messages[-1]["role"] == "assistant":
        raise ValueError("The conversation already ends with a reply.")
    ids, _ = encode(
        [*messages, {"role": "assistant", "content": ""}], tokenizer
    )
    return ids[:-1]  # The end id after the empty reply.

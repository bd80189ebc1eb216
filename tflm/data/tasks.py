"""Task data: `.jsonl` examples to masked `(x, y, sample_weight)` batches.

Each line is one example, either a prompt and its completion,

    {"prompt": "Translate: cat", "completion": "chat"}

(field names configurable), or a conversation,

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}

that ends with an assistant turn. Both are rendered by
`tflm.tokenizers.templates` and padded to one window of
`sequence_length + 1` tokens each; the loss (`sample_weight`) covers the
completion or assistant tokens and the end id after each. An example longer
than the window loses its oldest prompt tokens (its start id stays); if the
completion alone is too long, the prompt is dropped and the completion's
end is cut. One warning counts the examples truncated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.data import files as files_lib
from tflm.data import jsonl
from tflm.tokenizers import base
from tflm.tokenizers import template_render
from tflm.tokenizers import templates

logger = logging.getLogger(__name__)

Conversation = list[dict]


def read_examples(
    paths: Sequence[str],
    *,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    exclude: Sequence[str] = (),
) -> list[Conversation]:
    """Every example of the `.jsonl` files `paths` name, as conversations.

    Raises:
        InputError: naming the file and line of a bad example, or a file
            that is not `.jsonl`.
    """
    examples = []
    for path in files_lib.find_files(paths, exclude):
        if not path.endswith(".jsonl"):
            raise errors.InputError(
                f"{path}: task data must be .jsonl files of prompt/"
                "completion or chat examples."
            )
        for where, record in jsonl.read_records(path):
            examples.append(
                _conversation(record, where, prompt_field, completion_field)
            )
    if not examples:
        raise errors.InputError(
            f"No examples in {', '.join(map(str, paths))}: the files are empty."
        )
    return examples


def _conversation(record, where, prompt_field, completion_field):
    if "messages" in record:
        return _chat(record["messages"], where)
    missing = [f for f in (prompt_field, completion_field) if f not in record]
    if missing:
        fields = ", ".join(map(repr, record)) or "none"
        raise errors.InputError(
            f"{where}: no {missing[0]!r} field (the record has: {fields}). "
            "Examples are {prompt, completion} or {messages}; name other "
            "fields with --prompt-field / --completion-field."
        )
    prompt, completion = record[prompt_field], record[completion_field]
    for name, value in ((prompt_field, prompt), (completion_field, completion)):
        if not isinstance(value, str):
            raise errors.InputError(
                f"{where}: field {name!r} is a {type(value).__name__}, not "
                "a string."
            )
    if not completion:
        raise errors.InputError(
            f"{where}: the completion {completion_field!r} is empty; there "
            "is nothing to learn from. Remove the line or fill it."
        )
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": completion},
    ]


def _chat(messages, where: str) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise errors.InputError(
            f"{where}: 'messages' must be a non-empty list of "
            "{role, content} turns."
        )
    turns = []
    for i, turn in enumerate(messages):
        ok = isinstance(turn, dict) and isinstance(turn.get("content"), str)
        if not ok:
            raise errors.InputError(
                f"{where}: turn {i} must be an object with a string 'content'."
            )
        if turn.get("role") not in templates.ROLES:
            raise errors.InputError(
                f"{where}: turn {i} has role {turn.get('role')!r}; roles are "
                f"{', '.join(templates.ROLES)}."
            )
        if turn["role"] == "assistant" and not turn["content"]:
            raise errors.InputError(
                f"{where}: turn {i} is an empty assistant reply."
            )
        turns.append({"role": turn["role"], "content": turn["content"]})
    if turns[-1]["role"] != "assistant":
        raise errors.InputError(
            f"{where}: the conversation ends with a {turns[-1]['role']!r} "
            "turn; training examples end with the assistant's reply."
        )
    return turns


def encode_examples(
    examples: Sequence[Conversation],
    tokenizer: base.Tokenizer,
    sequence_length: int,
    template: dict | None = None,
    fit_longest: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of `sequence_length + 1` ids, their loss mask and real-token
    mask, `[N, sequence_length + 1]` each (see the module docstring).

    With `fit_longest`, the windows are only as long as the longest example
    (rounded up to a multiple of 16), at most `sequence_length + 1`: a model
    with a long context is not trained on padding.
    """
    encoded = template_render.encode_many(examples, tokenizer, template)
    window = sequence_length + 1
    if fit_longest and encoded:
        longest = max(len(tokens) for tokens, _ in encoded)
        window = min(window, -(-longest // 16) * 16)
    ids = np.full((len(examples), window), tokenizer.pad_id, np.int32)
    loss = np.zeros((len(examples), window), np.float32)
    real = np.zeros((len(examples), window), bool)
    truncated = 0
    for row, (tokens, mask) in enumerate(encoded):
        if len(tokens) > window:
            truncated += 1
            tokens, mask = _truncate(tokens, mask, window)
        ids[row, : len(tokens)] = tokens
        loss[row, : len(tokens)] = mask
        real[row, : len(tokens)] = True
    if truncated:
        logger.warning(
            "%d of %d examples are longer than sequence_length + 1 = %d "
            "tokens and were truncated from the prompt side.",
            truncated,
            len(examples),
            window,
        )
    return ids, loss, real


def _truncate(tokens, mask, window):
    # The last reply starts after the last prompt (mask 0) token.
    reply = int(np.flatnonzero(mask == 0)[-1]) + 1
    keep = window - 1  # After the start id.
    if len(tokens) - reply <= keep:
        rest = slice(len(tokens) - keep, len(tokens))
    else:
        rest = slice(reply, reply + keep)
    return (
        np.concatenate([tokens[:1], tokens[rest]]),
        np.concatenate([mask[:1], mask[rest]]),
    )


def split_indices(
    count: int, validation_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """`(train, validation)` example indices: a fixed pseudo-random share
    `validation_fraction` held out (at least one when above 0)."""
    order = np.random.RandomState(1234).permutation(count)
    held = 0
    if validation_fraction > 0 and count > 1:
        held = min(max(1, round(count * validation_fraction)), count - 1)
    return np.sort(order[held:]), np.sort(order[:held])


def to_dataset(
    windows: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of `(x, y, sample_weight)` from `encode_examples` windows."""
    ids, loss, real = windows
    dataset = tf.data.Dataset.from_tensor_slices((ids, loss, real))
    if shuffle:
        dataset = dataset.shuffle(len(ids), seed=seed)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def split(ids, loss, real):
        x = {"token_ids": ids[:, :-1], "padding_mask": real[:, :-1]}
        return x, ids[:, 1:], loss[:, 1:]

    return dataset.map(split).prefetch(tf.data.AUTOTUNE)


def select(windows, indices):
    """The rows `indices` of `encode_examples` windows."""
    return tuple(array[indices] for array in windows)

"""Measurements of how well a tokenizer compresses text."""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

from tflm.tokenizers import base


def chars_per_token(
    tokenizer: base.Tokenizer, texts: Iterable[str], batch_size: int = 256
) -> float:
    """Average number of characters (Unicode code points) per token.

    Args:
        tokenizer: the tokenizer to measure.
        texts: sample texts.
        batch_size: texts tokenized per call.

    Returns:
        Total characters divided by total tokens; `0.0` for empty texts.
    """
    chars = tokens = 0
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            tokens += _count_tokens(tokenizer, batch)
            chars += sum(len(t) for t in batch)
            batch = []
    if batch:
        tokens += _count_tokens(tokenizer, batch)
        chars += sum(len(t) for t in batch)
    return chars / tokens if tokens else 0.0


def _count_tokens(tokenizer: base.Tokenizer, batch: list[str]) -> int:
    ids = tokenizer.tokenize(tf.constant(batch))
    return int(tf.size(ids.flat_values))

"""A tokenizer whose tokens are the UTF-8 bytes of the text."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tflm.tokenizers import base

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3


class ByteTokenizer(base.Tokenizer):
    """UTF-8 bytes as tokens: byte `b` has id `b + 3`; no training needed.

    Ids 0, 1 and 2 are padding, start and end of text, so the vocabulary has
    259 ids. Every string round-trips exactly. `detokenize` joins the bytes
    as they are: ids that cut a character in half (for example a sampled
    sequence) give bytes that are not valid UTF-8 rather than an error.
    Only core TensorFlow ops are used.

    Args:
        name: optional module name.

    Example:
    >>> tokenizer = ByteTokenizer()
    >>> tokenizer.tokenize("hé").numpy().tolist()
    [107, 198, 172]
    >>> tokenizer.detokenize([107, 198, 172]).numpy().decode()
    'hé'
    """

    type_name = "byte"
    # Text cut to its last n bytes gives exactly its last n ids, so callers
    # may cut text before tokenizing it (`tflm.generation.pipeline`).
    one_id_per_byte = True

    def __init__(self, name: str | None = None):
        super().__init__(name=name)

    @property
    def vocabulary_size(self) -> int:
        return BYTE_OFFSET + 256

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def newline_is_boundary(self) -> bool:
        return True

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        # One join and one decode_raw: a single copy of the batch's bytes.
        lengths = tf.strings.length(strings, unit="BYTE")
        flat = tf.io.decode_raw(tf.strings.reduce_join(strings), tf.uint8)
        ids = tf.cast(flat, tf.int32) + BYTE_OFFSET
        return tf.RaggedTensor.from_row_lengths(
            ids, tf.cast(lengths, tf.int64), validate=False
        )

    def _detokenize_batch(self, ids: tf.RaggedTensor) -> tf.Tensor:
        # Special ids and ids out of range were dropped by `detokenize`.
        table = tf.constant([bytes([b]) for b in range(256)])
        pieces = tf.gather(table, ids - BYTE_OFFSET)
        return tf.strings.reduce_join(pieces, axis=-1)

    @classmethod
    def _from_directory(cls, directory: str, config: dict[str, Any]):
        del directory, config  # Nothing to read: the mapping is fixed.
        return cls()

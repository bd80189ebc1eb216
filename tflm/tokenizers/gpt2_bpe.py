"""GPT-2's byte-level BPE tokenizer, run in-graph with core TensorFlow ops.

See `gpt2_bpe_ops` for how GPT-2's splitting and merging run in a graph.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.tokenizers import base
from tflm.tokenizers import gpt2_bpe_ops as ops
from tflm.tokenizers import storage

VOCABULARY_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
END_OF_TEXT = "<|endoftext|>"


class GPT2BPETokenizer(base.Tokenizer):
    """GPT-2's byte-level BPE (`vocab.json` and `merges.txt`), in-graph.

    Gives the ids of OpenAI's GPT-2 encoder for any text, and
    `detokenize(tokenize(text)) == text`. `<|endoftext|>` is GPT-2's only
    special token, so it is the start, end and padding id (GPT-2 has no
    padding token; padding is always masked). Text is never parsed for
    special tokens: a literal `"<|endoftext|>"` in text is ordinary text.
    `detokenize` joins the tokens' bytes as they are, so ids that cut a
    character in half give bytes that are not valid UTF-8. The files are
    tracked as `tf.saved_model.Asset`s when read from disk.

    Args:
        vocabulary: a `vocab.json` path, or a dict of token to id.
        merges: a `merges.txt` path, or a list of `"left right"` rules.
        name: optional module name.

    Example:
    >>> tokenizer = GPT2BPETokenizer.from_directory("gpt2")  # doctest: +SKIP
    >>> tokenizer.tokenize("Hello world").numpy().tolist()  # doctest: +SKIP
    [15496, 995]
    """

    type_name = "gpt2_bpe"
    files = (VOCABULARY_FILE, MERGES_FILE)

    @property
    def line_start_is_boundary(self) -> bool:
        # Every pre-tokenizer splits a run of whitespace from the word that
        # follows it when the run ends in a newline (no pattern takes a
        # newline as a word's prefix), and merges stay inside a pre-token.
        return True

    def __init__(
        self,
        vocabulary: str | os.PathLike | dict[str, int],
        merges: str | os.PathLike | list[str],
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.vocabulary_file = self.merges_file = None
        sources = ["<vocabulary>", "<merges>"]
        if isinstance(vocabulary, str | os.PathLike):
            sources[0] = os.fspath(vocabulary)
            vocabulary = _read(sources[0], json.loads)
            self.vocabulary_file = tf.saved_model.Asset(sources[0])
        if isinstance(merges, str | os.PathLike):
            sources[1] = os.fspath(merges)
            merges = _read(sources[1], str.splitlines)
            self.merges_file = tf.saved_model.Asset(sources[1])
        self._vocabulary = _check_vocabulary(vocabulary, sources[0])
        self._merges = [m for m in merges if m and not m.startswith("#vers")]
        self._eos_id = self._vocabulary[END_OF_TEXT]
        self._size = max(self._vocabulary.values()) + 1
        to_byte = {c: b for b, c in ops.bytes_to_unicode().items()}
        pieces = [b""] * self._size
        for token, i in self._vocabulary.items():
            pieces[i] = b"".join(
                bytes([to_byte[c]]) if c in to_byte else c.encode()
                for c in token
            )
        self._token_bytes = np.array(pieces, dtype=object)
        self._byte_ids = np.array(
            [self._vocabulary[c] for c in ops.bytes_to_unicode().values()],
            np.int32,
        )
        try:
            self._tables = ops.merge_tables(
                self._vocabulary, self._merges, self._size, sources[1]
            )
        except ValueError as err:
            raise errors.InputError(
                f"{err} Restore the file, or import the tokenizer again."
            ) from None

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike, config: dict | None = None
    ) -> GPT2BPETokenizer:
        """Reads `vocab.json` and `merges.txt` (or names in `config`)."""
        directory, config = os.fspath(directory), config or {}
        paths = [
            storage.asset_path(directory, config, key, name)
            for key, name in (
                ("vocabulary_file", VOCABULARY_FILE),
                ("merges_file", MERGES_FILE),
            )
        ]
        return cls(*paths)

    @property
    def vocabulary(self) -> dict[str, int]:
        """The token to id mapping (a copy)."""
        return dict(self._vocabulary)

    @property
    def merges(self) -> list[str]:
        """The merge rules in order, as `"left right"` (a copy)."""
        return list(self._merges)

    @property
    def vocabulary_size(self) -> int:
        return self._size

    @property
    def pad_id(self) -> int:
        return self._eos_id

    @property
    def bos_id(self) -> int:
        return self._eos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        words = ops.pretokenize(strings)
        flat = words.flat_values
        lengths = tf.strings.length(flat, unit="BYTE")
        raw = tf.io.decode_raw(tf.strings.reduce_join(flat), tf.uint8)
        ids = tf.gather(tf.constant(self._byte_ids), tf.cast(raw, tf.int32))
        if len(self._merges):
            ids, lengths = ops.merge_words(
                ids, lengths, self._tables, self._size
            )
        pieces = tf.RaggedTensor.from_row_lengths(
            ids, tf.cast(lengths, tf.int64), validate=False
        )
        return tf.RaggedTensor.from_row_splits(
            pieces, words.row_splits, validate=False
        ).merge_dims(1, 2)

    def _detokenize_batch(self, ids: tf.RaggedTensor) -> tf.Tensor:
        table = tf.constant(self._token_bytes.tolist(), tf.string)
        return tf.strings.reduce_join(tf.gather(table, ids), axis=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(vocabulary_file=VOCABULARY_FILE, merges_file=MERGES_FILE)
        return config

    def _save_assets(self, directory: str) -> None:
        for name, text in (
            (
                VOCABULARY_FILE,
                json.dumps(dict(self._vocabulary), ensure_ascii=False),
            ),
            (
                MERGES_FILE,
                "".join(f"{m}\n" for m in ["#version: 0.2", *self._merges]),
            ),
        ):
            with open(
                os.path.join(directory, name), "w", encoding="utf-8"
            ) as f:
                f.write(text)

    @classmethod
    def _from_directory(cls, directory: str, config: dict[str, Any]):
        return cls.from_directory(directory, config)


def _read(path: str, parse):
    """`parse(text)` of a UTF-8 file; InputError naming it if it fails."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errors.InputError(
            f"{path} is corrupt ({err}). Restore it, or import the "
            "tokenizer again."
        ) from None


def _check_vocabulary(vocabulary: Any, source: str) -> dict[str, int]:
    ids = list(vocabulary.values()) if isinstance(vocabulary, dict) else [-1]
    if not all(isinstance(i, int) and i >= 0 for i in ids) or len(
        set(ids)
    ) != len(ids):
        raise errors.InputError(
            f"{source}: not a JSON map of tokens to unique ids."
        )
    missing = [
        c for c in ops.bytes_to_unicode().values() if c not in vocabulary
    ]
    if missing:
        raise errors.InputError(
            f"{source} lacks {len(missing)} of the 256 byte tokens (first: "
            f"{missing[0]!r}); it is not a byte-level BPE vocabulary."
        )
    if END_OF_TEXT not in vocabulary:
        raise errors.InputError(f"{source} lacks {END_OF_TEXT!r}.")
    return dict(vocabulary)

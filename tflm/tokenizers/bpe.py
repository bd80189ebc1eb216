"""Byte-level BPE tokenizers of Hugging Face `tokenizer.json` files, in-graph.

Llama 3, Qwen2 and Qwen2.5, SmolLM2 and GPT-2 style files: see
`bpe_pretokenize` for the pre-tokenizers and added tokens, and `bpe_merges`
for the BPE model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.tokenizers import base
from tflm.tokenizers import bpe_huggingface
from tflm.tokenizers import bpe_merges
from tflm.tokenizers import bpe_pretokenize as pre
from tflm.tokenizers import gpt2_bpe_ops as ops
from tflm.tokenizers import hf_files
from tflm.tokenizers import storage

VOCABULARY_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
# Constructor arguments that `tokenizer.json` holds, besides the two files.
_CONFIG_KEYS = ("pretokenizer", "normalizer", "added_tokens", "ignore_merges")
_CONFIG_KEYS += ("bos_id", "eos_id", "pad_id", "add_bos")


class BPETokenizer(base.Tokenizer):
    """A byte-level BPE tokenizer (Llama 3, Qwen2, SmolLM2, GPT-2), in-graph.

    Gives the ids of Hugging Face `tokenizers` for the same `tokenizer.json`
    (`encode(text, add_special_tokens=False)` with special tokens read as
    text), and `detokenize(tokenize(text)) == text` for normalized text.
    Special added tokens are never matched in text: a literal
    `"<|im_start|>"` is ordinary text, so user content cannot forge a control
    token; `special_tokens` gives their ids. Non-special added tokens are
    split out of text as Hugging Face does. Files read from disk are tracked
    as `tf.saved_model.Asset`s. Build one with `from_huggingface`.

    Args:
        vocabulary: a `vocab.json` path, or a dict of token to id (the BPE
            model's vocabulary, byte-level tokens).
        merges: a `merges.txt` path, or a list of `"left right"` rules or
            `[left, right]` pairs, in rank order.
        pretokenizer: one of `bpe_pretokenize.PRETOKENIZERS`.
        normalizer: `None` or `"nfc"`.
        added_tokens: dicts with `content`, `id`, `special` and `normalized`
            (as in `tokenizer.json`'s `added_tokens`). Non-special ones are
            matched in text: on the raw text when `normalized` is false,
            else on the normalized text.
        ignore_merges: a word that is a token is that token (Llama 3).
        bos_id: start-of-text id.
        eos_id: end-of-text id.
        pad_id: padding id.
        add_bos: whether prompts start with `bos_id`.
        name: optional module name.

    Example:
    >>> chars = ops.bytes_to_unicode().values()  # byte b's token has id b
    >>> vocabulary = {c: i for i, c in enumerate(chars)}
    >>> vocabulary.update({"Ġw": 256, "<|endoftext|>": 257})
    >>> tokenizer = BPETokenizer(
    ...     vocabulary, ["Ġ w"], bos_id=257, eos_id=257, pad_id=257,
    ...     added_tokens=[{"content": "<|endoftext|>", "id": 257,
    ...                    "special": True}])
    >>> tokenizer.tokenize("a wow").numpy().tolist()
    [97, 256, 111, 119]
    >>> 257 in tokenizer.tokenize("<|endoftext|>").numpy()  # text, not id
    False
    >>> tokenizer.detokenize([97, 256, 111, 119, 257]).numpy().decode()
    'a wow'
    """

    type_name = "byte_level_bpe"
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
        merges: str | os.PathLike | list[str] | list[list[str]],
        *,
        pretokenizer: str = "gpt2",
        normalizer: str | None = None,
        added_tokens: list[dict[str, Any]] | None = None,
        ignore_merges: bool = False,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        add_bos: bool = False,
        name: str | None = None,
    ):
        super().__init__(name=name)
        pre.check(pretokenizer, normalizer)
        self.pretokenizer, self.normalizer = pretokenizer, normalizer
        self.ignore_merges, self._add_bos = ignore_merges, add_bos
        self.vocabulary_file = self.merges_file = None
        sources = ["<vocabulary>", "<merges>"]
        if isinstance(vocabulary, str | os.PathLike):
            sources[0] = os.fspath(vocabulary)
            vocabulary = hf_files.read_text(sources[0], json.loads)
            self.vocabulary_file = tf.saved_model.Asset(sources[0])
        if isinstance(merges, str | os.PathLike):
            sources[1] = os.fspath(merges)
            merges = hf_files.read_text(sources[1], _merge_lines)
            self.merges_file = tf.saved_model.Asset(sources[1])
        self._vocabulary = bpe_huggingface.check_vocabulary(
            vocabulary, sources[0]
        )
        self._merges = [
            m if isinstance(m, str) else " ".join(m) for m in merges
        ]
        self._added = bpe_huggingface.check_added_tokens(added_tokens or [])
        ids = [*self._vocabulary.values(), *(t["id"] for t in self._added)]
        self._size = max(ids) + 1
        self._ids = {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
        for key, value in self._ids.items():
            if not isinstance(value, int) or not 0 <= value < self._size:
                raise errors.InputError(
                    f"{key} must be an id in [0, {self._size}). "
                    f"Received: {key}={value!r}"
                )
        self._build_tables(sources)

    def _build_tables(self, sources: list[str]) -> None:
        pieces = [b""] * self._size
        for token, i in self._vocabulary.items():
            pieces[i] = bpe_merges.token_bytes(token)
        for token in self._added:
            pieces[token["id"]] = bpe_merges.token_bytes(token["content"])
        self._token_bytes = np.array(pieces, dtype=object)
        self._byte_table = bpe_merges.byte_ids(self._vocabulary, sources[0])
        special = set(self.special_tokens.values())
        self._merge_tables = None
        if self._merges:
            self._merge_tables = ops.merge_tables(
                self._vocabulary, self._merges, self._size, sources[1]
            )
            forged = special.intersection(self._merge_tables[2].tolist())
            if forged:
                raise errors.InputError(
                    f"{sources[1]}: a merge gives the special token id "
                    f"{min(forged)}, which text must never give."
                )
        self._whole_words = None
        if self.ignore_merges:
            self._whole_words = bpe_merges.whole_word_table(
                self._vocabulary, special, sources[0]
            )
        self._passes = pre.added_passes(self._added, self.normalizer)

    @classmethod
    def from_huggingface(cls, directory: str | os.PathLike) -> BPETokenizer:
        """Reads a Hugging Face `tokenizer.json` (and `tokenizer_config.json`
        when present) from `directory`.

        Raises:
            InputError: the file is not a byte-level BPE tokenizer that tflm
                runs exactly; the message names what it found.
        """
        return cls(**bpe_huggingface.read(os.fspath(directory)))

    @property
    def vocabulary(self) -> dict[str, int]:
        """The BPE model's token to id mapping (a copy)."""
        return dict(self._vocabulary)

    @property
    def merges(self) -> list[str]:
        """The merge rules in order, as `"left right"` (a copy)."""
        return list(self._merges)

    @property
    def vocabulary_size(self) -> int:
        return self._size

    @property
    def add_bos(self) -> bool:
        return self._add_bos

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t["content"]: t["id"] for t in self._added if t["special"]}

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        if self._passes == (None, None):
            if self.normalizer is not None:
                strings = pre.normalize(_valid(strings), self.normalizer)
            return self._encode_text(strings)
        pieces, ids = self._split_added(strings)
        added = ids.flat_values >= 0
        text = self._encode_text(tf.where(added, "", pieces.flat_values))
        tokens = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(ids.flat_values, added), tf.cast(added, tf.int64)
        )
        merged = tf.concat([text, tokens], axis=1)
        return pieces.with_flat_values(merged).merge_dims(1, 2)

    def _split_added(self, strings: tf.Tensor):
        """Pieces `[B, None]` of normalized text and non-special added
        tokens, and their ids (-1 for text), as Hugging Face splits them."""
        ones = tf.ones_like(strings, tf.int64)
        pieces = tf.RaggedTensor.from_row_lengths(_valid(strings), ones)
        ids = tf.RaggedTensor.from_row_lengths(
            tf.fill(tf.shape(strings), -1), ones
        )
        raw, normalized = self._passes
        if raw is not None:
            pieces, ids = pre.split_added(pieces, ids, *raw)
        if self.normalizer is not None:
            text = pieces.flat_values
            text = tf.where(
                ids.flat_values < 0, pre.normalize(text, self.normalizer), text
            )
            pieces = pieces.with_flat_values(text)
        if normalized is not None:
            pieces, ids = pre.split_added(pieces, ids, *normalized)
        return pieces, ids

    def _encode_text(self, text: tf.Tensor) -> tf.RaggedTensor:
        """Ids of string `[N]`, int32 `[N, None]`."""
        words = pre.pretokenize(text, self.pretokenizer)
        ids = bpe_merges.encode_words(
            words.flat_values,
            self._byte_table,
            self._merge_tables,
            self._size,
            self._whole_words,
        )
        return words.with_flat_values(ids).merge_dims(1, 2)

    def _detokenize_batch(self, ids: tf.RaggedTensor) -> tf.Tensor:
        table = tf.constant(self._token_bytes.tolist(), tf.string)
        return tf.strings.reduce_join(tf.gather(table, ids), axis=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            vocabulary_file=VOCABULARY_FILE,
            merges_file=MERGES_FILE,
            pretokenizer=self.pretokenizer,
            normalizer=self.normalizer,
            ignore_merges=self.ignore_merges,
            add_bos=self._add_bos,
            added_tokens=[dict(t) for t in self._added],
        )
        return config

    def _save_assets(self, directory: str) -> None:
        for name, text in (
            (
                VOCABULARY_FILE,
                json.dumps(dict(self._vocabulary), ensure_ascii=False),
            ),
            (MERGES_FILE, "".join(f"{m}\n" for m in self._merges)),
        ):
            with open(
                os.path.join(directory, name), "w", encoding="utf-8"
            ) as f:
                f.write(text)

    @classmethod
    def _from_directory(cls, directory: str, config: dict[str, Any]):
        paths = [
            storage.asset_path(directory, config, key, name)
            for key, name in (
                ("vocabulary_file", VOCABULARY_FILE),
                ("merges_file", MERGES_FILE),
            )
        ]
        missing = [k for k in _CONFIG_KEYS if k not in config]
        if missing:
            raise errors.InputError(
                f"{os.path.join(directory, base.CONFIG_FILE)} lacks "
                f"{missing}. Restore it, or import the tokenizer again."
            )
        return cls(*paths, **{k: config[k] for k in _CONFIG_KEYS})


def _valid(strings: tf.Tensor) -> tf.Tensor:
    """Bytes that are not UTF-8 become U+FFFD."""
    return tf.strings.unicode_transcode(
        strings, "UTF-8", "UTF-8", errors="replace"
    )


def _merge_lines(text: str) -> list[str]:
    lines = text.splitlines()
    return [m for m in lines if m and not m.startswith("#version")]

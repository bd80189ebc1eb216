"""The tokenizer interface shared by every tflm tokenizer.

A tokenizer is a `tf.Module`: a SavedModel that holds one as an attribute
tracks its TensorFlow resources and asset file, and its `tokenize` and
`detokenize` run inside `tf.function` with core TensorFlow and TensorFlow Text
ops only.
"""

from __future__ import annotations

import json
import os
from typing import Any
from typing import ClassVar

import tensorflow as tf

from tflm import errors

CONFIG_FILE = "tokenizer.json"
FORMAT_VERSION = 1

_REGISTRY: dict[str, type[Tokenizer]] = {}


class Tokenizer(tf.Module):
    """Base class: text to int32 ids and back.

    Subclasses implement `_tokenize_batch` (string `[B]` to ragged int32
    `[B, None]`), `_detokenize_batch` (ragged ids, special ids already
    removed, to string `[B]`), the id properties (or an `_ids` dict with
    `pad_id`, `bos_id` and `eos_id`), `get_config`, and
    `_save_assets` / `_from_directory` for their files.

    Args:
        name: optional module name.
    """

    type_name: ClassVar[str] = ""
    # The files `_save_assets` writes, besides `tokenizer.json`.
    files: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _REGISTRY[cls.type_name] = cls

    @property
    def vocabulary_size(self) -> int:
        """Number of ids; every id is in `[0, vocabulary_size)`."""
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        """Id used for padding; never produced by `tokenize`."""
        return self._ids["pad_id"]

    @property
    def bos_id(self) -> int:
        """Start-of-text id; `tokenize` does not add it."""
        return self._ids["bos_id"]

    @property
    def eos_id(self) -> int:
        """End-of-text id, appended between documents by the pipeline."""
        return self._ids["eos_id"]

    @property
    def special_tokens(self) -> dict[str, int]:
        """Control tokens by their text (`"<|im_start|>"`, `"</s>"`), each
        one id; empty by default.

        `tokenize` never turns text into these ids: a literal
        `"<|im_start|>"` in a prompt is ordinary text, so user content cannot
        forge a control token. Chat templates place them by id.
        """
        return {}

    @property
    def add_bos(self) -> bool:
        """Whether a text prompt starts with `bos_id`, as the checkpoint's
        own tokenizer does (Llama 2's `add_bos_token`); `False` by default.
        `tokenize` itself never adds it."""
        return False

    @property
    def newline_is_boundary(self) -> bool:
        """Whether no token spans a `"\\n"`.

        When true, tokenizing a text line by line (each line keeping its
        newline) gives exactly the ids of tokenizing it whole, which lets the
        data pipeline tokenize long documents in parallel pieces.
        """
        return False

    @property
    def line_start_is_boundary(self) -> bool:
        """Whether a `"\\n"` followed by a character that is not
        whitespace always ends a token.

        When true, a long document can be tokenized in pieces cut at such
        points (`tflm data prepare` streams files this way) and give the ids
        of tokenizing it whole. True wherever `newline_is_boundary` is.
        """
        return self.newline_is_boundary

    def tokenize(self, inputs: Any) -> tf.Tensor | tf.RaggedTensor:
        """Turns text into ids, without adding start or end ids.

        Args:
            inputs: a Python `str`, a list of `str`, or a string tensor of
                rank 0 or 1.

        Returns:
            For a scalar, int32 ids `[T]`; for a vector, a `tf.RaggedTensor`
            of int32 ids `[B, None]`.
        """
        strings = tf.convert_to_tensor(inputs, dtype=tf.string)
        rank = strings.shape.rank
        if rank == 0:
            return self._tokenize_batch(tf.reshape(strings, [1])).flat_values
        if rank == 1:
            return self._tokenize_batch(strings)
        raise errors.InputError(
            "tokenize expects a string scalar or vector. "
            f"Received: shape={strings.shape}"
        )

    def detokenize(self, ids: Any) -> tf.Tensor:
        """Turns ids back into text, dropping pad, start and end ids.

        Ids outside `[0, vocabulary_size)` (say, sampled from an output layer
        padded to a round size) are dropped too, and ids that do not form
        valid UTF-8 never raise: see each tokenizer for what they give.

        Args:
            ids: int ids `[T]`, `[B, T]` or a `tf.RaggedTensor` `[B, None]`.

        Returns:
            A string scalar for `[T]` ids, else a string tensor `[B]`.
        """
        if isinstance(ids, tf.RaggedTensor):
            return self._detokenize_batch(self._drop_special(ids))
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise errors.InputError(
                f"ids must be integers. Received: {ids.dtype}"
            )
        if ids.shape.rank == 1:
            ragged = tf.RaggedTensor.from_tensor(ids[tf.newaxis])
            return self._detokenize_batch(self._drop_special(ragged))[0]
        if ids.shape.rank == 2:
            ragged = tf.RaggedTensor.from_tensor(ids)
            return self._detokenize_batch(self._drop_special(ragged))
        raise errors.InputError(
            "detokenize expects ids of rank 1 or 2. "
            f"Received: shape={ids.shape}"
        )

    def _drop_special(self, ids: tf.RaggedTensor) -> tf.RaggedTensor:
        ids = tf.cast(ids, tf.int32)
        keep = (
            (ids >= 0)
            & (ids < self.vocabulary_size)
            & tf.not_equal(ids, self.pad_id)
            & tf.not_equal(ids, self.bos_id)
            & tf.not_equal(ids, self.eos_id)
        )
        return tf.ragged.boolean_mask(ids, keep)

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        raise NotImplementedError

    def _detokenize_batch(self, ids: tf.RaggedTensor) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """JSON-safe settings written to `tokenizer.json` beside `type`."""
        return {
            "vocabulary_size": self.vocabulary_size,
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }

    def save(
        self, directory: str | os.PathLike, *, overwrite: bool = False
    ) -> str:
        """Writes the tokenizer to `directory` atomically; see
        `tflm.tokenizers.storage.save`."""
        from tflm.tokenizers import storage  # storage imports this module

        return storage.save(self, directory, overwrite=overwrite)

    def write_files(self, directory: str | os.PathLike) -> None:
        """Writes `tokenizer.json` and the tokenizer's files, in place.

        Not atomic: meant for a new folder that a caller moves into place
        whole (as `save` and model directories do).
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self._save_assets(directory)
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(tokenizer_config(self), f, indent=2, ensure_ascii=False)
            f.write("\n")

    def _save_assets(self, directory: str) -> None:
        """Writes the files other than `tokenizer.json`; none by default."""

    @classmethod
    def _from_directory(
        cls, directory: str, config: dict[str, Any]
    ) -> Tokenizer:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Loads a tokenizer written by `save`; see `load_tokenizer`."""
        tokenizer = load_tokenizer(directory)
        if not isinstance(tokenizer, cls):
            raise errors.InputError(
                f"{directory} holds a {type(tokenizer).__name__}, "
                f"not a {cls.__name__}."
            )
        return tokenizer


def registered_types() -> dict[str, type[Tokenizer]]:
    """The tokenizer classes by `type_name` (a copy)."""
    return dict(_REGISTRY)


def is_tokenizer_directory(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a `tokenizer.json`."""
    return os.path.isfile(os.path.join(os.fspath(directory), CONFIG_FILE))


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """What `tokenizer.json` holds: `type`, `format_version` and the
    tokenizer's `get_config()`."""
    config = {"type": tokenizer.type_name, "format_version": FORMAT_VERSION}
    config.update(tokenizer.get_config())
    return config


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Loads the tokenizer saved in `directory`, whatever its type.

    Args:
        directory: a folder written by `save`.

    Returns:
        The tokenizer named by the `type` field of its `tokenizer.json`.

    Raises:
        InputError: naming the file that is missing or corrupt.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise errors.InputError(
            f"{directory} is not a tokenizer directory: {CONFIG_FILE} is "
            "missing. Create one with `tflm tokenizer train`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errors.InputError(
            f"{path} is not valid JSON ({err}). Restore it, or train or "
            "import the tokenizer again."
        ) from None
    return from_config(directory, config, path)


def from_config(
    directory: str, config: dict[str, Any], source: str
) -> Tokenizer:
    """The tokenizer a `tokenizer_config` record describes, its files read
    from `directory`.

    Raises:
        InputError: naming `source`, for an unknown type or missing file.
    """
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in _REGISTRY:
        raise errors.InputError(
            f"{source}: unknown tokenizer type {kind!r}; expected one of "
            f"{sorted(_REGISTRY)}."
        )
    return _REGISTRY[kind]._from_directory(directory, config)

"""A SentencePiece tokenizer trained on the user's text, run in-graph."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

import sentencepiece
import tensorflow as tf
from tensorflow_text.python.ops import sentencepiece_tokenizer

from tflm import errors
from tflm.tokenizers import base
from tflm.tokenizers import sentencepiece_training as training
from tflm.tokenizers import storage

MODEL_FILE = "sentencepiece.model"
_OPS = sentencepiece_tokenizer.gen_sentencepiece_tokenizer


class _SentencepieceModel(tf.saved_model.experimental.TrackableResource):
    """The TF Text model resource, shared by name rather than kernel-owned.

    `tensorflow_text.SentencepieceTokenizer` keeps its model in a resource
    owned by the eager kernel that made it, and TensorFlow drops cached
    kernels whenever a global seed is set (`keras.utils.set_random_seed`),
    which deletes the model from under the tokenizer. A `shared_name` (the
    model's hash, so equal models share one resource) keeps it alive.
    """

    def __init__(self, model: bytes):
        super().__init__()
        self._model = model
        digest = hashlib.sha256(model).hexdigest()[:24]
        self._shared_name = f"tflm_sentencepiece_{digest}"
        _ = self.resource_handle  # Creates the resource now.

    def _create_resource(self):
        return _OPS.sentencepiece_op(
            model=self._model, shared_name=self._shared_name
        )


class SentencePieceTokenizer(base.Tokenizer):
    """SentencePiece (BPE or unigram) run with TensorFlow Text ops.

    Models from `train` use ids pad 0, unk 1, bos 2, eos 3, make `"\\n"` a
    piece of its own, fall back to UTF-8 bytes for any character outside
    the vocabulary (so no text is unknown), and apply no normalization, so
    that `detokenize(tokenize(text)) == text` for any text. A literal U+2581
    (SentencePiece's space marker) or U+E000 in the text is escaped with
    U+E000 before SentencePiece sees it and restored by `detokenize`.
    Byte pieces that do not form valid UTF-8 (a character cut in half)
    detokenize to one U+FFFD per byte.

    The serialized model is part of the TensorFlow graph, so a SavedModel
    that tracks this tokenizer needs only `tensorflow_text` to run it; the
    `.model` file is also tracked as `model_file` (a `tf.saved_model.Asset`)
    when the tokenizer was loaded from a file (else `model_file` is None).

    Args:
        model: the serialized model proto, or the path of a `.model` file.
        name: optional module name.

    Example:
    >>> tokenizer = SentencePieceTokenizer.train(
    ...     texts=["hello world\\n"] * 50, vocabulary_size=280)
    >>> ids = tokenizer.tokenize(["hello 世界"])
    >>> tokenizer.detokenize(ids).numpy()[0].decode()
    'hello 世界'
    """

    type_name = "sentencepiece"
    files = (MODEL_FILE,)

    def __init__(
        self, model: bytes | str | os.PathLike, name: str | None = None
    ):
        super().__init__(name=name)
        self.model_file = None
        source = "the model proto"
        if isinstance(model, str | os.PathLike):
            source = os.fspath(model)
            with open(model, "rb") as f:
                self._model = f.read()
            self.model_file = tf.saved_model.Asset(source)
        else:
            self._model = bytes(model)
        processor = _processor(self._model, source)
        self._vocabulary_size = processor.get_piece_size()
        self._ids = {
            "pad_id": processor.pad_id(),
            "unk_id": processor.unk_id(),
            "bos_id": processor.bos_id(),
            "eos_id": processor.eos_id(),
        }
        self._newline_is_boundary = _newline_is_boundary(processor)
        self._resource = _SentencepieceModel(self._model)

    @classmethod
    def train(
        cls,
        paths_or_files: Iterable[training.Source] = (),
        *,
        texts: Iterable[str] | None = None,
        vocabulary_size: int = 8192,
        model_type: str = "bpe",
        character_coverage: float = 0.9995,
        input_sentence_size: int = 1_000_000,
        max_sentence_chars: int = 2048,
        num_threads: int | None = None,
        seed: int = 0,
    ) -> SentencePieceTokenizer:
        """Trains a tokenizer in memory; nothing is written to disk.

        Text is read line by line (invalid UTF-8 is replaced with U+FFFD),
        lines longer than `max_sentence_chars` are cut, and at most
        `input_sentence_size` lines, sampled at random, are used.

        Args:
            paths_or_files: text file paths or open text files.
            texts: more text, for example documents read from `.jsonl`.
            vocabulary_size: number of ids, at least about 300 (256 byte
                pieces, the special pieces and the text's characters).
            model_type: `"bpe"` or `"unigram"`.
            character_coverage: share of characters that get their own
                piece; the rest fall back to bytes. 0.9995 suits Chinese.
            input_sentence_size: most lines to train on.
            max_sentence_chars: longer lines are cut into pieces this long.
            num_threads: training threads; defaults to the CPU count.
            seed: seed for sampling lines.

        Returns:
            The trained tokenizer.
        """
        proto = training.train_model_proto(
            paths_or_files,
            texts,
            vocabulary_size=vocabulary_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            max_sentence_chars=max_sentence_chars,
            num_threads=num_threads,
            seed=seed,
        )
        return cls(proto)

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._model

    @property
    def vocabulary_size(self) -> int:
        return self._vocabulary_size

    @property
    def pad_id(self) -> int:
        return self._ids["pad_id"]

    @property
    def unk_id(self) -> int:
        """Id of unknown pieces; byte fallback means text never needs it."""
        return self._ids["unk_id"]

    @property
    def bos_id(self) -> int:
        return self._ids["bos_id"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos_id"]

    @property
    def newline_is_boundary(self) -> bool:
        return self._newline_is_boundary

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        strings = tf.strings.regex_replace(
            strings, training.ESCAPE, training.ESCAPE * 2
        )
        strings = tf.strings.regex_replace(
            strings, training.META, training.ESCAPE + training.ESCAPED_META
        )
        values, row_splits = _OPS.sentencepiece_tokenize_op(
            self._resource.resource_handle,
            strings,
            nbest_size=0,
            alpha=1.0,
            add_bos=False,
            add_eos=False,
            reverse=False,
            out_type=tf.int32,
            return_nbest=False,
        )
        return tf.RaggedTensor.from_row_splits(
            values, row_splits, validate=False
        )

    def _detokenize_batch(self, ids: tf.RaggedTensor) -> tf.Tensor:
        text = _OPS.sentencepiece_detokenize_op(
            self._resource.resource_handle,
            ids.flat_values,
            ids.row_splits,
            add_bos=False,
            add_eos=False,
            reverse=False,
        )
        # Every escape pair is matched left to right: E E -> E M, E X -> M,
        # where M is U+2581; then the E M left by E E become E.
        esc, meta = training.ESCAPE, training.META
        text = tf.strings.regex_replace(
            text, f"{esc}(?:({esc})|{training.ESCAPED_META})", rf"\1{meta}"
        )
        return tf.strings.regex_replace(text, esc + meta, esc)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(unk_id=self.unk_id, model_file=MODEL_FILE)
        return config

    def _save_assets(self, directory: str) -> None:
        path = os.path.join(directory, MODEL_FILE)
        with open(path, "wb") as f:
            f.write(self._model)

    @classmethod
    def _from_directory(cls, directory: str, config: dict[str, Any]):
        return cls(
            storage.asset_path(directory, config, "model_file", MODEL_FILE)
        )


def _processor(model: bytes, source: str):
    """A `SentencePieceProcessor`; InputError if `model` is not a model."""
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, ValueError, TypeError) as err:
        processor, reason = None, err
    if processor is None or processor.get_piece_size() == 0:
        reason = reason if processor is None else "it has no pieces"
        raise errors.InputError(
            f"{source} is not a SentencePiece model ({reason}). Restore it, "
            "or train the tokenizer again with `tflm tokenizer train`."
        )
    return processor


def _newline_is_boundary(processor) -> bool:
    """Whether `"\\n"` is a piece and no other piece contains it."""
    newline_id = processor.piece_to_id(training.NEWLINE)
    if newline_id == processor.unk_id():
        return False
    return not any(
        training.NEWLINE in processor.id_to_piece(i)
        for i in range(processor.get_piece_size())
        if i != newline_id
    )

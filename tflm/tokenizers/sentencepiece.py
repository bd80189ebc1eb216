"""A SentencePiece tokenizer trained on the user's text, run in-graph."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

import tensorflow as tf
from tensorflow_text.python.ops import sentencepiece_tokenizer

from tflm.tokenizers import base
from tflm.tokenizers import sentencepiece_import as hf_import
from tflm.tokenizers import sentencepiece_model as model_lib
from tflm.tokenizers import sentencepiece_training as training
from tflm.tokenizers import storage

MODEL_FILE = "sentencepiece.model"
_OPS = sentencepiece_tokenizer.gen_sentencepiece_tokenizer
_ID_KEYS = ("pad_id", "bos_id", "eos_id")
_TRAIN_AGAIN = (
    "Restore it, or train the tokenizer again with `tflm tokenizer train`."
)


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

    A published model (`from_huggingface`) runs as transformers'
    `LlamaTokenizer` runs it: no escape, no normalization, and the
    `prepend_scheme` space rule instead of SentencePiece's dummy prefix.

    The serialized model is part of the TensorFlow graph, so a SavedModel
    that tracks this tokenizer needs only `tensorflow_text` to run it; the
    `.model` file is also tracked as `model_file` (a `tf.saved_model.Asset`)
    when the tokenizer was loaded from a file (else `model_file` is None).

    Args:
        model: the serialized model proto, or the path of a `.model` file.
        name: optional module name.
        escape: escape U+2581 and U+E000 as above (tflm's own models);
            `False` gives the text to SentencePiece as it is.
        prepend_scheme: `None` runs the model as `sentencepiece` does (its
            normalizer and dummy prefix). Else transformers' rule: the
            model runs without normalization or dummy prefix, and a space
            is put before a text that does not start with `" "` or U+2581:
            `"first"` at the start of a text, `"always"` also after a
            special token (`tokenize_after_special`), `"never"` nowhere.
            `detokenize` then drops one leading space, as transformers does.
        add_bos: the `add_bos` property; `tokenize` never adds it.
        add_eos: the `add_eos` property; `tokenize` never adds it.
        special_tokens: control tokens by text, each an id; default none.
        pad_id: defaults to the model's pad piece.
        bos_id: defaults to the model's bos piece.
        eos_id: defaults to the model's eos piece.

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
        self,
        model: bytes | str | os.PathLike,
        name: str | None = None,
        *,
        escape: bool = True,
        prepend_scheme: str | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        special_tokens: dict[str, int] | None = None,
        pad_id: int | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
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
        processor = model_lib.load_processor(self._model, source, _TRAIN_AGAIN)
        self._vocabulary_size = processor.get_piece_size()
        self._settings = model_lib.check_options(
            escape=escape,
            prepend_scheme=prepend_scheme,
            add_bos=add_bos,
            add_eos=add_eos,
        )
        size = self._vocabulary_size
        self._special_tokens = model_lib.check_ids(
            special_tokens or {}, size, "special_tokens"
        )
        given = zip(_ID_KEYS, (pad_id, bos_id, eos_id), strict=True)
        ids = model_lib.check_ids(
            {key: value for key, value in given if value is not None},
            size,
            "pad_id, bos_id and eos_id",
        )
        for key in ("pad_id", "unk_id", "bos_id", "eos_id"):
            ids.setdefault(key, getattr(processor, key)())
        self._ids = ids  # Complete before tf.Module starts tracking it.
        run = self._model
        if prepend_scheme is not None:
            run = model_lib.transformers_model(run)
        # A space put before each line would break line-by-line tokenizing.
        self._newline_is_boundary = _newline_is_boundary(processor) and (
            prepend_scheme in (None, "never")
            and not model_lib.adds_dummy_prefix(run)
        )
        self._resource = _SentencepieceModel(run)

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
    def unk_id(self) -> int:
        """Id of unknown pieces; byte fallback means text never needs it."""
        return self._ids["unk_id"]

    @property
    def newline_is_boundary(self) -> bool:
        return self._newline_is_boundary

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def add_bos(self) -> bool:
        return self._settings["add_bos"]

    @property
    def add_eos(self) -> bool:
        """Whether the checkpoint's own tokenizer ends a text with `eos_id`
        (`add_eos_token`); `tokenize` itself never adds it."""
        return self._settings["add_eos"]

    @property
    def escape(self) -> bool:
        return self._settings["escape"]

    @property
    def prepend_scheme(self) -> str | None:
        return self._settings["prepend_scheme"]

    @classmethod
    def from_huggingface(
        cls, directory: str | os.PathLike
    ) -> SentencePieceTokenizer:
        """Reads the tokenizer of a transformers checkpoint folder (Llama 2,
        Mistral, TinyLlama): `tokenizer.model`, `tokenizer_config.json`
        when present, and `config.json`'s `model_type` when present.

        `tokenize` gives transformers' ids for `add_special_tokens=False`;
        `add_bos` is the config's `add_bos_token`. Where transformers
        differs from `sentencepiece`, and how ids, `pad_id` and
        `special_tokens` are chosen: see `tflm.tokenizers.sentencepiece_import`.

        Raises:
            InputError: `tokenizer.model` is missing, corrupt, or not a
                byte-fallback BPE model without user-defined pieces; the
                config names another class or adds tokens that are not
                pieces of the model (tflm cannot give them ids in-graph).
        """
        path, arguments = hf_import.huggingface_arguments(directory)
        return cls(path, **arguments)

    def tokenize_after_special(self, inputs: Any) -> tf.RaggedTensor:
        """`tokenize` for template text that follows a special token, as
        transformers tokenizes it: no space is put before it for
        `prepend_scheme` `"first"` (`legacy: false`) or `"never"`, the same
        as at the start for `"always"` or `None`. String `[B]` to ragged
        ids."""
        return self._encode(tf.convert_to_tensor(inputs, tf.string), False)

    def _tokenize_batch(self, strings: tf.Tensor) -> tf.RaggedTensor:
        return self._encode(strings, start=True)

    def _encode(self, strings: tf.Tensor, start: bool) -> tf.RaggedTensor:
        if self.escape:
            strings = tf.strings.regex_replace(
                strings, training.ESCAPE, training.ESCAPE * 2
            )
            strings = tf.strings.regex_replace(
                strings, training.META, training.ESCAPE + training.ESCAPED_META
            )
        scheme = self.prepend_scheme
        if scheme == "always" or (scheme == "first" and start):
            strings = model_lib.prepend_space(strings)
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
        if self.prepend_scheme in ("first", "always"):
            text = tf.strings.regex_replace(text, "^ ", "")
        if not self.escape:
            return text
        # Every escape pair is matched left to right: E E -> E M, E X -> M,
        # where M is U+2581; then the E M left by E E become E.
        esc, meta = training.ESCAPE, training.META
        text = tf.strings.regex_replace(
            text, f"{esc}(?:({esc})|{training.ESCAPED_META})", rf"\1{meta}"
        )
        return tf.strings.regex_replace(text, esc + meta, esc)

    def get_config(self) -> dict[str, Any]:
        """The base ids, `unk_id`, `model_file`, and each other argument
        that differs from its default (so a tflm-trained model's config is
        unchanged)."""
        config = super().get_config()
        config.update(unk_id=self.unk_id, model_file=MODEL_FILE)
        config.update(
            (key, value)
            for key, value in self._settings.items()
            if value != model_lib.DEFAULTS[key]
        )
        if self._special_tokens:
            config["special_tokens"] = dict(self._special_tokens)
        return config

    def _save_assets(self, directory: str) -> None:
        path = os.path.join(directory, MODEL_FILE)
        with open(path, "wb") as f:
            f.write(self._model)

    @classmethod
    def _from_directory(cls, directory: str, config: dict[str, Any]):
        path = storage.asset_path(directory, config, "model_file", MODEL_FILE)
        keys = (*model_lib.DEFAULTS, "special_tokens", *_ID_KEYS)
        return cls(path, **{key: config[key] for key in keys if key in config})


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

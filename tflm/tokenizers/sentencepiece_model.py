"""A SentencePiece model as tflm runs it: its options checked, the model
edited to run as transformers' `LlamaTokenizer` runs it, and transformers'
`Metaspace` space put in-graph (see `sentencepiece_import` for why)."""

from __future__ import annotations

from typing import Any

import sentencepiece
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2

from tflm import errors

PREPEND_SCHEMES = ("first", "always", "never")

DEFAULTS = {
    "escape": True,
    "prepend_scheme": None,
    "add_bos": False,
    "add_eos": False,
}


def check_options(**options: Any) -> dict[str, Any]:
    """`options` (`DEFAULTS`' keys) if each has a valid value."""
    for key, value in options.items():
        if key == "prepend_scheme":
            expected = f"None or one of {PREPEND_SCHEMES}"
            ok = value is None or value in PREPEND_SCHEMES
        else:
            expected, ok = "True or False", isinstance(value, bool)
        if not ok:
            raise errors.InputError(
                f"{key} must be {expected}. Received: {key}={value!r}"
            )
    return options


def check_ids(ids: Any, size: int, what: str) -> dict[str, int]:
    """A copy of `ids` if it maps strings to ids in `[0, size)`."""
    bad = (
        {
            key: value
            for key, value in ids.items()
            if not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value < size
        }
        if isinstance(ids, dict)
        else ids
    )
    if bad:
        raise errors.InputError(
            f"{what} must be ids in [0, {size}) (the model's pieces), by "
            f"name. Received: {bad!r}"
        )
    return dict(ids)


def load_processor(model: bytes, source: str, fix: str):
    """A `SentencePieceProcessor` for `model`.

    Raises:
        InputError: `model` is not a SentencePiece model; the message ends
            with `fix`.
    """
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, ValueError, TypeError) as err:
        processor, reason = None, err
    if processor is None or processor.get_piece_size() == 0:
        reason = reason if processor is None else "it has no pieces"
        raise errors.InputError(
            f"{source} is not a SentencePiece model ({reason}). {fix}"
        )
    return processor


def transformers_model(model: bytes) -> bytes:
    """`model` as transformers' `LlamaTokenizer` runs it: no normalizer, no
    removal of extra whitespace and no dummy prefix (the space prefix is
    then added in-graph, by the `prepend_scheme` rule)."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(model)
    spec = proto.normalizer_spec
    spec.name = "identity"
    spec.precompiled_charsmap = b""
    spec.add_dummy_prefix = False
    spec.remove_extra_whitespaces = False
    spec.escape_whitespaces = True
    return proto.SerializeToString()


def adds_dummy_prefix(model: bytes) -> bool:
    """Whether SentencePiece puts a space before every text it encodes."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(model)
    return proto.normalizer_spec.add_dummy_prefix


def prepend_space(strings: tf.Tensor) -> tf.Tensor:
    """A space before each non-empty string that does not start with a
    space or U+2581: transformers' `Metaspace` prepend rule, in-graph."""
    first = tf.strings.substr(strings, 0, 1)
    keep = (
        tf.equal(first, "")
        | tf.equal(first, " ")
        | tf.equal(tf.strings.substr(strings, 0, 3), "\u2581")
    )
    return tf.where(keep, strings, tf.strings.join([" ", strings]))

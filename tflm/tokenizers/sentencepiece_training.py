"""Training a SentencePiece model proto from text, entirely in memory.

Nothing is written to disk: sentences stream from the sources through an
iterator, and the trained model comes back as bytes.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable
from collections.abc import Iterator
from typing import IO

import sentencepiece

from tflm import errors

logger = logging.getLogger(__name__)

# U+2581 is SentencePiece's whitespace marker, so a literal one in the text
# would come back as a space. Text is escaped before SentencePiece sees it:
# U+E000 -> U+E000 U+E000, then U+2581 -> U+E000 U+E001.
META = "\u2581"
ESCAPE = "\ue000"
ESCAPED_META = "\ue001"

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE = "\n"
MODEL_TYPES = ("bpe", "unigram")

Source = str | os.PathLike | IO[str]

# Options every tflm model is trained with: byte fallback so that no text is
# unknown, no normalization and "\n" as a piece so that text round-trips
# exactly, and quiet logs.
FIXED_OPTIONS = {
    "byte_fallback": True,
    "pad_id": PAD_ID,
    "unk_id": UNK_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "user_defined_symbols": [NEWLINE],
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "allow_whitespace_only_pieces": True,
    "shuffle_input_sentence": True,
    "minloglevel": 2,
}


def escape(text: str) -> str:
    """Applies the U+2581 escape used by `SentencePieceTokenizer`."""
    return text.replace(ESCAPE, ESCAPE + ESCAPE).replace(
        META, ESCAPE + ESCAPED_META
    )


class _SentenceStream:
    """Yields escaped lines, cut to at most `max_chars` characters."""

    def __init__(
        self,
        sources: Iterable[Source],
        texts: Iterable[str] | None,
        max_chars: int,
    ):
        self.sources = list(sources)
        self.texts = texts
        self.max_chars = max_chars
        self.count = 0

    def _lines(self) -> Iterator[str]:
        for source in self.sources:
            if isinstance(source, str | os.PathLike):
                with open(
                    source, encoding="utf-8", errors="replace", newline="\n"
                ) as f:
                    yield from f
            else:
                yield from source
        for text in self.texts or ():
            yield from text.split(NEWLINE)

    def __iter__(self) -> Iterator[str]:
        for line in self._lines():
            line = escape(line.rstrip(NEWLINE))
            for start in range(0, len(line), self.max_chars):
                self.count += 1
                yield line[start : start + self.max_chars]


def train_model_proto(
    sources: Iterable[Source],
    texts: Iterable[str] | None,
    *,
    vocabulary_size: int,
    model_type: str,
    character_coverage: float,
    input_sentence_size: int,
    max_sentence_chars: int,
    num_threads: int | None,
    seed: int,
) -> bytes:
    """Trains a model and returns its serialized proto; see `train`."""
    if not isinstance(vocabulary_size, int) or vocabulary_size < 1:
        raise errors.InputError(
            "vocabulary_size must be a positive number of ids (at least "
            f"about 300). Received: vocabulary_size={vocabulary_size!r}."
        )
    if model_type not in MODEL_TYPES:
        raise errors.InputError(
            f"model_type must be one of {MODEL_TYPES}. "
            f"Received: model_type={model_type!r}"
        )
    stream = _SentenceStream(sources, texts, max_sentence_chars)
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(seed)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(stream),
            model_writer=model,
            vocab_size=vocabulary_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            max_sentence_length=4 * max_sentence_chars,
            num_threads=num_threads or min(os.cpu_count() or 1, 16),
            **FIXED_OPTIONS,
        )
    except RuntimeError as err:
        raise _explain(err, stream, vocabulary_size) from None
    if not stream.count:
        raise errors.InputError(_empty_message(stream))
    logger.debug("trained on %d sentences", stream.count)
    return model.getvalue()


def _names(stream: _SentenceStream) -> str:
    names = [
        os.fspath(s) if isinstance(s, str | os.PathLike) else repr(s)
        for s in stream.sources
    ]
    if stream.texts is not None:
        names.append("the given texts")
    return ", ".join(names) or "no sources"


def _empty_message(stream: _SentenceStream) -> str:
    return (
        f"no text to train a tokenizer on: {_names(stream)} "
        "contain no non-empty line. Point --data at text files."
    )


def _explain(
    err: RuntimeError, stream: _SentenceStream, vocabulary_size: int
) -> errors.InputError:
    """Turns SentencePiece's internal errors into a message with a fix."""
    text = str(err)
    if not stream.count:
        return errors.InputError(_empty_message(stream))
    too_high = re.search(r"value <= (\d+)", text)
    if too_high:
        return errors.InputError(
            f"vocabulary_size={vocabulary_size} is more than the text in "
            f"{_names(stream)} supports (at most {too_high.group(1)}). Pass a "
            "smaller --vocabulary-size or train on more text."
        )
    too_low = re.search(r"required_chars\. (\d+) vs (\d+)", text)
    if too_low:
        return errors.InputError(
            f"vocabulary_size={vocabulary_size} is too small for "
            f"{_names(stream)}: it needs at least {too_low.group(2)} ids "
            "(256 byte pieces, 5 special pieces and the characters that "
            "cover the text). Pass a larger --vocabulary-size (in tflm "
            "train: a larger N in --tokenizer sentencepiece:N)."
        )
    return errors.InputError(f"SentencePiece training failed: {text}")

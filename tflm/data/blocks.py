"""Reading a corpus in blocks, and tokenizing them, for `tflm data prepare`.

A text file is read in blocks of about `BLOCK_BYTES`, each cut where the
tokenizer gives the same ids to the pieces as to the whole (after a
newline, see `Tokenizer.line_start_is_boundary`); a `.jsonl` file a block
of records at a time. Blocks are tokenized by a `tf.data` map over all
cores (in order), with `eos_id` after each document, exactly as the
in-memory pipeline (`tflm.data.pipeline.token_stream`) tokenizes the same
files. A block starts where an earlier one ended, so the ids from a
block's start do not depend on how the blocks after it are cut.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tflm.data import corpus
from tflm.data import files as files_lib
from tflm.data import jsonl
from tflm.data import tokens
from tflm.tokenizers import base

logger = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20
_BLOCKS_IN_FLIGHT = 8

BLANK = re.compile(rb"[\t\n\f\r ]*")
# Unicode White_Space in UTF-8 (what `\s` means to GPT-2's pattern).
_WHITE = (
    rb"[\t\n\x0b\f\r ]", rb"\xc2[\x85\xa0]", rb"\xe1\x9a\x80",
    rb"\xe2\x80[\x80-\x8a\xa8\xa9\xaf]", rb"\xe2\x81\x9f", rb"\xe3\x80\x80",
)  # fmt: skip
# A newline with text on both sides (read far enough to see the next
# character whole): a whitespace run around a newline pre-tokenizes
# differently at the end of a piece than before text (GPT-2: "\n\n" is one
# token at the end, two before a word).
_LONE_NEWLINE = re.compile(
    b"".join(rb"(?<!" + w + rb")" for w in _WHITE)
    + rb"\n(?=[\x00-\xff]{3})(?!" + rb"|".join(_WHITE) + rb")"
)  # fmt: skip


class Block(NamedTuple):
    """A piece of the corpus: the index of its file, the byte offset where
    it starts, its texts, and which of them end a document."""

    file: int
    offset: int
    texts: list
    ends: list


def cut_pattern(text_format: str, tokenizer: base.Tokenizer):
    """Where a text file may be cut: after the match."""
    if text_format == "line":
        return re.compile(rb"\n")
    if text_format == "paragraph":
        # A whole blank-line break, followed by text.
        return re.compile(rb"\n[\t\n\f\r ]*\n(?=[^\t\n\f\r ])")
    if tokenizer.newline_is_boundary:
        return re.compile(rb"\n")
    if tokenizer.line_start_is_boundary:
        return _LONE_NEWLINE
    return None  # Documents are tokenized whole.


def _text_blocks(
    index: int, path: str, offset: int, text_format: str, cut
) -> Iterator[Block]:
    """Blocks of a text file from byte `offset`, each cut after the last
    match of `cut` in about `BLOCK_BYTES` (longer where none matches)."""
    size = os.path.getsize(path)
    document = text_format == "document"
    if document and offset == 0 and _blank_file(path):
        return  # A blank file is no document.
    if cut is None and size - offset >= _WHOLE_WARNING_BYTES:
        _warn_whole(
            path, "this tokenizer cannot tokenize a text in pieces. Prepare"
        )
    warned = False
    with open(path, "rb") as f:
        f.seek(offset)
        pending = b""
        while True:
            want = BLOCK_BYTES if cut is not None else size
            data = pending + f.read(max(want - len(pending), len(pending)))
            at_end = f.tell() >= size
            if not at_end:
                last = _last_match(cut, data)
                if last is None:  # No cut yet: read on.
                    if not warned and len(data) >= _WHOLE_WARNING_BYTES:
                        warned = True
                        _warn_whole(path, _NO_CUT[text_format])
                    pending = data
                    continue
                data, pending = data[: last.end()], data[last.end() :]
            if data or (document and at_end):
                ends = [at_end] if document else [True]
                yield Block(index, offset, [data], ends)
            offset += len(data)
            if at_end:
                return


_WHOLE_WARNING_BYTES = 64 << 20
_NO_CUT = {
    "document": "none of its newlines has text on both sides (as in files "
    "with Windows line ends), where this tokenizer allows a cut. Convert "
    "Windows line ends (`dos2unix`), or prepare",
    "paragraph": "it has no blank line. Prepare",
    "line": "it has no newline. Prepare",
}


def _warn_whole(path: str, why: str) -> None:
    logger.warning(
        "%s is read as one piece of 64 MB or more, because %s with "
        "--text-format line or paragraph where the text allows: memory "
        "grows with the piece.",
        path,
        why,
    )


def _blank_file(path: str) -> bool:
    """Whether a file holds only whitespace (read until it does not)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if not BLANK.fullmatch(chunk):
                return False
    return True


def _last_match(cut, data: bytes):
    """The last match of `cut` in `data` (looked for in its second half
    first), or None."""
    if cut is None:
        return None
    for start in (len(data) // 2, 0):
        found = None
        for found in cut.finditer(data, start):  # noqa: B007
            pass
        if found is not None:
            return found
    return None


def _jsonl_blocks(
    index: int, path: str, offset: int, field: str, text_format: str
) -> Iterator[Block]:
    """Blocks of `.jsonl` records from byte `offset`, each record's text
    one piece."""
    with open(path, "rb") as f:
        f.seek(offset)
        line_number = _line_at(path, offset)
        texts: list[bytes] = []
        start, size = offset, 0
        for raw in f:
            line_number += 1
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise files_lib.not_utf8(
                    path, line_number, offset + err.start
                ) from None
            offset += len(raw)
            if line.strip():
                record = jsonl._parse(line, where)
                text = jsonl._field_text(record, field, where).encode()
                if text_format != "document" or not BLANK.fullmatch(text):
                    texts.append(text)
                    size += len(text)
            if size >= BLOCK_BYTES:
                yield Block(index, start, texts, [True] * len(texts))
                texts, start, size = [], offset, 0
        if texts:
            yield Block(index, start, texts, [True] * len(texts))


def _line_at(path: str, offset: int) -> int:
    """Lines before byte `offset` (for messages on resumed runs)."""
    if not offset:
        return 0
    count = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0:
            block = f.read(min(left, 1 << 22))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def read_blocks(
    files: Sequence[str],
    start: tuple[int, int],
    text_format: str,
    field: str,
    tokenizer: base.Tokenizer,
) -> Iterator[Block]:
    cut = cut_pattern(text_format, tokenizer)
    for index, path in enumerate(files):
        if index < start[0]:
            continue
        offset = start[1] if index == start[0] else 0
        if path.endswith(".jsonl"):
            yield from _jsonl_blocks(index, path, offset, field, text_format)
        else:
            yield from _text_blocks(index, path, offset, text_format, cut)


def ordered(files: Sequence[str]) -> list[str]:
    """Text files first, then `.jsonl` files, as the in-memory pipeline
    reads them."""
    texts = [f for f in files if not f.endswith(".jsonl")]
    return texts + [f for f in files if f.endswith(".jsonl")]


def tokenized(
    blocks: Iterator[Block],
    tokenizer: base.Tokenizer,
    text_format: str,
    threads: int | None = None,
) -> Iterator[tuple[Block, np.ndarray]]:
    """Each block with its token ids, tokenized in parallel, in order."""
    held: dict[int, Block] = {}

    failed: list[BaseException] = []

    def numbered():
        # An error here (a bad `.jsonl` line) would reach the caller as a
        # TensorFlow error: it is kept and raised as itself below.
        try:
            for number, block in enumerate(blocks):
                held[number] = block
                yield number, block.texts, block.ends
        except Exception as err:  # noqa: BLE001 - re-raised below.
            failed.append(err)

    dataset = tf.data.Dataset.from_generator(
        numbered,
        output_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None], tf.string),
            tf.TensorSpec([None], tf.bool),
        ),
    )
    document = text_format == "document"

    def tokenize(number, texts, ends):
        if not document:
            # Each piece (a `.jsonl` record, or a block of whole lines or
            # paragraphs) splits into documents, each ending in eos.
            texts = corpus.split_texts(texts, text_format)
            ends = tf.ones_like(texts, tf.bool)
        if tokenizer.newline_is_boundary:
            texts, ends = tokens.split_lines(texts, ends)
        return number, tokens.tokenize_pieces(texts, ends, tokenizer)

    dataset = dataset.map(
        tokenize,
        num_parallel_calls=threads or tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(_BLOCKS_IN_FLIGHT)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        dataset = dataset.with_options(options)
    for number, ids in dataset.as_numpy_iterator():
        yield held.pop(int(number)), ids
    if failed:
        raise failed[0]

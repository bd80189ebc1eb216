"""Training a SentencePiece tokenizer on the files a user names.

Plain text files are streamed to SentencePiece by line; `.jsonl` files are
split into documents first (`text_format`, `jsonl_field`), as the data
pipeline reads them.
"""

from __future__ import annotations

from collections.abc import Sequence

from tflm import tokenizers
from tflm.data import corpus
from tflm.data import files as files_lib

SAMPLE_CHARS = 1_000_000


def train_sentencepiece(
    paths: str | Sequence[str],
    *,
    vocabulary_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    text_format: str = "document",
    jsonl_field: str = "text",
) -> tokenizers.SentencePieceTokenizer:
    """Trains a byte-fallback SentencePiece tokenizer on `paths`.

    Args:
        paths: files, folders or globs of `.txt` and `.jsonl`.
        vocabulary_size: number of ids, special ones included.
        model_type: `"bpe"` or `"unigram"`.
        character_coverage: share of characters that get their own piece;
            the rest fall back to bytes.
        text_format: how `.jsonl` records are split into documents.
        jsonl_field: the text field of `.jsonl` records.

    Raises:
        InputError: no file matches, a file is not UTF-8, or the vocabulary
            size does not fit the text.
    """
    files = files_lib.find_files(paths)
    text_files = [f for f in files if not f.endswith(".jsonl")]
    jsonl_files = [f for f in files if f.endswith(".jsonl")]
    for path in text_files:
        corpus.check_utf8(path)
    records = None
    if jsonl_files:
        records = corpus.iter_documents(jsonl_files, text_format, jsonl_field)
    return tokenizers.SentencePieceTokenizer.train(
        text_files,
        texts=records,
        vocabulary_size=vocabulary_size,
        model_type=model_type,
        character_coverage=character_coverage,
    )


def characters_per_token(
    tokenizer: tokenizers.Tokenizer,
    paths: str | Sequence[str],
    jsonl_field: str = "text",
    max_chars: int = SAMPLE_CHARS,
) -> tuple[float, int]:
    """(characters per token, characters read) over the start of `paths`."""
    sample = corpus.sample_texts(
        files_lib.find_files(paths), max_chars, jsonl_field
    )
    ratio = tokenizers.chars_per_token(tokenizer, sample)
    return ratio, sum(len(text) for text in sample)

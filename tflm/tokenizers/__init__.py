"""Tokenizers: text to int32 ids and back, in-graph."""

from tflm.tokenizers.base import Tokenizer
from tflm.tokenizers.base import is_tokenizer_directory
from tflm.tokenizers.base import load_tokenizer
from tflm.tokenizers.bpe import BPETokenizer
from tflm.tokenizers.byte import ByteTokenizer
from tflm.tokenizers.gpt2_bpe import GPT2BPETokenizer
from tflm.tokenizers.sentencepiece import SentencePieceTokenizer
from tflm.tokenizers.stats import chars_per_token
from tflm.tokenizers.storage import save

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "GPT2BPETokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "chars_per_token",
    "is_tokenizer_directory",
    "load_tokenizer",
    "save",
]

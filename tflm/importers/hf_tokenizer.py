"""The tokenizer of a Hugging Face checkpoint directory, as a tflm one.

Byte-level BPE from `tokenizer.json` (Llama 3, Qwen2, SmolLM2) comes
first; a SentencePiece `tokenizer.model` (Llama 2, Mistral, TinyLlama)
next, which those checkpoints ship beside a `tokenizer.json` that holds the
same model in another form; GPT-2's `vocab.json` + `merges.txt` last.
"""

from __future__ import annotations

import os

from tflm import errors
from tflm import tokenizers
from tflm.tokenizers import hf_files

HF_TOKENIZER_FILE = hf_files.TOKENIZER_FILE
SENTENCEPIECE_FILE = hf_files.SENTENCEPIECE_FILE


def _is_byte_level_bpe(config: dict) -> bool:
    model = config.get("model") or {}
    text = repr(config.get("pre_tokenizer")) + repr(config.get("decoder"))
    return model.get("type") == "BPE" and "ByteLevel" in text


def load(directory: str) -> tokenizers.Tokenizer:
    """The checkpoint's tokenizer, run in-graph.

    Raises:
        InputError: no tokenizer file tflm reads, or one of a kind tflm
            cannot run (named).
    """
    own = recorded(directory)
    if own is not None:
        return own
    hf_path = os.path.join(directory, HF_TOKENIZER_FILE)
    spm_path = os.path.join(directory, SENTENCEPIECE_FILE)
    if os.path.isfile(hf_path):
        config = hf_files.read_json(hf_path)
        if _is_byte_level_bpe(config) or not os.path.isfile(spm_path):
            return tokenizers.BPETokenizer.from_huggingface(directory)
    if os.path.isfile(spm_path):
        return tokenizers.SentencePieceTokenizer.from_huggingface(directory)
    if os.path.isfile(os.path.join(directory, "vocab.json")):
        return tokenizers.GPT2BPETokenizer.from_directory(directory)
    raise errors.InputError(
        f"{directory} holds no tokenizer tflm reads: {HF_TOKENIZER_FILE} "
        f"(byte-level BPE), {SENTENCEPIECE_FILE} (SentencePiece) or "
        "vocab.json + merges.txt. Download the checkpoint's tokenizer files."
    )


def recorded(directory: str) -> tokenizers.Tokenizer | None:
    """The tokenizer `tflm export` recorded in `tokenizer_config.json`
    (byte and SentencePiece tokenizers, which transformers runs through
    other classes), built back exactly; `None` for any other checkpoint."""
    path = os.path.join(directory, hf_files.TOKENIZER_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    record = hf_files.read_json(path).get(hf_files.TFLM_TOKENIZER_KEY)
    if record is None:
        return None
    return tokenizers.base.from_config(directory, record, path)

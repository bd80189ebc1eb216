"""Reading the JSON files of a Hugging Face checkpoint directory.

Shared by the tokenizers that read a checkpoint's own files and by the
importers: file names, a JSON reader whose errors name the file, and a
token given as text or as an `AddedToken` object (`{"content": ...}`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tflm import errors

MODEL_CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SENTENCEPIECE_FILE = "tokenizer.model"
# The `tokenizer_config.json` entry where `tflm export --format huggingface`
# keeps tflm's own record of a tokenizer that transformers runs through
# another class (byte, SentencePiece), so `tflm import` builds it back.
TFLM_TOKENIZER_KEY = "tflm_tokenizer"


def write_json(path: str, content: Any, sort_keys: bool = False) -> None:
    """Writes `content` as indented UTF-8 JSON (a Hugging Face folder's
    `config.json`, `tokenizer_config.json`, ...), ending with a newline;
    `sort_keys` as PEFT writes `adapter_config.json`."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False, sort_keys=sort_keys)
        f.write("\n")


def read_text(path: str, parse: Any) -> Any:
    """`parse(text)` of a UTF-8 file.

    Raises:
        InputError: naming the file, if it cannot be read or parsed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errors.InputError(
            f"{path} is corrupt or unreadable ({err}). Download or restore it."
        ) from None


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in `path`.

    Raises:
        InputError: the file is missing, unreadable, or not a JSON object.
    """
    if not os.path.isfile(path):
        raise errors.InputError(f"{path} is missing.")
    data = read_text(path, json.loads)
    if not isinstance(data, dict):
        raise errors.InputError(f"{path} is not a JSON object.")
    return data


def token_text(value: Any, key: str, where: str) -> str | None:
    """A token given as a string or as an `AddedToken` dict, or `None`.

    Raises:
        InputError: anything else (naming `key` in file `where`).
    """
    if isinstance(value, dict):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    raise errors.InputError(
        f"{where}: {key} must be a token string or an object with a "
        f'"content" string. Received: {key}={value!r}.'
    )

"""Reading a Hugging Face byte-level BPE `tokenizer.json` for `BPETokenizer`.

Only what tflm runs exactly is read: a `BPE` model with a `ByteLevel`
decoder, one of the pre-tokenizers of `bpe_pretokenize`, no normalizer or
NFC. Anything else is refused by name. Start, end and padding tokens come
from `tokenizer_config.json` when it names them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tflm import errors
from tflm.tokenizers import bpe_merges
from tflm.tokenizers import bpe_pretokenize as pre
from tflm.tokenizers import hf_files

HF_FILE = "tokenizer.json"
HF_CONFIG_FILE = hf_files.TOKENIZER_CONFIG_FILE
_READS = (
    "tflm reads byte-level BPE tokenizer.json files, or a SentencePiece "
    "tokenizer.model beside it"
)
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>")


def read(directory: str) -> dict[str, Any]:
    """`BPETokenizer` arguments from `directory`'s Hugging Face files.

    Raises:
        InputError: a file is missing or corrupt, or describes a tokenizer
            tflm does not run exactly; the message names what it found.
    """
    path = os.path.join(directory, HF_FILE)
    spec = _load(path)
    if spec is None:
        raise errors.InputError(f"{directory} has no {HF_FILE}; {_READS}.")
    model = _model(spec, path)
    pretokenizer, normalizer = pre.recognise(
        spec.get("pre_tokenizer"), spec.get("normalizer"), path
    )
    added = [_added_token(t, path) for t in spec.get("added_tokens") or []]
    settings = _load(os.path.join(directory, HF_CONFIG_FILE))
    ids = _special_ids(
        settings, spec.get("post_processor"), added, model["vocab"], path
    )
    return dict(
        vocabulary=model["vocab"],
        merges=model["merges"],
        pretokenizer=pretokenizer,
        normalizer=normalizer,
        added_tokens=added,
        ignore_merges=bool(model.get("ignore_merges")),
        **ids,
    )


def _load(path: str) -> Any:
    """The JSON in `path`, or `None` when there is no such file."""
    return (
        hf_files.read_text(path, json.loads) if os.path.isfile(path) else None
    )


def _model(spec: Any, path: str) -> dict[str, Any]:
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict):
        if isinstance(spec, dict) and "type" in spec:
            raise errors.InputError(
                f"{path} is a tflm tokenizer ({spec['type']!r}), not a "
                "Hugging Face one; load it with tflm.tokenizers."
                "load_tokenizer."
            )
        raise errors.InputError(f"{path} has no model; {_READS}.")
    kind = model.get("type") or ("BPE" if "merges" in model else "unknown")
    if kind != "BPE":
        raise errors.InputError(f"{path} is a {kind} tokenizer; {_READS}.")
    decoder = (spec.get("decoder") or {}).get("type")
    if model.get("byte_fallback") or decoder != "ByteLevel":
        found = "byte_fallback" if model.get("byte_fallback") else "no"
        raise errors.InputError(
            f"{path} is a SentencePiece-style BPE tokenizer ({found} byte "
            f"fallback, {decoder} decoder), not byte-level BPE; {_READS}."
        )
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise errors.InputError(
                f"{path}: BPE {key}={model[key]!r} is not supported; {_READS} "
                f"without {key}."
            )
    if not isinstance(model.get("vocab"), dict) or not isinstance(
        model.get("merges"), list
    ):
        raise errors.InputError(
            f"{path}: the BPE model lacks a vocab map or a merges list."
        )
    return model


def _added_token(token: Any, path: str) -> dict[str, Any]:
    if not isinstance(token, dict) or not isinstance(token.get("id"), int):
        raise errors.InputError(f"{path}: bad added token {token!r}.")
    special = bool(token.get("special"))
    flags = [k for k in ("lstrip", "rstrip", "single_word") if token.get(k)]
    if flags and not special:
        raise errors.InputError(
            f"{path}: the non-special added token {token.get('content')!r} "
            f"sets {', '.join(flags)}, which tflm does not match in text; "
            "tflm matches non-special added tokens without them."
        )
    return {
        "id": token["id"],
        "content": token.get("content"),
        "special": special,
        "normalized": bool(token.get("normalized", not special)),
    }


def check_vocabulary(vocabulary: Any, source: str) -> dict[str, int]:
    """`vocabulary` if it is a map of tokens to unique ids >= 0 that holds
    the 256 byte tokens.

    Raises:
        InputError: naming `source`.
    """
    ids = list(vocabulary.values()) if isinstance(vocabulary, dict) else [-1]
    unique = len(set(ids)) == len(ids)
    if not unique or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise errors.InputError(
            f"{source}: not a JSON map of tokens to unique ids."
        )
    bpe_merges.byte_ids(vocabulary, source)
    return dict(vocabulary)


def check_added_tokens(tokens: Any) -> list[dict[str, Any]]:
    """Added tokens as dicts of `id`, `content`, `special`, `normalized`.

    Raises:
        InputError: one is malformed.
    """
    out = []
    for token in tokens:
        ok = isinstance(token, dict) and isinstance(token.get("id"), int)
        ok = ok and token["id"] >= 0 and isinstance(token.get("content"), str)
        if not ok or not token["content"]:
            raise errors.InputError(
                "added_tokens must be dicts with a non-empty `content` and an "
                f"`id` >= 0. Received: {token!r}"
            )
        special = bool(token.get("special"))
        normalized = bool(token.get("normalized", not special))
        out.append(
            {
                "id": token["id"],
                "content": token["content"],
                "special": special,
                "normalized": normalized,
            }
        )
    return out


def _special_ids(settings, post_processor, added, vocabulary, path):
    """`bos_id`, `eos_id`, `pad_id` and `add_bos`."""
    settings = settings if isinstance(settings, dict) else {}
    known = {**vocabulary, **{t["content"]: t["id"] for t in added}}
    names = {}
    for key in ("bos", "eos", "pad"):
        value = hf_files.token_text(
            settings.get(f"{key}_token"), f"{key}_token", HF_CONFIG_FILE
        )
        if value is not None and value not in known:
            raise errors.InputError(
                f"{HF_CONFIG_FILE} beside {path}: {key}_token {value!r} is "
                "neither an added token nor in the vocabulary."
            )
        names[key] = value
    template = _template_start(post_processor, known)
    eos = names["eos"] or next((n for n in _EOS_NAMES if n in known), None)
    if eos is None:
        raise errors.InputError(
            f"{path} has no end-of-text token that tflm recognises "
            f"({', '.join(_EOS_NAMES)}); name one as eos_token in "
            f"{HF_CONFIG_FILE}."
        )
    bos_id = known.get(names["bos"]) if names["bos"] else template
    if bos_id is None and "bos_token" not in settings:
        bos_id = next((known[n] for n in _BOS_NAMES if n in known), None)
    add_bos = settings.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = template is not None
    return {
        "bos_id": known[eos] if bos_id is None else bos_id,
        "eos_id": known[eos],
        "pad_id": known[names["pad"] or eos],
        "add_bos": add_bos,
    }


def _template_start(post_processor: Any, known: dict[str, int]) -> int | None:
    """The id a `TemplateProcessing` post-processor puts before a single
    text (Llama 3's `<|begin_of_text|>`), or `None`."""
    if not isinstance(post_processor, dict):
        return None
    if post_processor.get("type") == "Sequence":
        for step in post_processor.get("processors") or []:
            found = _template_start(step, known)
            if found is not None:
                return found
        return None
    if post_processor.get("type") != "TemplateProcessing":
        return None
    first = (post_processor.get("single") or [None])[0]
    first = first.get("SpecialToken") if isinstance(first, dict) else None
    if not isinstance(first, dict):
        return None
    text = first.get("id")
    ids = (post_processor.get("special_tokens") or {}).get(text, {}).get("ids")
    return ids[0] if ids else known.get(text)

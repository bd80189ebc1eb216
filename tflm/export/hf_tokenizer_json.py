"""`tokenizer.json` files (the `tokenizers` library's format) for tflm's
byte-level BPE and byte tokenizers, written as plain JSON (`tokenizers` is
not a dependency of tflm).

Both are a BPE model over GPT-2's byte-to-character map with a ByteLevel
decoder: `bpe` carries a `BPETokenizer`'s vocabulary, merges, normalizer,
pre-tokenizer (GPT-2, digits split, Llama 3 or Qwen2 patterns), added
tokens and start token; `byte` has no merges and one token per byte (id
`b + 3`), after `<pad>`, `<s>` and `</s>`.
"""

from __future__ import annotations

from typing import Any

from tflm.tokenizers import bpe_pretokenize
from tflm.tokenizers import gpt2_bpe_ops

BYTE_NAMES = ("<pad>", "<s>", "</s>")  # ByteTokenizer's ids 0, 1 and 2.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False}
_BYTE_LEVEL.update(trim_offsets=True, use_regex=True)
_PATTERNS = dict(
    llama3=bpe_pretokenize.LLAMA3_PATTERN, qwen2=bpe_pretokenize.QWEN2_PATTERN
)


def bpe(tokenizer, special_ids: set[int]) -> dict[str, Any]:
    """`tokenizer.json` of a `BPETokenizer`, its `special_ids` registered
    as special added tokens."""
    config = tokenizer.get_config()
    added = {t["id"]: t for t in config["added_tokens"]}
    vocabulary = tokenizer.vocabulary
    texts = {i: t for t, i in vocabulary.items()}
    for i in special_ids - set(added):
        added[i] = dict(id=i, content=texts[i], special=True, normalized=False)
    steps, name = [_BYTE_LEVEL], config["pretokenizer"]
    if name == "gpt2_digits":
        steps = [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]
    elif name in ("llama3", "qwen2"):
        pattern = {"Regex": _PATTERNS[name]}
        split = dict(type="Split", pattern=pattern, behavior="Isolated")
        steps = [dict(split, invert=False), dict(_BYTE_LEVEL, use_regex=False)]
    extra = sorted(set(added) - set(vocabulary.values()))
    if extra != list(range(len(vocabulary), len(vocabulary) + len(extra))):
        # `tokenizers` numbers added tokens missing from the model's
        # vocabulary from its size on, so these go in the vocabulary.
        vocabulary.update((added[i]["content"], i) for i in extra)
    normalizer = config["normalizer"]
    start = added[tokenizer.bos_id]["content"]
    return _tokenizer_json(
        [added[i] for i in sorted(added)],
        {"type": normalizer.upper()} if normalizer else None,
        {"type": "Sequence", "pretokenizers": steps},
        dict(
            vocab=vocabulary,
            merges=[m.split(" ", 1) for m in tokenizer.merges],
            ignore_merges=config["ignore_merges"],
        ),
        _start(tokenizer.bos_id, start) if tokenizer.add_bos else None,
    )


def byte() -> dict[str, Any]:
    """`tokenizer.json` of a `ByteTokenizer`: one id per UTF-8 byte."""
    vocabulary = {name: i for i, name in enumerate(BYTE_NAMES)}
    for byte, char in gpt2_bpe_ops.bytes_to_unicode().items():
        vocabulary[char] = byte + len(BYTE_NAMES)
    added = [
        dict(id=i, content=name, special=True, normalized=False)
        for i, name in enumerate(BYTE_NAMES)
    ]
    model = dict(vocab=vocabulary, merges=[], ignore_merges=False)
    return _tokenizer_json(
        added, None, dict(_BYTE_LEVEL, use_regex=False), model, None
    )


def _tokenizer_json(added, normalizer, pre_tokenizer, model, post):
    """A `tokenizers` byte-level BPE; `model`: vocab, merges, ignore_merges."""
    unset = ("dropout", "unk_token", "continuing_subword_prefix")
    model = dict(dict.fromkeys(unset), type="BPE", **model)
    model.update(end_of_word_suffix=None, fuse_unk=False, byte_fallback=False)
    flags = dict(single_word=False, lstrip=False, rstrip=False)
    return dict(
        version="1.0",
        truncation=None,
        padding=None,
        added_tokens=[dict(t, **flags) for t in added],
        normalizer=normalizer,
        pre_tokenizer=pre_tokenizer,
        post_processor=post,
        decoder=_BYTE_LEVEL,
        model=model,
    )


def _start(index: int, text: str) -> dict[str, Any]:
    """A post-processor that puts `text` (id `index`) before a text."""
    first, second = (
        {"SpecialToken": {"id": text, "type_id": i}} for i in (0, 1)
    )
    a, b = ({"Sequence": {"id": n, "type_id": i}} for i, n in enumerate("AB"))
    return dict(
        type="TemplateProcessing",
        single=[first, a],
        pair=[first, a, second, b],
        special_tokens={text: {"id": text, "ids": [index], "tokens": [text]}},
    )

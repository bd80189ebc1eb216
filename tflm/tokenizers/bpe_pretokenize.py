r"""Pre-tokenizers of Hugging Face byte-level BPE files, in core TF ops.

Four `tokenizer.json` pre-tokenizers are recognised exactly, by name:

- `gpt2`: `ByteLevel(use_regex=True)`, GPT-2's pattern (`gpt2_bpe_ops`).
- `gpt2_digits`: `Sequence[Digits(individual_digits=True),
  ByteLevel(use_regex=True)]` (SmolLM2): each `\p{N}` character is a piece
  of its own, and GPT-2's pattern splits each other piece.
- `llama3`: `Split` by Llama 3's pattern (`LLAMA3_PATTERN`), then
  `ByteLevel(use_regex=False)`.
- `qwen2`: the same with `\p{N}` for `\p{N}{1,3}` (Qwen2, Qwen2.5).

RE2 has no lookahead and its `\s` is ASCII, so the Llama 3 and Qwen2
patterns run with `gpt2_bpe_ops`'s Unicode whitespace class and with
`\s+(?!\S)|\s+` as `\s+`, after the text is cut: in each whitespace run of
two or more characters followed by other text, a cut goes before the run's
last character unless that is `\r` or `\n` (then `\s*[\r\n]+` takes the run
whole). A cut is a `0xFF` byte, which no match crosses.

Added tokens are split out of the text before normalizing and
pre-tokenizing, as Hugging Face does: `split_added` is one pass of that.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import tensorflow as tf
import tensorflow_text as tf_text

from tflm import errors
from tflm.tokenizers import bpe_merges
from tflm.tokenizers import gpt2_bpe_ops as ops

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
PRETOKENIZERS = ("gpt2", "gpt2_digits", "llama3", "qwen2")
NORMALIZERS = ("nfc",)

WS = ops.WS
CUT = ops.CUT
# Put before an added token's text, after a cut: 0xFE never occurs in UTF-8.
_MARK = b"\xfe"
_NOT_NEWLINE_WS = WS.replace(r"\n", "").replace(r"\r", "")
_RUN_CUT = rf"([{WS}]+)([{_NOT_NEWLINE_WS}])([^{WS}])"
_SPLIT_PATTERNS = {
    name: (
        pattern.replace(r"|\s+(?!\S)|\s+", r"|\s+")
        .replace(r"[^\s", rf"[^{WS}")
        .replace(r"\s", f"[{WS}]")
    )
    for name, pattern in (("llama3", LLAMA3_PATTERN), ("qwen2", QWEN2_PATTERN))
}
_HF_NAMES = (
    "ByteLevel(use_regex=True), Split(Llama 3 or Qwen2 pattern) + "
    "ByteLevel(use_regex=False), or Digits(individual_digits=True) + "
    "ByteLevel(use_regex=True)"
)


def recognise(pre_tokenizer: Any, normalizer: Any, source: str):
    """`(name, normalizer)` of a `tokenizer.json`'s pre-tokenizer and
    normalizer, e.g. `("qwen2", "nfc")`; `normalizer` is `None` for none.

    Raises:
        InputError: naming the pre-tokenizer or normalizer that is not one
            of those tflm runs.
    """
    steps = _flatten(pre_tokenizer)
    kinds = [s.get("type") for s in steps]
    name = None
    if kinds == ["ByteLevel"] and _byte_level(steps[0], regex=True):
        name = "gpt2"
    elif kinds == ["Digits", "ByteLevel"] and _byte_level(steps[1], True):
        if steps[0].get("individual_digits") is True:
            name = "gpt2_digits"
    elif kinds == ["Split", "ByteLevel"] and _byte_level(steps[1], False):
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            name = {LLAMA3_PATTERN: "llama3", QWEN2_PATTERN: "qwen2"}.get(regex)
    if name is None:
        raise errors.InputError(
            f"{source}: pre-tokenizer {_describe(steps)} is not one tflm "
            f"runs; tflm reads {_HF_NAMES}."
        )
    return name, _normalizer(normalizer, source)


def _flatten(pre_tokenizer: Any) -> list[dict]:
    if not isinstance(pre_tokenizer, dict):
        return [{"type": repr(pre_tokenizer)}]
    if pre_tokenizer.get("type") == "Sequence":
        steps = pre_tokenizer.get("pretokenizers") or []
        return [s for p in steps for s in _flatten(p)]
    return [pre_tokenizer]


def _byte_level(step: dict, regex: bool) -> bool:
    return (
        step.get("use_regex", True) is regex
        and step.get("add_prefix_space") is False
    )


def _describe(steps: list[dict]) -> str:
    parts = []
    for step in steps:
        fields = {k: v for k, v in step.items() if k != "type"}
        parts.append(
            f"{step.get('type')}({fields})" if fields else step["type"]
        )
    return " + ".join(parts)


def _normalizer(normalizer: Any, source: str) -> str | None:
    if normalizer is None:
        return None
    kinds = [
        n.get("type") if isinstance(n, dict) else repr(n)
        for n in (
            normalizer.get("normalizers", [])
            if normalizer.get("type") == "Sequence"
            else [normalizer]
        )
    ]
    if not kinds:
        return None
    if kinds == ["NFC"]:
        return "nfc"
    raise errors.InputError(
        f"{source}: normalizer {' + '.join(map(str, kinds))} is not one tflm "
        "runs; tflm reads no normalizer or NFC."
    )


def check(pretokenizer: str, normalizer: str | None) -> None:
    """Raises InputError unless both are names this module runs."""
    if pretokenizer not in PRETOKENIZERS:
        raise errors.InputError(
            f"pretokenizer must be one of {PRETOKENIZERS}. "
            f"Received: pretokenizer={pretokenizer!r}"
        )
    if normalizer is not None and normalizer not in NORMALIZERS:
        raise errors.InputError(
            f"normalizer must be None or one of {NORMALIZERS}. "
            f"Received: normalizer={normalizer!r}"
        )


def normalize(strings: tf.Tensor, normalizer: str | None) -> tf.Tensor:
    """Applies `normalizer` (`None` or `"nfc"`) to valid UTF-8 `[N]`."""
    if normalizer is None:
        return strings
    return tf_text.normalize_utf8(strings, normalizer.upper())


def pretokenize(strings: tf.Tensor, name: str) -> tf.RaggedTensor:
    """Splits string `[N]` into pre-tokens (words), ragged `[N, None]`.

    Bytes that are not UTF-8 become U+FFFD first.
    """
    if name == "gpt2":
        return ops.pretokenize(strings)
    strings = tf.strings.unicode_transcode(
        strings, "UTF-8", "UTF-8", errors="replace"
    )
    if name == "gpt2_digits":
        marked = tf.strings.regex_replace(
            strings, r"(\p{N})", CUT + b"\\1" + CUT
        )
        pieces = tf.strings.split(marked, sep=CUT)
        words = ops.pretokenize(pieces.flat_values)
        return pieces.with_flat_values(words).merge_dims(1, 2)
    check(name, None)
    cut = tf.strings.regex_replace(strings, _RUN_CUT, b"\\1" + CUT + b"\\2\\3")
    return ops.split_matches(cut, _SPLIT_PATTERNS[name])


def added_pattern(contents: list[str]) -> str:
    """An RE2 pattern matching any of `contents`, longest first at each
    position (leftmost-longest, as Hugging Face's added-token matcher)."""
    ordered = sorted(set(contents), key=lambda c: -len(c.encode()))
    return "|".join(
        "".join(c if c.isalnum() else f"\\x{{{ord(c):x}}}" for c in content)
        for content in ordered
    )


def split_added(
    pieces: tf.RaggedTensor,
    ids: tf.RaggedTensor,
    pattern: str,
    table: bpe_merges.StringTable,
):
    """One pass of splitting added tokens out of text, in-graph.

    Args:
        pieces: valid UTF-8 string `[B, None]`.
        ids: int32 `[B, None]`, -1 for a piece of text, else the piece's
            added-token id (such pieces are left alone).
        pattern: `added_pattern` of every added token this pass matches.
        table: the contents to split out and their ids. A match missing
            from it (a special token) stays text, which also keeps any
            overlapping token from matching, as in Hugging Face with
            `encode_special_tokens=True`.

    Returns:
        `(pieces, ids)` of the same form.
    """
    text, old = pieces.flat_values, ids.flat_values
    marked = tf.strings.regex_replace(
        text, f"({pattern})", CUT + _MARK + b"\\1" + CUT
    )
    parts = tf.strings.split(tf.where(old < 0, marked, text), sep=CUT)
    sub, parent = parts.flat_values, parts.value_rowids()
    keep = tf.strings.length(sub) > 0
    sub, parent = tf.boolean_mask(sub, keep), tf.boolean_mask(parent, keep)
    size = tf.strings.length(sub)
    is_mark = tf.equal(tf.strings.substr(sub, 0, 1), _MARK)
    is_mark &= tf.gather(old < 0, parent)
    sub = tf.where(
        is_mark, tf.strings.substr(sub, tf.ones_like(size), size - 1), sub
    )
    found, found_ids = bpe_merges.lookup(sub, table)
    new_ids = tf.where(is_mark & found, found_ids, tf.gather(old, parent))
    # Text joins the text before it from the same piece.
    is_text = new_ids < 0
    joins = is_text & tf.concat([[False], is_text[:-1]], 0)
    joins &= tf.equal(parent, tf.concat([[-1], parent[:-1]], 0))
    starts = ~joins
    groups = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    count = tf.reduce_sum(tf.cast(starts, tf.int32))
    rows = tf.gather(pieces.value_rowids(), tf.boolean_mask(parent, starts))
    return tuple(
        tf.RaggedTensor.from_value_rowids(
            values, rows, nrows=pieces.nrows(), validate=False
        )
        for values in (
            tf.strings.unsorted_segment_join(sub, groups, count),
            tf.boolean_mask(new_ids, starts),
        )
    )


def added_passes(added: list[dict[str, Any]], normalizer: str | None):
    """The two passes of `split_added`, as Hugging Face runs them: tokens
    with `normalized` false on the raw text, then the others (their text
    normalized too) on the normalized text. Each is `(pattern, table)`, or
    `None` when it would split out no token; special tokens only shape the
    matching (they stay text)."""
    passes = []
    for normalized in (False, True):
        tokens = [t for t in added if t["normalized"] == normalized]
        contents = [
            unicodedata.normalize(normalizer.upper(), t["content"])
            if normalized and normalizer
            else t["content"]
            for t in tokens
        ]
        items = {
            c.encode(): t["id"]
            for c, t in zip(contents, tokens, strict=True)
            if not t["special"]
        }
        passes.append(
            (added_pattern(contents), bpe_merges.string_table(items, "added"))
            if items
            else None
        )
    return tuple(passes)

r"""In-graph pieces of GPT-2's byte-level BPE, in core TensorFlow ops.

GPT-2 splits text with ``'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+``. RE2 has no lookahead, so whitespace is
settled first: text is cut into single whitespace characters and runs of
anything else; a whitespace run followed by text gives its last character to
that text when it is a space (else that character stands alone), and the
rest of the run is one piece. The pattern without lookahead then splits each
group. Merges run on int32 ids in a `tf.while_loop`; all tables are
constants, so a SavedModel holds no resource.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from tflm import errors

# Unicode White_Space, what `\s` means to GPT-2's Python `regex` pattern
# (RE2's `\s` is ASCII only).
WS = (
    r"\t\n\x0b\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
    r"\x{202f}\x{205f}\x{3000}"
)
_ATOMS = rf"[{WS}]|[^{WS}]+"
_PIECES = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"
    rf"| ?[^{WS}\p{{L}}\p{{N}}]+|[{WS}]+"
)
_NO_MERGE = np.iinfo(np.int32).max
# Put before each match to cut text there: 0xFF never occurs in UTF-8.
CUT = b"\xff"


def split_matches(strings, pattern: str):
    """The matches of `pattern`, which must cover all text, in order."""
    # (Not TF Text's `regex_split`: it drops all text after a NUL.)
    marked = tf.strings.regex_replace(strings, f"({pattern})", CUT + b"\\1")
    pieces = tf.strings.split(marked, sep=CUT)
    return tf.ragged.boolean_mask(pieces, tf.strings.length(pieces) > 0)


@functools.cache
def _bytes_to_unicode() -> tuple:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return tuple(sorted(mapping.items()))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (a new dict)."""
    return dict(_bytes_to_unicode())


def pretokenize(strings: tf.Tensor) -> tf.RaggedTensor:
    """Splits string `[B]` into GPT-2's pre-tokens, ragged `[B, None]`.

    Bytes that are not UTF-8 become U+FFFD first, as in `bytes.decode(
    "utf-8", "replace")`.
    """
    strings = tf.strings.unicode_transcode(
        strings, "UTF-8", "UTF-8", errors="replace"
    )
    atoms = split_matches(strings, _ATOMS)
    text, rows = atoms.flat_values, atoms.value_rowids()
    size = tf.size(text)

    def before(x, fill):  # x[i - 1], `fill` for i = 0
        return tf.concat([[fill], x], 0)[:size]

    def after(x, fill):  # x[i + 1], `fill` for the last i
        return tf.concat([x, [fill]], 0)[1:]

    is_ws = tf.strings.regex_full_match(text, f"[{WS}]")
    same_prev = tf.equal(rows, before(rows, -1))
    text_next = tf.equal(rows, after(rows, -1)) & ~after(is_ws, True)
    # Whitespace continues a whitespace group unless text follows it; text
    # joins a single space just before it.
    joins = same_prev & tf.where(
        is_ws,
        before(is_ws, False) & ~text_next,
        before(tf.equal(text, " "), False),
    )
    starts = ~joins
    group_ids = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    groups = tf.strings.unsorted_segment_join(
        text, group_ids, tf.reduce_sum(tf.cast(starts, tf.int32))
    )
    groups = tf.RaggedTensor.from_value_rowids(
        groups, tf.boolean_mask(rows, starts), nrows=atoms.nrows()
    )
    return split_matches(groups, _PIECES).merge_dims(1, 2)


def merge_words(ids, lengths, tables, vocabulary_size: int):
    """Merges the words of `ids` (int32 `[N]`, `lengths` `[W]`) by BPE.

    `tables` are numpy `(keys, ranks, merged ids)` sorted by key, a pair's
    key being `left * vocabulary_size + right`. Each step merges, in every
    active word, its pair of lowest rank (all non-overlapping occurrences;
    later steps take the rest), which gives the result of merging one pair
    at a time. Words where nothing merged leave the loop, so a step costs
    only the words still merging. Returns `(ids, lengths)`.
    """
    tables = tuple(tf.constant(t) for t in tables)
    words = tf.range(tf.size(lengths))
    done = [
        tf.TensorArray(tf.int32, 1, dynamic_size=True, infer_shape=False).write(
            0, tf.zeros([0], tf.int32)
        )
        for _ in range(2)
    ]

    def body(step, ids, lengths, words, done_ids, done_words):
        ids, lengths, merged = _merge_step(
            ids, lengths, tables, vocabulary_size
        )
        rows = tf.repeat(tf.range(tf.size(lengths)), lengths)
        active = tf.gather(merged, rows)
        done_ids = done_ids.write(step, tf.boolean_mask(ids, ~active))
        done_words = done_words.write(
            step, tf.boolean_mask(tf.gather(words, rows), ~active)
        )
        ids = tf.boolean_mask(ids, active)
        lengths, words = (tf.boolean_mask(x, merged) for x in (lengths, words))
        return step + 1, ids, lengths, words, done_ids, done_words

    vector = tf.TensorShape([None])
    _, _, _, _, done_ids, done_words = tf.while_loop(
        lambda step, ids, lengths, words, *_: tf.size(words) > 0,
        body,
        (tf.constant(1), ids, lengths, words, *done),
        shape_invariants=(tf.TensorShape([]), *[vector] * 3, None, None),
    )
    done_words = done_words.concat()
    order = tf.argsort(done_words, stable=True)
    ids = tf.reshape(tf.gather(done_ids.concat(), order), [-1])
    lengths = tf.math.bincount(
        done_words, minlength=tf.size(lengths), dtype=tf.int32
    )
    return ids, lengths


def _merge_step(ids, lengths, tables, vocabulary_size: int):
    """One merge step; returns `(ids, lengths, merged)`, `merged` per word."""
    keys_table, ranks_table, merged_table = tables
    num_words = tf.size(lengths)
    rows = tf.repeat(tf.range(num_words), lengths)
    pair_rows = rows[:-1]
    keys = tf.cast(ids[:-1], tf.int64) * vocabulary_size + tf.cast(
        ids[1:], tf.int64
    )
    at = tf.minimum(tf.searchsorted(keys_table, keys), tf.size(keys_table) - 1)
    found = tf.equal(tf.gather(keys_table, at), keys)
    found &= tf.equal(rows[1:], pair_rows)
    ranks = tf.where(found, tf.gather(ranks_table, at), _NO_MERGE)
    best = tf.math.unsorted_segment_min(ranks, pair_rows, num_words)
    chosen = found & tf.equal(ranks, tf.gather(best, pair_rows))
    # In a run like `a a a`, merge the first pair now, the rest later.
    chosen &= ~tf.concat([[False], chosen], 0)[:-1]
    merged_ids = tf.concat([tf.gather(merged_table, at), [0]], 0)
    ids = tf.where(tf.concat([chosen, [False]], 0), merged_ids, ids)
    dropped = tf.concat([[False], chosen], 0)[: tf.size(ids)]
    removed = tf.math.unsorted_segment_sum(
        tf.cast(dropped, tf.int32), rows, num_words
    )
    return tf.boolean_mask(ids, ~dropped), lengths - removed, removed > 0


def merge_tables(vocabulary, merges, size: int, source: str):
    """`(keys, ranks, merged ids)` sorted by key `left * size + right`."""
    keys, merged = {}, []
    for line, rule in enumerate(merges, start=1):
        parts = rule.split(" ")
        ids = [vocabulary.get(p) for p in (*parts, "".join(parts))]
        if len(parts) != 2 or None in ids:
            raise errors.InputError(
                f"{source}: merge {line} ({rule!r}) is not two tokens of the "
                "vocabulary whose join is a token too."
            )
        keys.setdefault(ids[0] * size + ids[1], len(merged))
        merged.append(ids[2])
    order = np.argsort(np.array(list(keys), np.int64), kind="stable")
    ranks = np.array(list(keys.values()), np.int32)[order]
    keys = np.array(list(keys), np.int64)[order]
    return keys, ranks, np.array(merged, np.int32)[ranks]

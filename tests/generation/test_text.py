"""Rows cut to the context before they are made dense."""

import numpy as np
import pytest
import tensorflow as tf

from tflm.generation import text as text_lib

ROWS = [[1, 2, 3, 4, 5], [], [6], [7, 8]]


@pytest.mark.parametrize("from_end", [True, False])
@pytest.mark.parametrize("keep", [0, 1, 2, 9, [3, 1, 0, 1]])
def test_clip_rows_keeps_the_last_or_first_values(keep, from_end):
    got = text_lib.clip_rows(tf.ragged.constant(ROWS), keep, from_end)
    keeps = keep if isinstance(keep, list) else [keep] * len(ROWS)
    want = [
        (row[max(len(row) - k, 0) :] if from_end else row[:k]) if k else []
        for row, k in zip(ROWS, keeps, strict=True)
    ]
    assert got.to_list() == want


def test_clip_rows_of_an_empty_batch():
    ragged = tf.RaggedTensor.from_row_lengths(
        tf.zeros([0], tf.int32), tf.zeros([0], tf.int64)
    )
    assert text_lib.clip_rows(ragged, 3, True).to_list() == []


@pytest.mark.parametrize("from_end", [True, False])
def test_clip_bytes_cuts_bytes_not_characters(from_end):
    texts = ["abcdef", "", "hé", "xy"]
    got = text_lib.clip_bytes(tf.constant(texts), [2, 3, 2, 5], from_end)
    want = [
        (b[-k:] if from_end else b[:k])
        for b, k in zip([t.encode() for t in texts], [2, 3, 2, 5], strict=True)
    ]
    assert got.numpy().tolist() == want


def test_left_pad_keeps_the_last_ids_and_starts_empty_rows():
    ids, mask = text_lib.left_pad(tf.ragged.constant(ROWS), 3, 99)
    assert ids.numpy().tolist() == [
        [3, 4, 5],
        [0, 0, 99],
        [0, 0, 6],
        [0, 7, 8],
    ]
    assert mask.numpy().tolist() == [
        [1, 1, 1],
        [0, 0, 1],
        [0, 0, 1],
        [0, 1, 1],
    ]


def test_left_pad_width_is_the_room_whatever_the_prompt_length():
    rows = tf.RaggedTensor.from_row_lengths(
        tf.range(2**20, dtype=tf.int32), [2**20] + [0] * 99
    )
    ids, mask = text_lib.left_pad(rows, [5] * 100, 0)
    assert ids.shape == (100, 5) and mask.shape == (100, 5)
    np.testing.assert_array_equal(ids[0], np.arange(2**20 - 5, 2**20))


def test_left_pad_of_empty_rows_and_an_empty_batch():
    ids, mask = text_lib.left_pad(tf.ragged.constant([[], []], tf.int32), 4, 7)
    assert ids.numpy().tolist() == [[7], [7]]
    assert mask.numpy().tolist() == [[1], [1]]
    empty = tf.RaggedTensor.from_row_lengths(
        tf.zeros([0], tf.int32), tf.zeros([0], tf.int64)
    )
    assert text_lib.left_pad(empty, 4, 7)[0].shape == (0, 1)


def test_stop_search_when_no_row_made_a_token():
    """`max_new_tokens=0` (or a prompt that fills the context): the tokens
    are `[B, 0]` and every text is empty; nothing is found, nothing fails."""
    from tflm.tokenizers import ByteTokenizer

    detokenize = ByteTokenizer().detokenize
    tokens = tf.zeros([2, 0], tf.int32)
    num_tokens = tf.zeros([2], tf.int32)
    stop = tf.constant([["x", ""], ["ab", "c"]])
    found = text_lib.text_stop(detokenize, stop)(tokens, num_tokens)
    assert found.numpy().tolist() == [False, False]
    text = text_lib.cut(
        detokenize, tf.constant(["", ""]), tokens, num_tokens, found, stop
    )
    assert text.numpy().tolist() == [b"", b""]
    assert text_lib.first_match(
        tf.constant(["", ""]), stop
    ).numpy().tolist() == [-1, -1]
